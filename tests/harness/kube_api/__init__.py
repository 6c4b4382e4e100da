"""One Kubernetes API URL for e2e tests: the real server for CRDs, an in-memory store for the rest.

Why: ``apiextensions-apiserver`` (see :mod:`tests.harness.apiserver`) enforces our CRD exactly as
a cluster would (OpenAPI, CEL, defaults, printer columns, status subresource), but it serves no
core or batch resources. The operator and ``kubectl`` need both behind a single URL, so the
gateway (:class:`KubeGateway`)

* reverse-proxies ``/apis/<group>/...`` of every group it does not emulate (``finetune.dev``,
  ``apiextensions.k8s.io``, ``kopf.dev`` when installed), ``/openapi/*`` and ``/version`` to the
  real server, streaming watches through unchanged;
* serves core v1 (namespaces, pods + status/log/eviction, configmaps, services, secrets,
  serviceaccounts, persistentvolumeclaims, events), ``batch/v1`` jobs, ``events.k8s.io/v1``
  events, ``coordination.k8s.io/v1`` leases, ``apps/v1`` deployments and
  ``rbac.authorization.k8s.io/v1`` (cluster)roles and (cluster)rolebindings itself, from an
  in-memory store with resourceVersions, watches, label/field selectors, the four patch types,
  finalizers, status subresources and ownerReference garbage collection (also across the two
  back ends: deleting a FineTuneJob on the real server deletes the Jobs/ConfigMaps/Services it
  owns here). Deployments and RBAC objects are only stored, so ``kubectl apply`` of the chart
  works: RBAC is not enforced, and no controller acts on a Deployment beyond the simulator
  starting its pods once (:mod:`tests.harness.cluster`);
* merges discovery (``/api``, ``/apis``) of both, so ``kubectl`` and kopf see one cluster;
* optionally (``tls=True``) serves the same over HTTPS too, with a throwaway CA, and writes
  a pod's service-account directory, so in-cluster clients can connect as from a pod;
* records every request in :attr:`KubeGateway.audit` (verb, group, resource, subresource,
  namespace, user agent) so the operator's RBAC can be derived from what it really does.

Emulation is deliberately simple where Kubernetes is subtle (strategic merge covers the list
merge keys our manifests use; no admission, no quotas), and faithful where operators trip:
409 on existing names, 410 for expired watch resourceVersions, status ignored on the main
resource, ``batch/v1`` Job deletion orphaning pods unless a propagation policy is given.
Why this is hand-written rather than kmock: see :mod:`tests.harness.kube_api.object_store`.

The server runs an asyncio loop in a daemon thread; :mod:`tests.harness.cluster` runs on the
same loop and uses :class:`ObjectStore` directly. Test code reaches both through
:meth:`KubeGateway.call`, which runs a function on the loop and returns its result.

Modules, one job each:

=================  ============================================================================
``resources``      the registry of emulated resources (:class:`ResourceType`) and ``now_iso``
``errors``         :class:`ApiError`, a failure in the ``Status`` shape
``patches``        merge, strategic merge and JSON patches (pure)
``selectors``      label and field selectors (pure)
``defaults``       the create-time defaults controllers and kubectl read
``object_store``   :class:`ObjectStore`: write semantics, watch history, garbage collection
``request_info``   a request path as kube-apiserver parses it; the audit record
``discovery``      ``/api``, ``/apis``, ``/openapi/v3`` for both back ends (pure)
``tables``         ``Table`` responses for ``kubectl get``
``emulated_api``   HTTP for emulated resources: CRUD, lists, watches (410), logs, eviction
``upstream``       the real server: proxying, and garbage collection of what its objects own
``gateway``        :class:`KubeGateway`: loop thread, sockets, TLS, kubeconfig, routing
=================  ============================================================================
"""

from tests.harness.kube_api.errors import ApiError
from tests.harness.kube_api.gateway import KubeGateway
from tests.harness.kube_api.object_store import ObjectStore, WatchEvent
from tests.harness.kube_api.resources import ResourceType, lookup, now_iso
from tests.harness.kube_api.upstream import Upstream

__all__ = [
    "ApiError",
    "KubeGateway",
    "ObjectStore",
    "ResourceType",
    "Upstream",
    "WatchEvent",
    "lookup",
    "now_iso",
]

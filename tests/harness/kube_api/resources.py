"""The resources the gateway emulates itself, and what each supports.

Why a registry: discovery, OpenAPI, the store, tables and request routing all need the same
facts about a resource (group, version, plural, kind, scope, subresources, whether ``status``
is a subresource), so they are declared once here as data. A resource missing here is proxied
to the real API server (or answered 404 without one).
"""

from __future__ import annotations

import dataclasses
import datetime

from tests.harness.kube_api.errors import ApiError


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One emulated API resource (plural) and what it supports."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    has_status: bool = False  # status is a subresource: main-resource writes keep it

    @property
    def api_version(self) -> str:
        """``group/version``, or ``version`` for the core group."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        """The singular name discovery reports (the kind, lower-cased)."""
        return self.kind.lower()


_RBAC = "rbac.authorization.k8s.io"
EMULATED: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        subresources=("status",),
        short_names=("ns",),
        has_status=True,
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        subresources=("status", "log", "eviction"),
        short_names=("po",),
        has_status=True,
    ),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType(
        "",
        "v1",
        "services",
        "Service",
        subresources=("status",),
        short_names=("svc",),
        has_status=True,
    ),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    ResourceType(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        subresources=("status",),
        short_names=("pvc",),
        has_status=True,
    ),
    ResourceType("", "v1", "events", "Event", short_names=("ev",)),
    ResourceType("batch", "v1", "jobs", "Job", subresources=("status",), has_status=True),
    ResourceType("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
    # What the chart installs (``kubectl apply`` of ``helm template``): stored, not acted on
    # (no pods from Deployments, RBAC not enforced).
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        subresources=("status",),
        short_names=("deploy",),
        has_status=True,
    ),
    ResourceType(_RBAC, "v1", "clusterroles", "ClusterRole", namespaced=False),
    ResourceType(_RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    ResourceType(_RBAC, "v1", "roles", "Role"),
    ResourceType(_RBAC, "v1", "rolebindings", "RoleBinding"),
)
EMULATED_GROUPS = {r.group for r in EMULATED if r.group}
_BY_PATH = {(r.group, r.version, r.plural): r for r in EMULATED}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def now_iso() -> str:
    """Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lookup(group: str, version: str, plural: str) -> ResourceType:
    """The emulated resource at ``/apis/<group>/<version>/<plural>``, or a 404."""
    res = _BY_PATH.get((group, version, plural))
    if res is None:
        raise ApiError(
            404,
            f"the server could not find the requested resource "
            f"({group or 'core'}/{version} {plural})",
        )
    return res

"""Discovery and OpenAPI documents for the emulated groups, merged with the real server's.

Why: kubectl and kopf find resources through discovery (``/api``, ``/apis``,
``/apis/<group>/<version>``) before they list or watch anything, and kubectl reads
``/openapi/v3`` to choose server-side field validation
(https://kubernetes.io/docs/concepts/overview/kubernetes-api/#discovery-api). The gateway
answers for both back ends as one cluster: the emulated groups from
:data:`~tests.harness.kube_api.resources.EMULATED`, the real server's from what it reports.
These are pure functions of that data; the gateway fetches the upstream part.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

from tests.harness.kube_api.errors import ApiError
from tests.harness.kube_api.request_info import RequestInfo
from tests.harness.kube_api.resources import EMULATED, EMULATED_GROUPS, VERBS, ResourceType


def api_versions(host: str) -> dict[str, Any]:
    """``/api``: the core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }


def emulated_discovery(info: RequestInfo) -> dict[str, Any]:
    """``/apis/<group>`` (an ``APIGroup``) or ``/api/v1``, ``/apis/<group>/<version>`` (an
    ``APIResourceList``) of an emulated group, subresources included."""
    if info.version:
        resources = []
        for res in EMULATED:
            if res.group != info.group or res.version != info.version:
                continue
            resources.append(
                {
                    "name": res.plural,
                    "singularName": res.singular,
                    "namespaced": res.namespaced,
                    "kind": res.kind,
                    "verbs": VERBS,
                    **({"shortNames": list(res.short_names)} if res.short_names else {}),
                }
            )
            for sub in res.subresources:
                verbs = {"log": ["get"], "eviction": ["create"]}.get(
                    sub, ["get", "patch", "update"]
                )
                kind = {"log": "Pod", "eviction": "Eviction"}.get(sub, res.kind)
                resources.append(
                    {
                        "name": f"{res.plural}/{sub}",
                        "singularName": "",
                        "namespaced": res.namespaced,
                        "kind": kind,
                        "verbs": verbs,
                    }
                )
        if not resources:
            raise ApiError(
                404,
                f"the server could not find the requested resource ({info.group}/{info.version})",
            )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{info.group}/{info.version}" if info.group else info.version,
            "resources": resources,
        }
    group = emulated_group(info.group)
    if group is None:
        raise ApiError(404, f"group {info.group} not found")
    return {"kind": "APIGroup", "apiVersion": "v1", **group}


def emulated_group(name: str) -> dict[str, Any] | None:
    """The ``APIGroup`` entry of an emulated group; ``None`` for the core group or others."""
    versions = sorted({r.version for r in EMULATED if r.group == name})
    if not versions or not name:
        return None
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def upstream_groups(crds: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``apiextensions.k8s.io`` and every served CRD group of the real server.

    Standalone apiextensions-apiserver does not serve the ``/apis`` root as JSON (in a
    cluster the aggregator does), so the groups are built from the CRDs themselves
    (``crds``: its ``CustomResourceDefinitionList``, ``None`` when it could not be read).
    """
    ext = {"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"}
    groups: list[dict[str, Any]] = [
        {"name": "apiextensions.k8s.io", "versions": [ext], "preferredVersion": ext}
    ]
    by_group: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for crd in (crds or {}).get("items", []):
        spec = crd["spec"]
        if spec["group"] in EMULATED_GROUPS:
            continue
        for version in spec.get("versions", []):
            entry = {
                "groupVersion": f"{spec['group']}/{version['name']}",
                "version": version["name"],
            }
            if version.get("served", True) and entry not in by_group[spec["group"]]:
                by_group[spec["group"]].append(entry)
    for name, versions in sorted(by_group.items()):
        groups.append({"name": name, "versions": versions, "preferredVersion": versions[0]})
    return groups


def group_list(upstream: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """``/apis``: the emulated groups, then ``upstream`` (see :func:`upstream_groups`)."""
    groups = [emulated_group(g) for g in sorted(EMULATED_GROUPS)]
    groups.extend(upstream)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


# -- OpenAPI v3 (what kubectl needs to choose server-side field validation) -----------------


def emulated_gvs() -> dict[str, list[ResourceType]]:
    """The emulated resources by OpenAPI group-version path (``api/v1``, ``apis/batch/v1``)."""
    gvs: dict[str, list[ResourceType]] = collections.defaultdict(list)
    for res in EMULATED:
        gvs[f"apis/{res.group}/{res.version}" if res.group else f"api/{res.version}"].append(res)
    return gvs


def openapi_root(upstream_paths: Mapping[str, Any]) -> dict[str, Any]:
    """``/openapi/v3``: the real server's group-versions, then the emulated ones."""
    paths: dict[str, Any] = dict(upstream_paths)
    for gv in emulated_gvs():
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash=ftj-gateway"}
    return {"paths": paths}


def openapi_gv(gv: str) -> dict[str, Any] | None:
    """A minimal OpenAPI v3 document: one PATCH operation per kind, with the
    ``fieldValidation`` parameter, so kubectl validates server-side instead of fetching
    schemas (the emulated resources have none; only the CRD's are real). ``None`` when
    ``gv`` is not emulated."""
    resources = emulated_gvs().get(gv)
    if resources is None:
        return None
    paths = {}
    for res in resources:
        prefix = "/" + gv + ("/namespaces/{namespace}" if res.namespaced else "")
        paths[f"{prefix}/{res.plural}/{{name}}"] = {
            "patch": {
                "x-kubernetes-group-version-kind": {
                    "group": res.group,
                    "version": res.version,
                    "kind": res.kind,
                },
                "x-kubernetes-action": "patch",
                "parameters": [
                    {
                        "name": "fieldValidation",
                        "in": "query",
                        "schema": {"type": "string", "uniqueItems": True},
                    }
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "ftj gateway", "version": "v0"},
        "paths": paths,
        "components": {"schemas": {}},
    }

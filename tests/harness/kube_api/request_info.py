"""What a request asks for, in kube-apiserver's terms, and the audit record the gateway keeps.

Why: the gateway routes by API group (emulated here or proxied to the real server) and
records every request as RBAC sees it (verb, group, resource, subresource, namespace), so
the operator's ClusterRole can be derived from what it really does. Both need the path split
and the verb named as kube-apiserver's RequestInfoFactory does
(https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass
class AuditRecord:
    """One request as RBAC sees it (recorded when it arrives; ``code`` set when answered)."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user_agent: str
    code: int
    backend: str  # "emulated", "apiserver" or "gateway" (discovery)
    # When it arrived (time.time()) and how long the answer took: the gateway's share of a
    # request's latency, which bench/operator_scale.py separates from the operator's.
    arrived: float = 0.0
    seconds: float = 0.0


@dataclasses.dataclass
class RequestInfo:
    """A parsed Kubernetes API path (what kube-apiserver's RequestInfoFactory computes)."""

    is_resource: bool
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""


def parse_path(path: str) -> RequestInfo:
    """Split ``/api/v1/namespaces/ns/pods/name/log`` style paths into their parts."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return RequestInfo(False)
    if parts[0] == "api":
        group, rest = "", parts[1:]
    else:
        if len(parts) < 2:
            return RequestInfo(False)
        group, rest = parts[1], parts[2:]
    if not rest:
        return RequestInfo(False, group=group)
    version, rest = rest[0], rest[1:]
    if not rest:
        return RequestInfo(False, group=group, version=version)
    info = RequestInfo(True, group=group, version=version)
    if rest[0] == "namespaces" and len(rest) >= 3:
        info.namespace, rest = rest[1], rest[2:]
    elif rest[0] == "namespaces" and len(rest) == 2:
        info.resource, info.name = "namespaces", rest[1]
        return info
    info.resource = rest[0]
    if len(rest) > 1:
        info.name = rest[1]
    if len(rest) > 2:
        info.subresource = rest[2]
    return info


def request_verb(method: str, info: RequestInfo, query: Mapping[str, str]) -> str:
    """The RBAC verb of a resource request (``watch``, ``list``, ``deletecollection``...)."""
    watching = query.get("watch") in ("true", "1")
    if method == "GET":
        return "watch" if watching else ("get" if info.name else "list")
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if info.name else "deletecollection",
    }.get(method, method.lower())

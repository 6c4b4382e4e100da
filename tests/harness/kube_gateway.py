"""One Kubernetes API URL for e2e tests: the real server for CRDs, an in-memory store for the rest.

Why: ``apiextensions-apiserver`` (see :mod:`tests.harness.apiserver`) enforces our CRD exactly as
a cluster would (OpenAPI, CEL, defaults, printer columns, status subresource), but it serves no
core or batch resources. The operator and ``kubectl`` need both behind a single URL, so this
gateway

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
  works: no controller acts on Deployments and RBAC is not enforced;
* merges discovery (``/api``, ``/apis``) of both, so ``kubectl`` and kopf see one cluster;
* optionally (``tls=True``) serves the same over HTTPS too, with a throwaway CA, and writes
  a pod's service-account directory, so in-cluster clients can connect as from a pod;
* records every request in :attr:`KubeGateway.audit` (verb, group, resource, subresource,
  namespace, user agent) so the operator's RBAC can be derived from what it really does.

Emulation is deliberately simple where Kubernetes is subtle (strategic merge covers the list
merge keys our manifests use; no admission, no quotas), and faithful where operators trip:
409 on existing names, 410 for expired watch resourceVersions, status ignored on the main
resource, ``batch/v1`` Job deletion orphaning pods unless a propagation policy is given.

The server runs an asyncio loop in a daemon thread; :mod:`tests.harness.job_simulator` runs on the
same loop and uses :class:`ObjectStore` directly. Test code reaches both through
:meth:`KubeGateway.call`, which runs a function on the loop and returns its result.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import datetime
import itertools
import json
import logging
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from aiohttp import web

log = logging.getLogger("ftj.gateway")
T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Resource registry of what the gateway emulates.
# --------------------------------------------------------------------------------------------


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
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
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
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# Errors in the Kubernetes Status shape.
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A request failure rendered as a ``Status`` object with the matching HTTP code."""

    REASONS = {
        400: "BadRequest",
        404: "NotFound",
        409: "AlreadyExists",
        410: "Expired",
        405: "MethodNotAllowed",
        422: "Invalid",
        415: "UnsupportedMediaType",
    }

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or self.REASONS.get(code, "InternalError")
        self.details = dict(details or {})

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _not_found(res: ResourceType, name: str) -> ApiError:
    what = f"{res.plural}.{res.group}" if res.group else res.plural
    return ApiError(
        404,
        f'{what} "{name}" not found',
        details={"name": name, "group": res.group, "kind": res.plural},
    )


# --------------------------------------------------------------------------------------------
# Patches.
# --------------------------------------------------------------------------------------------

# Strategic-merge list keys for the fields our manifests, kopf and kubectl touch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "tolerations": "key",
    "containerStatuses": "name",
    "hostAliases": "ip",
}
PRIMITIVE_SET_LISTS = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch for the simple cases: keyed lists, ``$patch`` and set lists."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_keyed_list(result[key], value, MERGE_KEYS[key])
        elif isinstance(value, list) and key in PRIMITIVE_SET_LISTS:
            merged = list(result.get(key) or [])
            merged += [v for v in value if v not in merged]
            result[key] = merged
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_keyed_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            merged.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, old in enumerate(merged)
                if isinstance(old, dict) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(target: Any, ops: list[Mapping[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(target)

    def walk(parts: list[str]) -> tuple[Any, str]:
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(path: str) -> Any:
        node = doc
        for part in _pointer(path):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def remove(path: str) -> Any:
        parent, last = walk(_pointer(path))
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    def add(path: str, value: Any) -> None:
        nonlocal doc
        parts = _pointer(path)
        if not parts:
            doc = value
            return
        parent, last = walk(parts)
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    try:
        for op in ops:
            kind, path = op["op"], op["path"]
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(path, remove(op["from"]))
            elif kind == "copy":
                add(path, copy.deepcopy(get(op["from"])))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(
                        422,
                        f"the server rejected our request due to an error in "
                        f"our request: test operation failed at {path}",
                    )
            else:
                raise ApiError(400, f"unknown JSON patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, f"JSON patch could not be applied: {exc!r}") from exc
    return doc


# --------------------------------------------------------------------------------------------
# Selectors.
# --------------------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def label_selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Equality (``=``, ``==``, ``!=``), set (``in``, ``notin``) and existence selectors."""
    for term in _split_selector(selector or ""):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term and " in " not in term and " notin " not in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        else:
            match = _SET_RE.match(term)
            if not match:
                raise ApiError(400, f"unable to parse requirement: {term!r}")
            negated, key, op, values = match.groups()
            if op is None:
                if (key in labels) == bool(negated):
                    return False
                continue
            options = {v.strip() for v in values.split(",")}
            if op == "in" and labels.get(key) not in options:
                return False
            if op == "notin" and labels.get(key) in options:
                return False
    return True


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def field_selector_matches(selector: str | None, obj: Mapping[str, Any]) -> bool:
    """``a.b=c`` / ``a.b==c`` / ``a.b!=c`` terms on any dotted path (Kubernetes allows a few)."""
    for term in (selector or "").split(","):
        if not term.strip():
            continue
        if "!=" in term:
            path, value = term.split("!=", 1)
            if _field_value(obj, path.strip()) == value.strip():
                return False
        else:
            path, value = term.replace("==", "=").split("=", 1)
            if _field_value(obj, path.strip()) != value.strip():
                return False
    return True


# --------------------------------------------------------------------------------------------
# The store.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WatchEvent:
    """One change, as a watch delivers it."""

    resource_version: int
    resource: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    object: dict[str, Any]


Listener = Callable[[WatchEvent], None]


class ObjectStore:
    """Objects of the emulated resources, with Kubernetes' write semantics. Loop-thread only."""

    HISTORY = 50_000  # events kept for watches resuming from a resourceVersion

    def __init__(self) -> None:
        self._objects: dict[ResourceType, dict[tuple[str, str], dict[str, Any]]] = (
            collections.defaultdict(dict)
        )
        self._rv = itertools.count(1)
        self.last_rv = 0
        self.history: collections.deque[WatchEvent] = collections.deque(maxlen=self.HISTORY)
        self._listeners: list[Listener] = []
        self._names = itertools.count(1)

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    def resource(group: str, version: str, plural: str) -> ResourceType:
        res = _BY_PATH.get((group, version, plural))
        if res is None:
            raise ApiError(
                404,
                f"the server could not find the requested resource "
                f"({group or 'core'}/{version} {plural})",
            )
        return res

    def get(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects[res].get((namespace or "", name))
        if obj is None:
            raise _not_found(res, name)
        return copy.deepcopy(obj)

    def find(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Like :meth:`get`, but ``None`` when absent."""
        obj = self._objects[res].get((namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        res: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        items = [
            copy.deepcopy(obj)
            for (ns, _), obj in sorted(self._objects[res].items())
            if (not namespace or ns == namespace)
            and label_selector_matches(label_selector, obj["metadata"].get("labels") or {})
            and field_selector_matches(field_selector, obj)
        ]
        return items

    def all_objects(self) -> Iterable[tuple[ResourceType, dict[str, Any]]]:
        for res, objects in self._objects.items():
            for obj in list(objects.values()):
                yield res, obj

    # -- writes --------------------------------------------------------------------------------

    def create(
        self,
        res: ResourceType,
        namespace: str | None,
        body: Mapping[str, Any],
        dry_run: bool = False,
    ) -> dict[str, Any]:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        ns = (namespace or meta.get("namespace") or "default") if res.namespaced else ""
        if res.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request",
                )
            meta["namespace"] = ns
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422,
                    f"{res.kind} is invalid: metadata.name: Required value: "
                    "name or generateName is required",
                    reason="Invalid",
                )
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if (ns, meta["name"]) in self._objects[res]:
            raise ApiError(
                409,
                f"{res.plural}{'.' + res.group if res.group else ''} "
                f'"{meta["name"]}" already exists',
                details={"name": meta["name"], "group": res.group, "kind": res.plural},
            )
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        if "spec" in obj:
            meta["generation"] = 1
        for key in ("resourceVersion", "deletionTimestamp", "selfLink"):
            meta.pop(key, None)
        self._default(res, obj)
        if dry_run:
            return obj
        return self._commit(res, "ADDED", obj)

    def replace(
        self,
        res: ResourceType,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        current = self.get(res, namespace, name)
        new = copy.deepcopy(dict(body))
        sent_rv = new.get("metadata", {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {res.plural} "{name}": the '
                "object has been modified; please apply your changes to the "
                "latest version and try again",
                reason="Conflict",
            )
        return self._write(res, current, new, subresource)

    def patch(
        self,
        res: ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        current = self.find(res, namespace, name)
        if current is None:
            if "apply-patch" in content_type:  # server-side apply creates
                return self.create(res, namespace, patch)
            raise _not_found(res, name)
        if "json-patch" in content_type:
            new = json_patch(current, patch)
        elif "strategic-merge-patch" in content_type:
            new = strategic_merge_patch(current, patch)
        elif "merge-patch" in content_type or "apply-patch" in content_type:
            new = merge_patch(current, patch)
        else:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted "
                f"media types include: application/json-patch+json, "
                f"application/merge-patch+json, "
                f"application/apply-patch+yaml ({content_type})",
            )
        new.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self._write(res, current, new, subresource)

    def update_status(
        self, res: ResourceType, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace ``status`` (used by the simulator playing the controllers)."""
        current = self.get(res, namespace, name)
        return self._write(
            res, current, {**current, "status": copy.deepcopy(dict(status))}, "status"
        )

    def mutate(
        self,
        res: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """Apply ``change`` to a copy of the whole object and store it (controllers' writes)."""
        current = self.get(res, namespace, name)
        new = copy.deepcopy(current)
        change(new)
        return self._write(res, current, new, "*")

    def delete(
        self, res: ResourceType, namespace: str | None, name: str, propagation: str | None = None
    ) -> dict[str, Any]:
        current = self.get(res, namespace, name)
        meta = current["metadata"]
        if propagation is None and res.group == "batch":
            propagation = "Orphan"  # batch/v1 Jobs orphan their pods by default, as upstream
        if propagation == "Orphan":
            self._orphan_dependents(meta["uid"])
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                current["metadata"]["deletionTimestamp"] = now_iso()
                current["metadata"]["deletionGracePeriodSeconds"] = 0
                return self._commit(res, "MODIFIED", current)
            return current
        return self._remove(res, current)

    # -- internals -----------------------------------------------------------------------------

    def _write(
        self,
        res: ResourceType,
        current: dict[str, Any],
        new: dict[str, Any],
        subresource: str | None,
    ) -> dict[str, Any]:
        meta, old_meta = new.setdefault("metadata", {}), current["metadata"]
        for key in (
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "generation",
            "deletionTimestamp",
        ):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        if subresource == "status":
            new = {**current, "status": new.get("status", {})}
        elif subresource != "*" and res.has_status:
            new["status"] = current.get("status", {})
            if "status" not in current:
                new.pop("status")
        if subresource != "status" and new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if new == current:
            return current  # no-op writes do not bump the resourceVersion (as upstream)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(res, new)
        return self._commit(res, "MODIFIED", new)

    def _commit(self, res: ResourceType, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        rv = next(self._rv)
        self.last_rv = rv
        obj["metadata"]["resourceVersion"] = str(rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        self._objects[res][key] = obj
        self._emit(WatchEvent(rv, res, kind, obj))
        return copy.deepcopy(obj)

    def _remove(self, res: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        self._objects[res].pop(key, None)
        rv = next(self._rv)
        self.last_rv = rv
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(WatchEvent(rv, res, "DELETED", gone))
        self.collect_garbage({obj["metadata"]["uid"]})
        return copy.deepcopy(gone)

    def _emit(self, event: WatchEvent) -> None:
        self.history.append(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the API
                log.exception("watch listener failed")

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every change; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _orphan_dependents(self, owner_uid: str) -> None:
        for res, obj in list(self.all_objects()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == owner_uid for r in refs):
                keep = [r for r in refs if r.get("uid") != owner_uid]
                self.mutate(
                    res,
                    obj["metadata"].get("namespace"),
                    obj["metadata"]["name"],
                    lambda o, keep=keep: o["metadata"].__setitem__("ownerReferences", keep),
                )

    def collect_garbage(self, gone_uids: set[str]) -> int:
        """Delete objects all of whose owners are among ``gone_uids`` (background cascade)."""
        removed = 0
        for res, obj in list(self.all_objects()):
            refs = obj["metadata"].get("ownerReferences") or []
            if refs and all(r.get("uid") in gone_uids for r in refs):
                meta = obj["metadata"]
                if self.find(res, meta.get("namespace"), meta["name"]) is not None:
                    self.delete(res, meta.get("namespace"), meta["name"], "Background")
                    removed += 1
        return removed

    @staticmethod
    def _default(res: ResourceType, obj: dict[str, Any]) -> None:
        """The few defaults controllers and kubectl rely on."""
        spec = obj.get("spec")
        if res.kind == "Job" and isinstance(spec, dict):
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("suspend", False)
            spec.setdefault("completionMode", "NonIndexed")
            template = spec.setdefault("template", {})
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            uid = obj["metadata"]["uid"]
            labels.setdefault("batch.kubernetes.io/controller-uid", uid)
            labels.setdefault("batch.kubernetes.io/job-name", obj["metadata"]["name"])
            labels.setdefault("controller-uid", uid)
            labels.setdefault("job-name", obj["metadata"]["name"])
            spec.setdefault(
                "selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            )
            obj.setdefault("status", {})
        elif res.kind == "Pod" and isinstance(spec, dict):
            for container in spec.get("containers", []):
                container.setdefault("terminationMessagePath", "/dev/termination-log")
                container.setdefault("terminationMessagePolicy", "File")
            spec.setdefault("restartPolicy", "Always")
            obj.setdefault("status", {"phase": "Pending"})
        elif res.kind == "Service" and isinstance(spec, dict):
            if "clusterIP" not in spec:
                n = abs(hash(obj["metadata"]["uid"])) % 65000
                spec["clusterIP"] = f"10.96.{n // 256}.{n % 256 or 1}"
            spec.setdefault("type", "ClusterIP")
        elif res.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        elif res.kind == "Deployment" and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault("strategy", {"type": "RollingUpdate"})
            obj.setdefault("status", {})


# --------------------------------------------------------------------------------------------
# Audit.
# --------------------------------------------------------------------------------------------


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


def _verb(method: str, info: RequestInfo, query: Mapping[str, str]) -> str:
    watching = query.get("watch") in ("true", "1")
    if method == "GET":
        return "watch" if watching else ("get" if info.name else "list")
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if info.name else "deletecollection",
    }.get(method, method.lower())


# --------------------------------------------------------------------------------------------
# The gateway server.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where and how to reach the real API server (read from its kubeconfig)."""

    url: str
    token: str | None
    ca_file: str | None

    @classmethod
    def from_kubeconfig(cls, path: Path | str) -> Upstream:
        config = yaml.safe_load(Path(path).read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"] if config.get("users") else {}
        return cls(
            cluster["server"].rstrip("/"), user.get("token"), cluster.get("certificate-authority")
        )


HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "authorization",
    "content-encoding",
    "upgrade",
}


class KubeGateway:
    """HTTP server: the single Kubernetes URL of an e2e test (see module docstring).

    Attributes after :meth:`start`: ``url``, ``kubeconfig_path``, ``store``, ``audit``, ``loop``;
    with ``tls=True`` also ``tls_port``, ``tls_url`` and ``ca_file`` (the same app over HTTPS,
    certificate from :mod:`tests.harness.cluster_tls`; ``tls_hosts`` adds names/IPs to its
    SANs) and :meth:`service_account_files` for in-cluster clients.
    """

    TOKEN = "ftj-e2e-gateway"  # what clients present; the gateway ignores credentials

    def __init__(
        self,
        upstream: Upstream | None,
        workdir: Path,
        host: str = "127.0.0.1",
        namespaces: Iterable[str] = ("default", "kube-system"),
        tls: bool = False,
        tls_hosts: Iterable[str] = (),
    ) -> None:
        self.upstream = upstream
        self.workdir = Path(workdir)
        self.host = host
        self.store = ObjectStore()
        self.audit: list[AuditRecord] = []
        self.url = ""
        self.kubeconfig_path = self.workdir / "gateway.kubeconfig"
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._background: list[asyncio.Task[Any]] = []
        self._upstream_kinds: dict[tuple[str, str], str] = {}  # (apiVersion, kind) -> plural
        self._initial_namespaces = list(namespaces)
        self.gc_interval = 1.0
        self.tls, self._tls_hosts = tls, list(tls_hosts)
        self.tls_port, self.tls_url = 0, ""
        self.ca_file: Path | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeGateway:
        """Start the loop thread and the server; write a kubeconfig pointing at it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="ftj-gateway", daemon=True
        )
        self._thread.start()
        self.call_async(self._start())
        self._write_kubeconfig()
        return self

    def stop(self) -> None:
        """Stop serving and the loop; safe to call twice."""
        if self._thread is None:
            return
        try:
            self.call_async(self._stop(), timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> KubeGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _start(self) -> None:
        for ns in self._initial_namespaces:
            self.store.create(
                self.store.resource("", "v1", "namespaces"), None, {"metadata": {"name": ns}}
            )
        ssl_ctx: ssl.SSLContext | bool = False
        if self.upstream is not None and self.upstream.ca_file:
            ssl_ctx = ssl.create_default_context(cafile=self.upstream.ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=200),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=True,
        )
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self.host}:{port}"
        if self.tls:
            from tests.harness import cluster_tls

            hosts = [self.host, *cluster_tls.DEFAULT_HOSTS, *self._tls_hosts]
            files = cluster_tls.issue_server_cert(self.workdir / "tls", hosts)
            tls_site = web.TCPSite(self._runner, self.host, 0, ssl_context=files.server_context())
            await tls_site.start()
            self.tls_port = tls_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.tls_url, self.ca_file = f"https://{self.host}:{self.tls_port}", files.ca_file
        if self.upstream is not None:
            self._background.append(asyncio.create_task(self._collect_cross_garbage()))

    async def _stop(self) -> None:
        for task in self._background:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def call(self, func: Callable[..., T], *args: Any, timeout: float = 30, **kwargs: Any) -> T:
        """Run ``func(*args, **kwargs)`` on the gateway's loop (the store is not thread-safe)."""

        async def runner() -> T:
            return func(*args, **kwargs)

        return self.call_async(runner(), timeout=timeout)

    def call_async(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop and wait for its result."""
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "ftj-e2e",
            "clusters": [{"name": "ftj-e2e", "cluster": {"server": self.url}}],
            # The gateway ignores credentials; a token keeps clients' login logic happy.
            "users": [{"name": "ftj-e2e", "user": {"token": self.TOKEN}}],
            "contexts": [
                {
                    "name": "ftj-e2e",
                    "context": {"cluster": "ftj-e2e", "user": "ftj-e2e", "namespace": "default"},
                }
            ],
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def service_account_files(self, namespace: str, target_dir: Path) -> Path:
        """Write what a pod's ``/var/run/secrets/kubernetes.io/serviceaccount`` holds
        (``token``, ``ca.crt``, ``namespace``) into ``target_dir`` and return it. In-cluster
        clients then reach :attr:`tls_url` as ``KUBERNETES_SERVICE_HOST``/``_PORT``."""
        if self.ca_file is None:
            raise RuntimeError("service account files need KubeGateway(..., tls=True), started")
        target_dir = Path(target_dir)
        target_dir.mkdir(parents=True, exist_ok=True)
        (target_dir / "token").write_text(self.TOKEN)
        (target_dir / "ca.crt").write_bytes(self.ca_file.read_bytes())
        (target_dir / "namespace").write_text(namespace)
        return target_dir

    # -- test-facing helpers (thread-safe) -------------------------------------------------

    def objects(
        self,
        plural: str,
        namespace: str | None = None,
        group: str = "",
        version: str = "v1",
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Emulated objects of one resource, from any thread."""
        res = ObjectStore.resource(group, version, plural)
        return self.call(self.store.list, res, namespace, label_selector)

    def audit_rules(self, user_agent_contains: str = "") -> set[tuple[str, str, str]]:
        """``(group, resource[/subresource], verb)`` triples seen, for deriving RBAC rules."""
        return {
            (r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb)
            for r in list(self.audit)
            if r.resource and user_agent_contains in r.user_agent
        }

    # -- request handling ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        info = parse_path(path)
        query = dict(request.query)
        verb = _verb(request.method, info, query) if info.is_resource else request.method.lower()
        backend, code = "gateway", 500
        record = None
        if info.is_resource:
            record = AuditRecord(
                verb,
                info.group,
                info.version,
                info.resource,
                info.subresource,
                info.namespace,
                info.name,
                request.headers.get("User-Agent", ""),
                0,
                "",
            )
            self.audit.append(record)
        try:
            if path in ("/healthz", "/readyz", "/livez"):
                code = 200
                return web.Response(text="ok")
            if path == "/api":
                code = 200
                return _json(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": self.host}
                        ],
                    }
                )
            if path == "/apis":
                code = 200
                return _json(await self._group_list())
            if path == "/openapi/v3":
                code = 200
                return _json(await self._openapi_root())
            if path.startswith(("/openapi/v3/api/", "/openapi/v3/apis/")):
                gv = path[len("/openapi/v3/") :]
                doc = self._openapi_gv(gv)
                if doc is not None:
                    code = 200
                    return _json(doc)
            emulated = info.group == "" or info.group in EMULATED_GROUPS
            if path.startswith(("/api/", "/apis/")) and emulated:
                backend = "emulated"
                if not info.is_resource:
                    code = 200
                    return _json(self._discovery(info))
                response = await self._serve(request, info, query, verb)
                code = response.status
                return response
            if self.upstream is None:
                raise ApiError(404, f"{path} is not served (no upstream API server)")
            backend = "apiserver"
            response = await self._proxy(request, info, verb)
            code = response.status
            return response
        except ApiError as err:
            code = err.code
            return _json(err.status(), status=err.code)
        finally:
            if record is not None:
                record.code, record.backend = code, backend

    # -- discovery -----------------------------------------------------------------------------

    def _discovery(self, info: RequestInfo) -> dict[str, Any]:
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
                    f"the server could not find the requested resource "
                    f"({info.group}/{info.version})",
                )
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{info.group}/{info.version}" if info.group else info.version,
                "resources": resources,
            }
        group = self._emulated_group(info.group)
        if group is None:
            raise ApiError(404, f"group {info.group} not found")
        return {"kind": "APIGroup", "apiVersion": "v1", **group}

    @staticmethod
    def _emulated_group(name: str) -> dict[str, Any] | None:
        versions = sorted({r.version for r in EMULATED if r.group == name})
        if not versions or not name:
            return None
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": entries, "preferredVersion": entries[0]}

    async def _group_list(self) -> dict[str, Any]:
        """Emulated groups, then ``apiextensions.k8s.io`` and every CRD's group upstream.

        Standalone apiextensions-apiserver does not serve the ``/apis`` root as JSON (in a
        cluster the aggregator does), so the upstream part is built from the CRDs themselves.
        """
        groups = [self._emulated_group(g) for g in sorted(EMULATED_GROUPS)]
        if self.upstream is not None:
            ext = {"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"}
            groups.append(
                {"name": "apiextensions.k8s.io", "versions": [ext], "preferredVersion": ext}
            )
            crds = await self._upstream_json(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
            )
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
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    # -- OpenAPI v3 (what kubectl needs to choose server-side field validation) -------------

    def _emulated_gvs(self) -> dict[str, list[ResourceType]]:
        gvs: dict[str, list[ResourceType]] = collections.defaultdict(list)
        for res in EMULATED:
            gvs[f"apis/{res.group}/{res.version}" if res.group else f"api/{res.version}"].append(
                res
            )
        return gvs

    async def _openapi_root(self) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        if self.upstream is not None:
            paths.update((await self._upstream_json("/openapi/v3") or {}).get("paths", {}))
        for gv in self._emulated_gvs():
            paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash=ftj-gateway"}
        return {"paths": paths}

    def _openapi_gv(self, gv: str) -> dict[str, Any] | None:
        """A minimal OpenAPI v3 document: one PATCH operation per kind, with the
        ``fieldValidation`` parameter, so kubectl validates server-side instead of fetching
        schemas (the emulated resources have none; only the CRD's are real)."""
        resources = self._emulated_gvs().get(gv)
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

    # -- proxy ---------------------------------------------------------------------------------

    def _upstream_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}
        out.pop("Accept-Encoding", None)
        if self.upstream is not None and self.upstream.token:
            out["Authorization"] = f"Bearer {self.upstream.token}"
        return out

    async def _proxy(
        self, request: web.Request, info: RequestInfo, verb: str
    ) -> web.StreamResponse:
        assert self.upstream is not None and self._session is not None
        url = self.upstream.url + request.rel_url.path_qs
        body = await request.read() if request.can_read_body else None
        headers = self._upstream_headers(request.headers)
        async with self._session.request(
            request.method, url, headers=headers, data=body
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_HEADERS:
                    response.headers.add(key, value)
            if verb == "watch":
                response.enable_chunked_encoding()
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                except (ConnectionResetError, aiohttp.ClientError, asyncio.CancelledError):
                    pass
                return response
            data = await upstream.read()
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data)
            await response.write_eof()
            return response

    # -- emulated API --------------------------------------------------------------------------

    async def _serve(
        self, request: web.Request, info: RequestInfo, query: dict[str, str], verb: str
    ) -> web.StreamResponse:
        res = self.store.resource(info.group, info.version, info.resource)
        ns = info.namespace or None
        if res.namespaced is False and ns:
            raise ApiError(404, f"{res.plural} is not namespaced")
        sub = info.subresource or None
        if sub is not None and sub not in res.subresources:
            raise ApiError(
                404, f"the server could not find the requested resource ({res.plural}/{sub})"
            )
        if sub == "log":
            return await self._serve_log(request, res, ns, info.name, query)
        if sub == "eviction":
            self.store.get(res, ns, info.name)
            await self.evict(ns or "default", info.name)
            return _json(
                {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, status=201
            )
        if verb == "watch":
            return await self._serve_watch(request, res, ns, query, info.name)
        if verb == "list":
            return self._serve_list(request, res, ns, query)
        if verb == "get":
            obj = self.store.get(res, ns, info.name)
            if _wants_table(request):
                return _json(self._table(res, [obj], obj["metadata"]["resourceVersion"]))
            return _json(obj)
        body = await _read_body(request)
        if verb == "create":
            if body is None:
                raise ApiError(400, "request body required")
            if res.namespaced and ns is None:
                raise ApiError(405, f"{res.plural} must be created in a namespace")
            dry = query.get("dryRun") == "All"
            return _json(self.store.create(res, ns, body, dry_run=dry), status=201)
        if verb == "update":
            return _json(self.store.replace(res, ns, info.name, body or {}, sub))
        if verb == "patch":
            ctype = request.headers.get("Content-Type", "application/merge-patch+json")
            existed = self.store.find(res, ns, info.name) is not None
            obj = self.store.patch(res, ns, info.name, body, ctype, sub)
            return _json(obj, status=200 if existed else 201)
        if verb == "delete":
            policy = (body or {}).get("propagationPolicy") or query.get("propagationPolicy")
            if (body or {}).get("orphanDependents") is True:
                policy = "Orphan"
            deleted = self.store.delete(res, ns, info.name, policy)
            headers = {}
            if res.kind == "Job" and policy is None:
                headers["Warning"] = (
                    '299 - "child pods are preserved by default when jobs '
                    "are deleted; set propagationPolicy=Background to remove "
                    "them or set propagationPolicy=Orphan to suppress this "
                    'warning"'
                )
            return _json(deleted, headers=headers)
        if verb == "deletecollection":
            items = self.store.list(res, ns, query.get("labelSelector"), query.get("fieldSelector"))
            for item in items:
                self.store.delete(res, item["metadata"].get("namespace"), item["metadata"]["name"])
            return _json(
                {
                    "kind": f"{res.kind}List",
                    "apiVersion": res.api_version,
                    "metadata": {},
                    "items": items,
                }
            )
        raise ApiError(405, f"{request.method} is not supported on {res.plural}")

    def _serve_list(
        self, request: web.Request, res: ResourceType, ns: str | None, query: Mapping[str, str]
    ) -> web.Response:
        items = self.store.list(res, ns, query.get("labelSelector"), query.get("fieldSelector"))
        rv = str(self.store.last_rv)
        if _wants_table(request):
            return _json(self._table(res, items, rv))
        for item in items:  # list items carry no apiVersion/kind in Kubernetes
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return _json(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    async def _serve_watch(
        self,
        request: web.Request,
        res: ResourceType,
        ns: str | None,
        query: Mapping[str, str],
        name: str = "",
    ) -> web.StreamResponse:
        label_sel, field_sel = query.get("labelSelector"), query.get("fieldSelector")
        if name:
            field_sel = ",".join(filter(None, [field_sel, f"metadata.name={name}"]))
        timeout = float(query.get("timeoutSeconds") or 1800)
        since = query.get("resourceVersion") or "0"
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()

        def matches(event: WatchEvent) -> bool:
            meta = event.object["metadata"]
            return (
                event.resource == res
                and (not ns or meta.get("namespace") == ns)
                and label_selector_matches(label_sel, meta.get("labels") or {})
                and field_selector_matches(field_sel, event.object)
            )

        initial: list[WatchEvent] = []
        if since == "0":
            initial = [
                WatchEvent(int(o["metadata"]["resourceVersion"]), res, "ADDED", o)
                for o in self.store.list(res, ns, label_sel, field_sel)
            ]
        else:
            try:
                since_rv = int(since)
            except ValueError as exc:
                raise ApiError(400, f"invalid resourceVersion {since!r}") from exc
            oldest = self.store.history[0].resource_version if self.store.history else 1
            if since_rv < oldest - 1 and since_rv < self.store.last_rv:
                gone = ApiError(
                    410, f"too old resource version: {since_rv} ({oldest})", reason="Expired"
                )
                initial = [WatchEvent(0, res, "ERROR", gone.status())]
            else:
                initial = [
                    e for e in self.store.history if e.resource_version > since_rv and matches(e)
                ]
        unsubscribe = self.store.subscribe(lambda e: queue.put_nowait(e) if matches(e) else None)
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for event in initial:
                await _write_event(response, event)
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=min(left, 30))
                except asyncio.TimeoutError:
                    continue
                await _write_event(response, event)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            unsubscribe()
        return response

    async def _serve_log(
        self,
        request: web.Request,
        res: ResourceType,
        ns: str | None,
        name: str,
        query: Mapping[str, str],
    ) -> web.StreamResponse:
        self.store.get(res, ns, name)
        source = self.log_source
        if source is None:
            raise ApiError(400, f'container in pod "{name}" has no logs (no simulator)')
        follow = query.get("follow") in ("true", "1")
        tail_lines = int(query["tailLines"]) if query.get("tailLines") else None
        response = web.StreamResponse(status=200)
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            async for chunk in source(ns or "default", name, follow, tail_lines):
                await response.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    # Set by the job simulator: async generator of log chunks, and pod eviction.
    log_source: Callable[[str, str, bool, int | None], Any] | None = None
    evictor: Callable[[str, str], Any] | None = None

    async def evict(self, namespace: str, name: str) -> None:
        if self.evictor is None:
            self.store.delete(self.store.resource("", "v1", "pods"), namespace, name)
        else:
            await self.evictor(namespace, name)

    # -- tables --------------------------------------------------------------------------------

    @staticmethod
    def _table(res: ResourceType, items: list[dict[str, Any]], rv: str) -> dict[str, Any]:
        columns = [("Name", "string", "name")]
        extra: dict[str, list[tuple[str, str, Callable[[dict[str, Any]], Any]]]] = {
            "Pod": [
                (
                    "Ready",
                    "string",
                    lambda o: "{}/{}".format(
                        sum(
                            1
                            for c in o.get("status", {}).get("containerStatuses", [])
                            if c.get("ready")
                        ),
                        len(o.get("spec", {}).get("containers", [])),
                    ),
                ),
                ("Status", "string", _pod_status),
                ("Restarts", "integer", lambda o: 0),
                ("IP", "string", lambda o: o.get("status", {}).get("podIP", "<none>")),
            ],
            "Job": [
                ("Status", "string", _job_status),
                (
                    "Completions",
                    "string",
                    lambda o: "{}/{}".format(
                        o.get("status", {}).get("succeeded", 0),
                        o.get("spec", {}).get("completions", 1),
                    ),
                ),
            ],
            "Event": [
                ("Type", "string", lambda o: o.get("type", "")),
                ("Reason", "string", lambda o: o.get("reason", "")),
                ("Message", "string", lambda o: o.get("message") or o.get("note", "")),
            ],
            "ConfigMap": [("Data", "integer", lambda o: len(o.get("data") or {}))],
            "Namespace": [("Status", "string", lambda o: o.get("status", {}).get("phase", ""))],
            "Deployment": [
                (
                    "Ready",
                    "string",
                    lambda o: "{}/{}".format(
                        o.get("status", {}).get("readyReplicas", 0),
                        o.get("spec", {}).get("replicas", 1),
                    ),
                ),
                ("Available", "integer", lambda o: o.get("status", {}).get("availableReplicas", 0)),
            ],
        }
        rows_extra = extra.get(res.kind, [])
        definitions = [
            {"name": n, "type": t, "format": f, "description": "", "priority": 0}
            for n, t, f in columns
        ]
        definitions += [
            {"name": n, "type": t, "format": "", "description": "", "priority": 0}
            for n, t, _ in rows_extra
        ]
        definitions.append(
            {"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}
        )
        rows = []
        for obj in items:
            cells = [obj["metadata"]["name"]] + [fn(obj) for _, _, fn in rows_extra]
            cells.append(_age(obj["metadata"].get("creationTimestamp")))
            meta_obj = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
            rows.append({"cells": cells, "object": meta_obj})
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": rv},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    # -- cross-backend garbage collection --------------------------------------------------

    async def _collect_cross_garbage(self) -> None:
        """Delete emulated objects whose owners lived on the real server and are gone.

        Polls rather than watches: one LIST per owner resource per ``gc_interval`` is cheap,
        and it also covers owners deleted while a watch would have been reconnecting.
        """
        while True:
            await asyncio.sleep(self.gc_interval)
            try:
                await self.sweep_upstream_owners()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cross-backend garbage collection failed")

    async def sweep_upstream_owners(self) -> int:
        """One GC pass; returns how many emulated objects were deleted."""
        owners: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        for _, obj in self.store.all_objects():
            for ref in obj["metadata"].get("ownerReferences") or []:
                group = ref.get("apiVersion", "").rpartition("/")[0]
                if group and group not in EMULATED_GROUPS:
                    owners[(ref["apiVersion"], ref["kind"])].add(ref.get("uid", ""))
        if not owners:
            return 0
        alive: set[str] = set()
        for (api_version, kind), _uids in owners.items():
            plural = await self._upstream_plural(api_version, kind)
            if plural is None:
                continue  # unknown kind (CRD removed?): everything it owned is gone
            data = await self._upstream_json(f"/apis/{api_version}/{plural}")
            if data is None:
                return 0  # upstream unreachable: collect nothing rather than everything
            for item in data.get("items", []):
                alive.add(item["metadata"]["uid"])
        gone = set().union(*owners.values()) - alive
        emulated_uids = {o["metadata"]["uid"] for _, o in self.store.all_objects()}
        gone -= emulated_uids
        return self.store.collect_garbage(gone) if gone else 0

    async def _upstream_json(self, path: str) -> dict[str, Any] | None:
        assert self.upstream is not None and self._session is not None
        try:
            async with self._session.get(
                self.upstream.url + path,
                headers=self._upstream_headers({"Accept": "application/json"}),
            ) as resp:
                if resp.status != 200:
                    return None
                return json.loads(await resp.read())  # type: ignore[no-any-return]
        except aiohttp.ClientError:
            return None

    async def _upstream_plural(self, api_version: str, kind: str) -> str | None:
        key = (api_version, kind)
        if key not in self._upstream_kinds:
            data = await self._upstream_json(f"/apis/{api_version}")
            for res in (data or {}).get("resources", []):
                if "/" not in res["name"]:
                    self._upstream_kinds[(api_version, res["kind"])] = res["name"]
        return self._upstream_kinds.get(key)


# --------------------------------------------------------------------------------------------
# Small helpers.
# --------------------------------------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _read_body(request: web.Request) -> Any:
    if not request.can_read_body:
        return None
    raw = await request.read()
    if not raw:
        return None
    ctype = request.headers.get("Content-Type", "")
    try:
        if "yaml" in ctype:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise ApiError(415, f"cannot decode request body of type {ctype!r}: {exc}") from exc


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


async def _write_event(response: web.StreamResponse, event: WatchEvent) -> None:
    obj = event.object
    await response.write(json.dumps({"type": event.type, "object": obj}).encode() + b"\n")


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _pod_status(pod: Mapping[str, Any]) -> str:
    status = pod.get("status", {})
    for container in status.get("containerStatuses", []):
        waiting = container.get("state", {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
        terminated = container.get("state", {}).get("terminated")
        if terminated and terminated.get("reason"):
            return str(terminated["reason"])
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    return str(status.get("phase", "Pending"))


def _job_status(job: Mapping[str, Any]) -> str:
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("status") == "True" and cond["type"] in ("Complete", "Failed", "Suspended"):
            return str(cond["type"])
    return "Running"

"""The emulated resources' objects, with kube-apiserver's write semantics and watch history.

Why: the operator is only as correct as its assumptions about the API server, so writes here
behave as upstream's where operators trip: one resourceVersion counter across all resources,
bumped only by a real change (a no-op patch is no event); 409 on an existing name and on a
stale ``resourceVersion`` in an update; ``generation`` bumped by spec changes only; ``status``
as a subresource (a main-resource write keeps it, a ``/status`` write changes only it);
finalizers holding a deleted object with ``deletionTimestamp`` set; ownerReference garbage
collection (background cascade; ``batch/v1`` Jobs orphan their pods unless a propagation
policy says otherwise, as upstream). A bounded history of events lets a watch resume from a
resourceVersion, or get 410 Expired once it has been dropped (served by
:mod:`tests.harness.kube_api.emulated_api`). Collection across the two back ends (owners on
the real API server) is :mod:`tests.harness.kube_api.upstream`'s, through
:meth:`ObjectStore.collect_garbage`.

Why not kmock: kmock 0.8 (https://github.com/nolar/kmock), the mock Kubernetes API that
kopf's testing docs point to (https://docs.kopf.dev/en/stable/testing/#mock-server), was
evaluated against this list by reading its source (``kmock/_internal/k8s.py``, ``dicts.py``,
``parsing.py``) and driving its ``KubernetesEmulator`` over HTTP:

* resourceVersions: none. Objects get no ``resourceVersion``, ``uid``, ``creationTimestamp``
  or ``generation``; a list says ``metadata.resourceVersion: "..."``.
* watches: every watch replays all objects as ADDED, then follows; ``resourceVersion`` is
  ignored, so there is never a 410, and ``timeoutSeconds`` is ignored (a TODO in its source).
* patches: a list body is a JSON patch and a dict body a recursive merge, whatever the
  ``Content-Type``. Strategic merge replaces ``containers`` instead of merging by name (a
  container's ``image`` was lost); a dict merged onto a scalar raises instead of replacing
  (RFC 7386); server-side apply does not create; PUT is not routed at all (404).
* status subresource: none. A merge patch of the main resource changes ``status``.
* garbage collection: none. Deleting a Job leaves the pods it owns, and a second back end
  can't own anything in it, since it proxies nothing to a real API server.
* also: label selectors are ignored on lists, and create answers 200, not 201.

Its request DSL and assertions (``kmock['get /...'] << payload``) serve unit tests of one
client, and its docstring says to "inherit and implement" any special field treatment: every
item above would have to be rebuilt on top of it, which is this module plus an adapter. So
kmock replaces nothing here, and it is not a dependency.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tests.harness.kube_api.defaults import apply_defaults
from tests.harness.kube_api.errors import ApiError, not_found
from tests.harness.kube_api.patches import apply_patch
from tests.harness.kube_api.resources import ResourceType, lookup, now_iso
from tests.harness.kube_api.selectors import field_selector_matches, label_selector_matches

log = logging.getLogger("ftj.gateway")


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
        """The emulated resource at ``/apis/<group>/<version>/<plural>``, or a 404."""
        return lookup(group, version, plural)

    def get(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        """A copy of the object, or a 404 :class:`ApiError`."""
        obj = self._objects[res].get((namespace or "", name))
        if obj is None:
            raise not_found(res, name)
        return copy.deepcopy(obj)

    def find(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Like :meth:`get`, but ``None`` when absent."""
        obj = self._objects[res].get((namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def owned_by(
        self, res: ResourceType, namespace: str | None, owner_uid: str
    ) -> list[dict[str, Any]]:
        """Copies of the objects in ``namespace`` with an ownerReference to ``owner_uid``,
        sorted by name. Filters before copying: a controller asking for one Job's pods must
        not copy every pod of the namespace (quadratic with a thousand Jobs)."""
        return [
            copy.deepcopy(obj)
            for (ns, _), obj in sorted(self._objects[res].items())
            if ns == (namespace or "")
            and any(r.get("uid") == owner_uid for r in obj["metadata"].get("ownerReferences") or [])
        ]

    def keys(self, res: ResourceType) -> list[tuple[str, str]]:
        """(namespace, name) of every stored object of ``res``, sorted; nothing copied."""
        return sorted(self._objects[res])

    def list(
        self,
        res: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Copies of the matching objects, sorted by namespace and name (all namespaces
        when ``namespace`` is empty)."""
        items = [
            copy.deepcopy(obj)
            for (ns, _), obj in sorted(self._objects[res].items())
            if (not namespace or ns == namespace)
            and label_selector_matches(label_selector, obj["metadata"].get("labels") or {})
            and field_selector_matches(field_selector, obj)
        ]
        return items

    def all_objects(self) -> Iterable[tuple[ResourceType, dict[str, Any]]]:
        """Every stored object with its resource (the stored dicts: do not change them)."""
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
        """POST: name (or ``generateName``), uid, timestamps and defaults; 409 if it exists."""
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
        apply_defaults(res, obj)
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
        """PUT: 409 Conflict when ``body`` carries a resourceVersion that is not current."""
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
        """PATCH of the type ``content_type`` names; server-side apply creates when absent."""
        current = self.find(res, namespace, name)
        if current is None:
            if "apply-patch" in content_type:  # server-side apply creates
                return self.create(res, namespace, patch)
            raise not_found(res, name)
        new = apply_patch(current, patch, content_type)
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
        """DELETE: held by finalizers (``deletionTimestamp`` set) or removed, then its
        dependents collected (``Background``) or released (``Orphan``)."""
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

                def release(o: dict[str, Any], keep: list[Any] = keep) -> None:
                    o["metadata"]["ownerReferences"] = keep

                self.mutate(res, obj["metadata"].get("namespace"), obj["metadata"]["name"], release)

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

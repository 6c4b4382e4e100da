"""The HTTP face of the emulated resources: CRUD, lists, watches, pod logs and evictions.

Why its own module: this is where requests meet the
:class:`~tests.harness.kube_api.object_store.ObjectStore`, and where the request-level
behaviour clients depend on lives: 201 on create (and on an apply that creates), ``dryRun``,
the Job deletion warning kubectl prints, ``Table`` responses for kubectl, watches that start
from a list (``resourceVersion`` unset or ``0``) or resume from the store's history and send
a 410 Expired ERROR event when it no longer reaches back that far (what kopf and client-go
reflectors restart on, https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes),
and honour ``timeoutSeconds``. Pod logs and evictions are delegated to the kubelet
(:mod:`tests.harness.cluster`) through :class:`PodHooks`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import yaml
from aiohttp import web

from tests.harness.kube_api.errors import ApiError
from tests.harness.kube_api.object_store import ObjectStore, WatchEvent
from tests.harness.kube_api.request_info import RequestInfo
from tests.harness.kube_api.resources import ResourceType
from tests.harness.kube_api.selectors import field_selector_matches, label_selector_matches
from tests.harness.kube_api.tables import table, wants_table


class PodHooks(Protocol):
    """What serves ``pods/log`` and ``pods/eviction`` (the gateway, fed by the simulator)."""

    log_source: Callable[[str, str, bool, int | None], Any] | None

    async def evict(self, namespace: str, name: str) -> None: ...


class EmulatedApi:
    """Requests for emulated resources, answered from ``store`` (on the gateway's loop)."""

    def __init__(self, store: ObjectStore, pods: PodHooks) -> None:
        self.store = store
        self.pods = pods

    async def serve(
        self, request: web.Request, info: RequestInfo, query: dict[str, str], verb: str
    ) -> web.StreamResponse:
        """Answer one request for an emulated resource (``info.is_resource``)."""
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
            await self.pods.evict(ns or "default", info.name)
            return json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, status=201
            )
        if verb == "watch":
            return await self._serve_watch(request, res, ns, query, info.name)
        if verb == "list":
            return self._serve_list(request, res, ns, query)
        if verb == "get":
            obj = self.store.get(res, ns, info.name)
            if wants_table(request):
                return json_response(table(res, [obj], obj["metadata"]["resourceVersion"]))
            return json_response(obj)
        body = await read_body(request)
        if verb == "create":
            if body is None:
                raise ApiError(400, "request body required")
            if res.namespaced and ns is None:
                raise ApiError(405, f"{res.plural} must be created in a namespace")
            dry = query.get("dryRun") == "All"
            return json_response(self.store.create(res, ns, body, dry_run=dry), status=201)
        if verb == "update":
            return json_response(self.store.replace(res, ns, info.name, body or {}, sub))
        if verb == "patch":
            ctype = request.headers.get("Content-Type", "application/merge-patch+json")
            existed = self.store.find(res, ns, info.name) is not None
            obj = self.store.patch(res, ns, info.name, body, ctype, sub)
            return json_response(obj, status=200 if existed else 201)
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
            return json_response(deleted, headers=headers)
        if verb == "deletecollection":
            items = self.store.list(res, ns, query.get("labelSelector"), query.get("fieldSelector"))
            for item in items:
                self.store.delete(res, item["metadata"].get("namespace"), item["metadata"]["name"])
            return json_response(
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
        if wants_table(request):
            return json_response(table(res, items, rv))
        for item in items:  # list items carry no apiVersion/kind in Kubernetes
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return json_response(
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
                await write_event(response, event)
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=min(left, 30))
                except asyncio.TimeoutError:
                    continue
                await write_event(response, event)
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
        source = self.pods.log_source
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


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``body`` as an ``application/json`` response."""
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def read_body(request: web.Request) -> Any:
    """The request body decoded as JSON or YAML (by ``Content-Type``); ``None`` when empty."""
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


async def write_event(response: web.StreamResponse, event: WatchEvent) -> None:
    """One watch event as a line of the chunked response."""
    obj = event.object
    await response.write(json.dumps({"type": event.type, "object": obj}).encode() + b"\n")

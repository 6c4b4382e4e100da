"""The thin edge to the Kubernetes API: create, read and patch objects as plain dicts.

Asynchronous, over one aiohttp session with a pool of keep-alive connections, on kopf's event
loop: a status write waits for the server without holding a thread, and writes for many jobs
go out at once (up to ``max_connections``), not one at a time per worker thread. The operator
renders and reads JSON dicts, so there are no typed models (a round trip through generated
models would drop fields newer than the client) and the official client is not needed: it
would cost the process ~40 MB of memory for its model classes alone.

Credentials come from :func:`finetune_operator.credentials.connection_info`, the same function
kopf logs in with; a 401 answer or expired credentials make the client log in again once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import aiohttp
import kopf

from finetune_operator import credentials
from finetune_operator.errors import AlreadyExists, ApiError, Conflict, NotFound

Manifest = dict[str, Any]

PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Event": "events",
    "Job": "jobs",
    "FineTuneJob": "finetunejobs",
    "KopfPeering": "kopfpeerings",
    "ClusterKopfPeering": "clusterkopfpeerings",
}
FIELD_MANAGER = "finetune-operator"
USER_AGENT = "finetune-operator"
REQUEST_TIMEOUT = 30.0
# Requests in flight at once. At a thousand running jobs the status writes need ~100/s; an API
# server under load answers each in a few hundred milliseconds, so enough must be in flight to
# carry them (bench/NOTES.md: with 12 the lag's p99 was 8.6 s, with 28 6.5 s, with 56 5.6 s),
# and the bound keeps a slow server from being flooded by one request per job.
MAX_CONNECTIONS = 32


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """REST path of an object (or its collection when ``name`` is None); ``namespace`` None
    for a cluster-scoped kind.

    https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris
    """
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"{prefix}/namespaces/{namespace}" if namespace is not None else prefix
    path = f"{scope}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


class KubeClient:
    """Namespaced object CRUD over the Kubernetes REST API, with dicts in and out.

    Create it anywhere; the session opens on the first request, inside the running loop.
    """

    def __init__(
        self,
        login: Callable[[], kopf.ConnectionInfo] = credentials.connection_info,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._login, self._max_connections = login, max_connections
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._logging_in = asyncio.Lock()

    async def close(self) -> None:
        """Release the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _expired(self) -> bool:
        expiration = self._info.expiration if self._info else None
        if expiration is None:
            return False
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=timezone.utc)
        return expiration <= datetime.now(timezone.utc)

    async def _connect(self, stale: aiohttp.ClientSession | None = None) -> aiohttp.ClientSession:
        """The session, opened (again) with fresh credentials when none is open or ``stale``."""
        async with self._logging_in:
            if self._session is not None and self._session is not stale and not self._expired():
                return self._session
            info = await asyncio.to_thread(self._login)  # files, maybe an exec plugin
            ssl = info.as_ssl_context() if info.server.startswith("https:") else False
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=ssl),
                headers={
                    **info.as_http_headers(),
                    "Accept": "application/json",
                    "User-Agent": USER_AGENT,
                },
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            )
            old, self._session, self._info = self._session, session, info
            if old is not None:
                await old.close()
            return session

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Manifest:
        session = self._session
        if session is None or self._expired():
            session = await self._connect(session)
        for attempt in (1, 2):
            assert self._info is not None
            try:
                async with session.request(
                    method,
                    self._info.server + path,
                    params=query,
                    data=None if body is None else json.dumps(body),
                    headers={"Content-Type": content_type},
                ) as response:
                    text = await response.text()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                raise ApiError(0, f"{method} {path}: {err or type(err).__name__}") from err
            if status == 401 and attempt == 1:
                session = await self._connect(session)  # a rotated token, an expired plugin's
                continue
            break
        if 200 <= status < 300:
            data = json.loads(text) if text else {}
            return data if isinstance(data, dict) else {}
        raise _error(status, text)

    async def create(self, obj: Manifest) -> Manifest:
        """POST the object; AlreadyExists when its name is taken."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        return await self._call("POST", path, obj, query={"fieldManager": FIELD_MANAGER})

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Manifest:
        """GET one object; NotFound when it does not exist."""
        return await self._call("GET", object_path(api_version, kind, namespace, name))

    async def find(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        """The object named ``name``, by a LIST with a ``metadata.name`` field selector: what the
        ``list`` permission already granted for a watch allows, where a GET would need ``get``.
        None when it does not exist."""
        found = await self._call(
            "GET",
            object_path(api_version, kind, namespace),
            query={"fieldSelector": f"metadata.name={name}"},
        )
        items = found.get("items") or []
        return items[0] if items else None

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: Manifest,
        *,
        subresource: str | None = None,
    ) -> Manifest:
        """JSON merge patch (RFC 7386) of the object or of a subresource such as ``status``."""
        path = object_path(api_version, kind, namespace, name)
        if subresource:
            path = f"{path}/{subresource}"
        return await self._call(
            "PATCH",
            path,
            patch,
            content_type="application/merge-patch+json",
            query={"fieldManager": FIELD_MANAGER},
        )


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    message = str(payload.get("message") or text[:200] or "no details")
    api_reason = str(payload.get("reason") or "")
    if status == 404:
        return NotFound(status, message, api_reason=api_reason)
    if status == 409 and api_reason == "AlreadyExists":
        return AlreadyExists(status, message, api_reason=api_reason)
    if status == 409:
        return Conflict(status, message, api_reason=api_reason)
    return ApiError(status, message, api_reason=api_reason)

"""The real API server behind the gateway: how to reach it, proxying, and owners it holds.

Why: ``apiextensions-apiserver`` serves the CRD (see :mod:`tests.harness.apiserver`); every
request for a group the gateway does not emulate is forwarded to it unchanged (watches
streamed through), with the server's own credentials, whatever the client presented.

Garbage collection across the two back ends also lives here: a Job or ConfigMap in the
emulated store may be owned by a FineTuneJob on the real server, and deleting that
FineTuneJob must delete them, as the garbage collector does in a cluster
(https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents).
:meth:`UpstreamClient.sweep_owners` lists each owner kind upstream and hands the uids that
are gone to :meth:`~tests.harness.kube_api.object_store.ObjectStore.collect_garbage`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from tests.harness.kube_api.object_store import ObjectStore
from tests.harness.kube_api.resources import EMULATED_GROUPS


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where and how to reach the real API server (read from its kubeconfig)."""

    url: str
    token: str | None
    ca_file: str | None

    @classmethod
    def from_kubeconfig(cls, path: Path | str) -> Upstream:
        """Server, token and CA of the first cluster and user in a kubeconfig file."""
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


class UpstreamClient:
    """An HTTP session to the real server (open and close it on the gateway's loop)."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._session: aiohttp.ClientSession | None = None
        self._kinds: dict[tuple[str, str], str] = {}  # (apiVersion, kind) -> plural

    async def open(self) -> None:
        """Create the session (trusting the server's CA when the kubeconfig names one)."""
        ssl_ctx: ssl.SSLContext | bool = False
        if self.upstream.ca_file:
            ssl_ctx = ssl.create_default_context(cafile=self.upstream.ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=200),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=True,
        )

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` without hop-by-hop ones, with the real server's token."""
        out = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}
        out.pop("Accept-Encoding", None)
        if self.upstream.token:
            out["Authorization"] = f"Bearer {self.upstream.token}"
        return out

    async def proxy(self, request: web.Request, verb: str) -> web.StreamResponse:
        """Forward ``request`` with the real server's credentials; stream watches through."""
        assert self._session is not None
        url = self.upstream.url + request.rel_url.path_qs
        body = await request.read() if request.can_read_body else None
        headers = self.headers(request.headers)
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

    async def sweep_owners(self, store: ObjectStore) -> int:
        """One GC pass over ``store``; returns how many emulated objects were deleted."""
        owners: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        for _, obj in store.all_objects():
            for ref in obj["metadata"].get("ownerReferences") or []:
                group = ref.get("apiVersion", "").rpartition("/")[0]
                if group and group not in EMULATED_GROUPS:
                    owners[(ref["apiVersion"], ref["kind"])].add(ref.get("uid", ""))
        if not owners:
            return 0
        alive: set[str] = set()
        for (api_version, kind), _uids in owners.items():
            plural = await self.plural(api_version, kind)
            if plural is None:
                continue  # unknown kind (CRD removed?): everything it owned is gone
            data = await self.get_json(f"/apis/{api_version}/{plural}")
            if data is None:
                return 0  # upstream unreachable: collect nothing rather than everything
            for item in data.get("items", []):
                alive.add(item["metadata"]["uid"])
        gone = set().union(*owners.values()) - alive
        emulated_uids = {o["metadata"]["uid"] for _, o in store.all_objects()}
        gone -= emulated_uids
        return store.collect_garbage(gone) if gone else 0

    async def get_json(self, path: str) -> dict[str, Any] | None:
        """GET ``path`` as JSON; ``None`` on any failure (callers then act on nothing)."""
        assert self._session is not None
        try:
            async with self._session.get(
                self.upstream.url + path,
                headers=self.headers({"Accept": "application/json"}),
            ) as resp:
                if resp.status != 200:
                    return None
                return json.loads(await resp.read())  # type: ignore[no-any-return]
        except aiohttp.ClientError:
            return None

    async def plural(self, api_version: str, kind: str) -> str | None:
        """The resource (plural) serving ``kind`` in ``api_version``, from discovery (cached)."""
        key = (api_version, kind)
        if key not in self._kinds:
            data = await self.get_json(f"/apis/{api_version}")
            for res in (data or {}).get("resources", []):
                if "/" not in res["name"]:
                    self._kinds[(api_version, res["kind"])] = res["name"]
        return self._kinds.get(key)

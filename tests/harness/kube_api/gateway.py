"""The gateway server: one Kubernetes URL in front of the emulated API and the real server.

Why: see :mod:`tests.harness.kube_api`. This module is the server itself: its event loop in
a daemon thread, the listening sockets (HTTP, and HTTPS with a throwaway CA when
``tls=True``), the kubeconfig and service-account files clients use, routing each request
to discovery, the emulated API or the real server, the audit trail, and the periodic
garbage collection across the two back ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from tests.harness.kube_api import discovery
from tests.harness.kube_api.emulated_api import EmulatedApi, json_response
from tests.harness.kube_api.errors import ApiError
from tests.harness.kube_api.object_store import ObjectStore
from tests.harness.kube_api.request_info import AuditRecord, parse_path, request_verb
from tests.harness.kube_api.resources import EMULATED_GROUPS
from tests.harness.kube_api.upstream import Upstream, UpstreamClient

log = logging.getLogger("ftj.gateway")
T = TypeVar("T")


class KubeGateway:
    """HTTP server: the single Kubernetes URL of an e2e test (see :mod:`tests.harness.kube_api`).

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
        self.api = EmulatedApi(self.store, self)
        self._upstream = UpstreamClient(upstream) if upstream is not None else None
        self._background: list[asyncio.Task[Any]] = []
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
        if self._upstream is not None:
            await self._upstream.open()
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
        if self._upstream is not None:
            await self._upstream.close()

    def call(self, func: Callable[..., T], *args: Any, timeout: float = 30, **kwargs: Any) -> T:
        """Run ``func(*args, **kwargs)`` on the gateway's loop (the store is not thread-safe)."""

        async def runner() -> T:
            return func(*args, **kwargs)

        result: T = self.call_async(runner(), timeout=timeout)
        return result

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
        verb = (
            request_verb(request.method, info, query)
            if info.is_resource
            else request.method.lower()
        )
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
                time.time(),
            )
            self.audit.append(record)
        try:
            if path in ("/healthz", "/readyz", "/livez"):
                code = 200
                return web.Response(text="ok")
            if path == "/api":
                code = 200
                return json_response(discovery.api_versions(self.host))
            if path == "/apis":
                code = 200
                return json_response(await self._group_list())
            if path == "/openapi/v3":
                code = 200
                return json_response(await self._openapi_root())
            if path.startswith(("/openapi/v3/api/", "/openapi/v3/apis/")):
                gv = path[len("/openapi/v3/") :]
                doc = discovery.openapi_gv(gv)
                if doc is not None:
                    code = 200
                    return json_response(doc)
            emulated = info.group == "" or info.group in EMULATED_GROUPS
            if path.startswith(("/api/", "/apis/")) and emulated:
                backend = "emulated"
                if not info.is_resource:
                    code = 200
                    return json_response(discovery.emulated_discovery(info))
                response = await self.api.serve(request, info, query, verb)
                code = response.status
                return response
            if self._upstream is None:
                raise ApiError(404, f"{path} is not served (no upstream API server)")
            backend = "apiserver"
            response = await self._upstream.proxy(request, verb)
            code = response.status
            return response
        except ApiError as err:
            code = err.code
            return json_response(err.status(), status=err.code)
        finally:
            if record is not None:
                record.code, record.backend = code, backend
                record.seconds = time.time() - record.arrived

    # -- discovery and OpenAPI: the emulated groups plus what the real server reports -------

    async def _group_list(self) -> dict[str, Any]:
        if self._upstream is None:
            return discovery.group_list()
        crds = await self._upstream.get_json(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        )
        return discovery.group_list(discovery.upstream_groups(crds))

    async def _openapi_root(self) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        if self._upstream is not None:
            paths = (await self._upstream.get_json("/openapi/v3") or {}).get("paths", {})
        return discovery.openapi_root(paths)

    # -- pods: logs and eviction come from the simulator (the kubelet) ---------------------

    # Set by the job simulator: async generator of log chunks, and pod eviction.
    log_source: Callable[[str, str, bool, int | None], Any] | None = None
    evictor: Callable[[str, str], Any] | None = None

    async def evict(self, namespace: str, name: str) -> None:
        """Evict a pod: the simulator's eviction when one is attached, else a plain delete."""
        if self.evictor is None:
            self.store.delete(self.store.resource("", "v1", "pods"), namespace, name)
        else:
            await self.evictor(namespace, name)

    # -- garbage collection across the two back ends ----------------------------------------

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
        if self._upstream is None:
            return 0
        return await self._upstream.sweep_owners(self.store)

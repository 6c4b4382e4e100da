"""A real Kubernetes API server for CRDs, started from test code.

Why: our admission contract (OpenAPI schema, CEL rules, defaults, printer columns, status
subresource) is only trustworthy when Kubernetes itself enforces it. Kubernetes'
``apiextensions-apiserver`` is the very code that serves CRDs inside kube-apiserver; run alone
against an etcd it serves ``apiextensions.k8s.io`` and every custom resource, with full
validation and Table output, within a few seconds. It does not serve core or batch resources.

The pieces, all on loopback and torn down together:

* etcd, with its data in a temp dir;
* :class:`~tests.harness.review_stub.ReviewStub`, the "core API" the server delegates
  authentication and authorization to (it approves everything);
* apiextensions-apiserver itself (HTTPS, self-signed certificate);
* :class:`~tests.harness.discovery_proxy.DiscoveryProxy`, which adds the ``/api`` and
  ``/apis`` root discovery the standalone server lacks, so kubectl, helm and kopf work.

Binaries come from ``.ci/install-apiserver.sh`` into ``$FTJ_TOOLS/bin``
(default ``~/.cache/finetune-tools/bin``).

Usage::

    with KubeApiServer() as server:
        server.install_crd("crds/finetune.dev_finetunejobs.yaml")
        subprocess.run(["kubectl", "get", "ftj"], env=server.kubectl_env())
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.harness.discovery_proxy import DiscoveryProxy
from tests.harness.processes import ManagedProcess, ProcessExitedError, tail
from tests.harness.review_stub import ReviewStub

INSTALL_HINT = "run .ci/install-apiserver.sh (builds apiextensions-apiserver and fetches etcd)"
TEST_TOKEN = "ftj-test-token"  # any value works: the review stub authenticates every token
FIELD_MANAGER = "ftj-tests"
KEEP_HINT = "(set FTJ_KEEP_APISERVER_DIR=1 to keep the temp dir with all logs)"
CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

# Admission plugins that need core API objects (namespaces, webhooks, policies) nobody serves.
DISABLED_ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "MutatingAdmissionPolicy",
)


class BinariesMissingError(FileNotFoundError):
    """The etcd / apiextensions-apiserver binaries are not installed."""


class ApiServerError(RuntimeError):
    """The API server failed to start, or a request to it failed."""


def tools_bin_dir() -> Path:
    """Directory the ``.ci/install-*.sh`` scripts install binaries into."""
    tools = os.environ.get("FTJ_TOOLS") or str(Path.home() / ".cache" / "finetune-tools")
    return Path(tools) / "bin"


def find_binaries(bin_dir: Path | None = None) -> tuple[Path, Path]:
    """Return ``(etcd, apiextensions-apiserver)`` paths, or raise with the install hint."""
    bin_dir = bin_dir or tools_bin_dir()
    etcd, apiserver = bin_dir / "etcd", bin_dir / "apiextensions-apiserver"
    missing = [str(p) for p in (etcd, apiserver) if not os.access(p, os.X_OK)]
    if missing:
        raise BinariesMissingError(f"missing {', '.join(missing)}: {INSTALL_HINT}")
    return etcd, apiserver


def free_port() -> int:
    """A loopback port that was free a moment ago (the tiny race is acceptable in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KubeApiServer:
    """etcd + apiextensions-apiserver (+ review stub, discovery proxy), with a kubeconfig.

    Attributes, set by :meth:`start`:
        url: ``http://127.0.0.1:<port>``, the address in the kubeconfig (the discovery proxy;
            everything but root discovery reaches the real server unchanged).
        apiserver_url: ``https://127.0.0.1:<port>`` of apiextensions-apiserver itself.
        kubeconfig_path: kubeconfig (bearer token) for kubectl, helm and the python client.
        workdir: temp dir with ``etcd.log``, ``apiextensions-apiserver.log``, certs, etcd data.
            Removed by :meth:`stop` unless ``keep_workdir`` (env ``FTJ_KEEP_APISERVER_DIR``).
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        startup_timeout: float = 60.0,
        keep_workdir: bool = bool(os.environ.get("FTJ_KEEP_APISERVER_DIR")),
    ) -> None:
        self.etcd_bin, self.apiserver_bin = find_binaries(bin_dir)
        self.startup_timeout = startup_timeout
        self.keep_workdir = keep_workdir
        self.workdir = Path()
        self.url = self.apiserver_url = ""
        self.kubeconfig_path = Path()
        self._ssl = ssl.create_default_context()
        self._stub: ReviewStub | None = None
        self._proxy: DiscoveryProxy | None = None
        self._procs: list[ManagedProcess] = []
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> KubeApiServer:
        """Start everything and block until ``/readyz`` answers ok; clean up on any failure."""
        self.workdir = Path(tempfile.mkdtemp(prefix="ftj-apiserver-"))
        self._started = True
        atexit.register(self.stop)  # a safety net if the caller never reaches stop()
        try:
            self._stub = ReviewStub()
            self._start_apiserver(self._start_etcd())
            self._proxy = DiscoveryProxy(self.apiserver_url, self._ssl)
            self.url = self._proxy.url
            self.kubeconfig_path = _write_kubeconfig(
                self.workdir / "kubeconfig", self.url, token=TEST_TOKEN
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the proxy, server, etcd and stub; remove the temp dir. Safe to call twice."""
        atexit.unregister(self.stop)
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        for proc in reversed(self._procs):  # the server before etcd
            proc.stop()
        self._procs.clear()
        if self._stub is not None:
            self._stub.close()
            self._stub = None
        if self._started and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False

    def _start_etcd(self) -> str:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.etcd_bin),
                "--name",
                "ftj-test",
                "--data-dir",
                str(self.workdir / "etcd-data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"ftj-test={peer}",
                "--unsafe-no-fsync",  # test data is throwaway; fsync dominates write latency
                "--log-level",
                "warn",
            ],
        )
        self._wait_until(
            etcd, lambda: _http_ok(f"{client}/health", b'"health":"true"'), f"etcd {client}/health"
        )
        return client

    def _start_apiserver(self, etcd_url: str) -> None:
        assert self._stub is not None
        stub_kubeconfig = _write_kubeconfig(self.workdir / "stub.kubeconfig", self._stub.url)
        port = free_port()
        self.apiserver_url = f"https://127.0.0.1:{port}"
        server = self._spawn(
            "apiextensions-apiserver",
            [
                str(self.apiserver_bin),
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(port),
                "--cert-dir",
                str(self.workdir / "certs"),  # self-signed pair generated at start
                "--kubeconfig",
                str(stub_kubeconfig),
                "--authentication-kubeconfig",
                str(stub_kubeconfig),
                "--authorization-kubeconfig",
                str(stub_kubeconfig),
                "--authentication-skip-lookup",
                "--authentication-tolerate-lookup-failure",
                "--disable-admission-plugins",
                ",".join(DISABLED_ADMISSION_PLUGINS),
                # APF would watch FlowSchemas in the core API, which the stub does not serve.
                "--enable-priority-and-fairness=false",
            ],
        )
        unverified = ssl._create_unverified_context()  # the cert may not be written yet
        self._wait_until(
            server,
            lambda: _http_ok(f"{self.apiserver_url}/readyz", b"ok", unverified),
            f"{self.apiserver_url}/readyz",
        )
        # apiserver.crt holds the serving cert (SANs localhost, 127.0.0.1) followed by the
        # self-signed CA that issued it, so it doubles as our CA bundle from here on.
        self._ssl = ssl.create_default_context(cafile=str(self.workdir / "certs/apiserver.crt"))

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.workdir / f"{name}.log")
        self._procs.append(proc)
        return proc

    def _wait_until(self, proc: ManagedProcess, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                proc.check_alive()
            except ProcessExitedError as exc:
                raise ApiServerError(f"{exc}\n{KEEP_HINT}") from None
            if ready():
                return
            time.sleep(0.1)
        raise ApiServerError(
            f"timed out after {self.startup_timeout:.0f}s waiting for {what}; "
            f"last log lines ({proc.log_path}):\n{tail(proc.log_path)}\n"
            f"{KEEP_HINT}"
        )

    # -- clients ------------------------------------------------------------------------------

    def kubectl_env(self) -> dict[str, str]:
        """Environment for running ``kubectl``/``helm`` against this server.

        Sets KUBECONFIG, and points kubectl's discovery cache into the temp dir so runs never
        read a stale cache from (or write one to) ``~/.kube``.
        """
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig_path),
            "KUBECACHEDIR": str(self.workdir / "kube-cache"),
        }

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """One authenticated request straight to the server: ``(status, decoded JSON body)``."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.apiserver_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {TEST_TOKEN}",
                "Accept": "application/json",
                "Content-Type": content_type,
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    # -- CRDs ---------------------------------------------------------------------------------

    def install_crd(
        self, source: Path | str | Mapping[str, Any], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Server-side apply CRD(s), then wait until each is Established and served.

        ``source`` is a YAML file (one or more CRD documents) or one CRD as a dict. Applying
        is idempotent, so re-installing an edited CRD updates it. Returns the stored CRDs.
        """
        crds = [source] if isinstance(source, Mapping) else _load_crds(Path(source))
        installed = []
        for crd in crds:
            name = crd["metadata"]["name"]
            code, body = self.request(
                "PATCH",
                f"{CRD_API}/{name}?fieldManager={FIELD_MANAGER}&force=true",
                crd,
                content_type="application/apply-patch+yaml",
            )  # JSON is valid YAML
            if code not in (200, 201):
                raise ApiServerError(
                    f"applying CRD {name} failed ({code}): {body.get('message', body)}"
                )
            installed.append(self._wait_crd_served(crd, timeout))
        return installed

    def delete_crd(self, name: str, timeout: float = 30.0) -> None:
        """Delete a CRD (and with it all its objects) and wait until it is gone."""
        self.request("DELETE", f"{CRD_API}/{name}")
        deadline = time.monotonic() + timeout
        while self.request("GET", f"{CRD_API}/{name}")[0] != 404:
            if time.monotonic() > deadline:
                raise ApiServerError(f"CRD {name} still present after {timeout:.0f}s")
            time.sleep(0.1)

    def _wait_crd_served(self, crd: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Established alone is not enough: the resource's handler appears a beat later."""
        name, spec = crd["metadata"]["name"], crd["spec"]
        paths = [
            f"/apis/{spec['group']}/{v['name']}/{spec['names']['plural']}"
            for v in spec["versions"]
            if v.get("served", True)
        ]
        deadline = time.monotonic() + timeout
        while True:
            code, stored = self.request("GET", f"{CRD_API}/{name}")
            if (
                code == 200
                and _condition_true(stored, "Established")
                and all(self.request("GET", path)[0] == 200 for path in paths)
            ):
                return stored
            if time.monotonic() > deadline:
                conditions = _conditions(stored) if code == 200 else stored
                raise ApiServerError(
                    f"CRD {name} not established and served after "
                    f"{timeout:.0f}s; conditions: {json.dumps(conditions)}"
                )
            time.sleep(0.1)


def _http_ok(url: str, expect: bytes, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200 and expect in resp.read()
    except OSError:  # URLError, connection refused, TLS not up yet
        return False


def _write_kubeconfig(path: Path, server: str, token: str | None = None) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "ftj-test",
        "clusters": [{"name": "ftj-test", "cluster": {"server": server}}],
        "users": [{"name": "ftj-test", "user": {"token": token} if token else {}}],
        "contexts": [
            {
                "name": "ftj-test",
                "context": {"cluster": "ftj-test", "user": "ftj-test", "namespace": "default"},
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _load_crds(path: Path) -> list[dict[str, Any]]:
    crds = [
        doc
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    ]
    if not crds:
        raise ValueError(f"{path} contains no CustomResourceDefinition")
    return crds


def _condition_true(obj: Mapping[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in _conditions(obj))


def _conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``status.conditions``; a CRD read right after creation may have it (or status) null."""
    return list((obj.get("status") or {}).get("conditions") or [])

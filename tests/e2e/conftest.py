"""Fixtures of the e2e tier: one fake-but-honest cluster per session, an operator per test.

``kube_env`` = real apiextensions-apiserver + etcd (FineTuneJobs, CEL, printer columns)
+ :class:`KubeGateway` (one URL; core/batch emulated) + :class:`JobSimulator` (pods run as
local processes) + an S3 server over HTTP + the real ``kubectl``. ``operator`` starts
``python -m finetune_operator`` against it. Each test gets its own namespace (``ns``), so
tests sharing the session cannot see each other's objects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.harness.apiserver import KubeApiServer
from tests.harness.cluster import JobSimulator
from tests.harness.kube_api import KubeGateway, Upstream
from tests.harness.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = Path(os.environ.get("FTJ_E2E_CRD") or REPO / "crds" / "finetune.dev_finetunejobs.yaml")
FAKE_TRAINER = REPO / "tests" / "harness" / "fake_trainer.py"
FAKE_TRAINER_COMMAND = f"{sys.executable} {FAKE_TRAINER}"
T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``details()`` if not."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    extra = f"\n{details()}" if details else ""
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){extra}"
    )


@dataclass
class KubeEnv:
    """Everything a test needs to talk to the fake cluster."""

    apiserver: KubeApiServer
    gateway: KubeGateway
    simulator: JobSimulator
    s3: Any
    kubectl_bin: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.gateway.kubeconfig_path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against the gateway; raise with its stderr when ``check``."""
        result = subprocess.run(
            [str(self.kubectl_bin), *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr}{result.stdout}"
            )
        return result

    def kubectl_json(self, *args: str) -> Any:
        """``kubectl ... -o json``, decoded."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | str, namespace: str) -> str:
        """``kubectl apply -f -`` of a dict or YAML text; returns kubectl's output."""
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=text).stdout

    def create_namespace(self, name: str) -> str:
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            namespace="default",
        )
        return name


def _install_crd(server: KubeApiServer, path: Path) -> None:
    # install_crd can read a CRD before the server has filled in status.conditions (null)
    # and raise TypeError; retrying is harmless because applying is idempotent.
    for attempt in range(20):
        try:
            server.install_crd(path)
            return
        except TypeError:
            if attempt == 19:
                raise
            time.sleep(0.2)


def _s3_server() -> Any:
    try:
        from tests.harness.s3 import S3Server
    except ImportError:  # until tests/harness/s3.py lands: moto's server directly
        from moto.server import ThreadedMotoServer

        class S3Server:  # type: ignore[no-redef]
            def __init__(self) -> None:
                self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)

            def start(self) -> S3Server:
                self._server.start()
                host, port = self._server.get_host_and_port()
                self.endpoint_url = f"http://{host}:{port}"
                return self

            def stop(self) -> None:
                self._server.stop()

            def client(self) -> Any:
                import boto3

                return boto3.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name="us-east-1",
                    aws_access_key_id="test",
                    aws_secret_access_key="test",
                )

            def create_bucket(self, name: str) -> str:
                self.client().create_bucket(Bucket=name)
                return name

    return S3Server().start()


@pytest.fixture(scope="session")
def kube_env(kube_apiserver: KubeApiServer, kube_tools_bin: Path) -> Iterator[KubeEnv]:
    """The session's fake cluster (see module docstring)."""
    _install_crd(kube_apiserver, CRD_PATH)
    workdir = Path(tempfile.mkdtemp(prefix="ftj-e2e-"))
    gateway = KubeGateway(
        Upstream.from_kubeconfig(kube_apiserver.kubeconfig_path), workdir / "gateway"
    ).start()
    s3 = _s3_server()
    simulator = JobSimulator(
        gateway,
        workdir / "pods",
        extra_env={
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "MPLBACKEND": "Agg",
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            # Fallback credentials (moto accepts any); a pod's secretKeyRef env wins.
            "AWS_ACCESS_KEY_ID": "FTJTESTACCESSKEY0000",
            "AWS_SECRET_ACCESS_KEY": "ftj-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": os.pathsep.join(
                [
                    str(REPO / "operator"),
                    str(REPO / "trainer-image"),
                    os.environ.get("PYTHONPATH", ""),
                ]
            ),
        },
    ).start()
    env = {
        **os.environ,
        "KUBECONFIG": str(gateway.kubeconfig_path),
        "KUBECACHEDIR": str(workdir / "kube-cache"),
    }
    kube = KubeEnv(kube_apiserver, gateway, simulator, s3, kube_tools_bin / "kubectl", workdir, env)
    try:
        yield kube
    finally:
        simulator.stop()
        gateway.stop()
        s3.stop()


@pytest.fixture
def ns(kube_env: KubeEnv, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for one test."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return kube_env.create_namespace(f"{base}-{uuid.uuid4().hex[:4]}")


@pytest.fixture
def kubectl(kube_env: KubeEnv) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl(*args)`` running the real kubectl against the gateway."""
    return kube_env.kubectl


@pytest.fixture
def operator_env() -> dict[str, str]:
    """Extra environment for the operator; override in a test module to change it."""
    return {"FTJ_TRAINER_COMMAND": FAKE_TRAINER_COMMAND}


@pytest.fixture
def operator(
    kube_env: KubeEnv, operator_env: dict[str, str], ns: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """``python -m finetune_operator`` watching the test's namespace, stopped afterwards."""
    if importlib.util.find_spec("finetune_operator.__main__") is None:
        pytest.skip("the operator's entry point finetune_operator/__main__.py does not exist yet")
    env = {"FTJ_WATCH_NAMESPACES": ns, "FTJ_S3_ENDPOINT": kube_env.s3.endpoint_url, **operator_env}
    proc = OperatorProcess(kube_env.kubeconfig, tmp_path / "operator", env=env).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
        print(f"--- operator log (last 3000 chars) ---\n{proc.logs()[-3000:]}")

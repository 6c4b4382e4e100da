"""Fixtures of the image tier: both images, built by ``.ci/build-images.sh``, run as pods.

``image_cluster`` is the e2e tier's cluster (real apiextensions-apiserver + etcd for the CRDs,
the emulated core API, an S3 server over HTTP, the real kubectl) whose kubelet runs every
container from the image its pod spec names (:mod:`tests.harness.container_runtime`), and whose
API also listens on HTTPS, so a pod's in-cluster client connects with its ServiceAccount
token and CA. ``chart_operator`` installs the operator from the Helm chart (``helm template``
with ``values-images.yaml``, applied with kubectl, as ``helm install`` would), so the chart's
Deployment, ServiceAccount, RBAC and env are what runs.

The tier needs buildah, bubblewrap and setpriv, root, and the two images; without them it
skips here and fails in CI (``CI`` set), like the other tiers' tools.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import _missing
from tests.e2e.conftest import REPO, KubeEnv, _install_crd, _s3_server, wait_for
from tests.harness.apiserver import KubeApiServer
from tests.harness.cluster import JobSimulator
from tests.harness.container_runtime import ContainerRuntime, ImageNotPresent, missing_tools
from tests.harness.kube_api import KubeGateway, Upstream

CHART = REPO / "charts" / "finetune-operator"
VALUES = Path(__file__).with_name("values-images.yaml")
# The kind tier's values and namespace: what runs there on a GPU node runs here from the same
# images on CPU, so its Docker-free parts (values, Role mode, the job it applies) are exercised.
KIND_VALUES = REPO / "tests" / "kind" / "values-kind.yaml"
KIND_SCRIPT = REPO / "tests" / "kind" / "run-kind-e2e.sh"
JOB_NAMESPACE = str(yaml.safe_load(KIND_VALUES.read_text())["watchNamespaces"][0])
OPERATOR_NAMESPACE = "finetune-system"
S3_SECRET = "s3-credentials"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "FTJIMAGETIERKEY00000", "AWS_SECRET_ACCESS_KEY": "ftj-image-tier"}


def project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.M)
    assert match, "no version in pyproject.toml"
    return match.group(1)


OPERATOR_IMAGE = f"ghcr.io/finetune-dev/finetune-operator:{project_version()}"
TRAINER_IMAGE = f"ghcr.io/finetune-dev/finetune-trainer:{project_version()}"


@pytest.fixture(scope="session")
def runtime() -> Iterator[ContainerRuntime]:
    """The container runtime, once both images are in local storage."""
    missing = missing_tools()
    if missing:
        _missing(
            f"the image tier needs {', '.join(missing)} "
            "(apt-get install buildah bubblewrap mmdebstrap util-linux)"
        )
    rt = ContainerRuntime()
    try:
        for image in (OPERATOR_IMAGE, TRAINER_IMAGE):
            try:
                rt.image_config(image)
            except ImageNotPresent:
                _missing(f"image {image} is not built: run bash .ci/build-images.sh")
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="session")
def image_cluster(
    kube_apiserver: KubeApiServer, kube_tools_bin: Path, runtime: ContainerRuntime
) -> Iterator[KubeEnv]:
    """The e2e cluster whose pods run from the built images (see the module docstring)."""
    for crd in sorted((CHART / "crds").glob("*.yaml")):  # what `helm install` applies first
        _install_crd(kube_apiserver, crd)
    workdir = Path(tempfile.mkdtemp(prefix="ftj-images-"))
    gateway = KubeGateway(
        Upstream.from_kubeconfig(kube_apiserver.kubeconfig_path), workdir / "gateway", tls=True
    ).start()
    s3 = _s3_server()
    simulator = JobSimulator(gateway, workdir / "pods", runtime=runtime).start()
    env = {
        **os.environ,
        "KUBECONFIG": str(gateway.kubeconfig_path),
        "KUBECACHEDIR": str(workdir / "kube-cache"),
    }
    cluster = KubeEnv(
        kube_apiserver, gateway, simulator, s3, kube_tools_bin / "kubectl", workdir, env
    )
    try:
        yield cluster
    finally:
        simulator.stop()
        gateway.stop()
        s3.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def render_chart(helm: Path, *sets: str) -> str:
    """``helm template`` of the chart with the image tier's values (what helm install applies)."""
    args = [str(helm), "template", "ftj", str(CHART), "--namespace", OPERATOR_NAMESPACE]
    args += ["-f", str(KIND_VALUES), "-f", str(VALUES)]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def chart_operator(image_cluster: KubeEnv, kube_tools_bin: Path) -> Iterator[str]:
    """The operator, installed from the chart with the kind tier's values (namespaced mode: a
    Role in the job namespace) and running from its image; yields its pod."""
    cluster = image_cluster
    health_port = _free_port()
    rendered = render_chart(
        kube_tools_bin / "helm",
        f"s3.endpoint={cluster.s3.endpoint_url}",
        f"health.port={health_port}",
        f"image.tag={project_version()}",
    )
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert "Deployment" in kinds and "ServiceAccount" in kinds, kinds
    cluster.create_namespace(OPERATOR_NAMESPACE)
    cluster.create_namespace(JOB_NAMESPACE)  # its Role lives there (watchNamespaces)
    # Every namespaced object of the chart names its namespace (the Role and the peering live
    # in the watched namespace), so kubectl applies the stream as helm would, without -n.
    cluster.kubectl("apply", "-f", "-", input=rendered)

    def operator_pod() -> str | None:
        for pod in cluster.gateway.objects("pods", OPERATOR_NAMESPACE):
            if (pod.get("status") or {}).get("phase") == "Running":
                return str(pod["metadata"]["name"])
        return None

    def pods_and_logs() -> str:
        lines = []
        for pod in cluster.gateway.objects("pods", OPERATOR_NAMESPACE):
            name = pod["metadata"]["name"]
            lines.append(f"{name}: {pod.get('status')}")
            lines.append(cluster.simulator.pod_log(name, OPERATOR_NAMESPACE)[-3000:])
        return "\n".join(lines)

    name = wait_for(
        operator_pod, timeout=60, what="the operator pod running", details=pods_and_logs
    )
    # The chart's readiness probe, as the kubelet runs it: kopf answers once it has logged in
    # with the pod's ServiceAccount and started its watches.
    wait_for(
        lambda: _http_ok(f"http://127.0.0.1:{health_port}/healthz"),
        timeout=90,
        what="the operator's readiness probe",
        details=pods_and_logs,
    )
    yield name
    print(
        f"--- operator pod log ---\n{cluster.simulator.pod_log(name, OPERATOR_NAMESPACE)[-4000:]}"
    )

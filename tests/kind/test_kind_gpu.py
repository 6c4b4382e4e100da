"""The kind tier: tests/kind/run-kind-e2e.sh on a host with Docker, kind and a GPU, and
everything of it that can be checked without Docker.

``test_kind_end_to_end`` runs the script (a kind cluster with a GPU worker, the chart, MinIO,
the quickstart on one GPU); without the prerequisites it is skipped with what is missing, or
fails when FTJ_KIND=1 asks for the tier. The other tests always run: the kind config, the
chart values rendered by helm and turned into operator settings, the FineTuneJob the script
applies, the MinIO manifests, the script's upload and verification steps (against a loopback
S3 server) and its prerequisite checks (with stub tools on PATH).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from finetune_api import load_manifest, parse_manifest
from finetune_operator.render import render_objects
from finetune_operator.settings import OperatorSettings

from tests.harness.pod_security import violations
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.kind

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "kind"
SCRIPT = HERE / "run-kind-e2e.sh"
KIND_CONFIG = HERE / "kind-config.yaml"
VALUES = HERE / "values-kind.yaml"
S3_MANIFESTS = HERE / "s3.yaml"
CHART = REPO / "charts" / "finetune-operator"
QUICKSTART = REPO / "examples" / "quickstart"
DOC = REPO / "docs" / "kind-gpu.md"

K8S_VERSION = "1.37"  # newest schemas kubernetes-validate ships (as tests/unit/operator)
GPU_MOUNT = "/var/run/nvidia-container-devices/all"
OPERATOR_REPOSITORY = "ghcr.io/finetune-dev/finetune-operator"
TRAINER_REPOSITORY = "ghcr.io/finetune-dev/finetune-trainer"
JOB_NAMESPACE = "ftj-e2e"


def script_variable(name: str) -> str:
    """A constant the script sets at the top (``NAME=value``)."""
    match = re.search(rf"^{name}=(\S+)", SCRIPT.read_text(), re.MULTILINE)
    assert match, f"{name}= not found in {SCRIPT}"
    return match.group(1)


def project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version = "([^"]+)"', project, re.MULTILINE)
    assert match
    return match.group(1)


def run_script(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=base if env is None else {**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def missing_prerequisites() -> list[str]:
    """What the script's --check finds missing on this host ([] when the tier can run)."""
    done = run_script("--check")
    if done.returncode == 0:
        return []
    lines = [line for line in done.stderr.splitlines() if line.startswith("missing: ")]
    assert lines, done.stderr
    return lines[-1].removeprefix("missing: ").split(", ")


# -- The tier itself -------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.timeout(3600)
def test_kind_end_to_end(tmp_path: Path) -> None:
    missing = missing_prerequisites()
    if missing:
        message = (
            "kind tier needs: docker daemon, kind, NVIDIA container toolkit "
            f"(missing: {', '.join(missing)}); docs/kind-gpu.md"
        )
        if os.environ.get("FTJ_KIND") == "1":
            pytest.fail(f"FTJ_KIND=1 but {message}", pytrace=False)
        pytest.skip(message)
    out = tmp_path / "kind-e2e"
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable, "FTJ_KIND_OUT": str(out)},
        cwd=REPO,
        timeout=3500,
    )
    assert done.returncode == 0, f"run-kind-e2e.sh failed; logs and diagnostics in {out}"
    assert (out / "artifacts" / "MANIFEST.json").is_file()


# -- The kind cluster config -----------------------------------------------------------------


def test_kind_config_has_one_gpu_worker() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles == ["control-plane", "worker"]
    control_plane, worker = config["nodes"]
    # The GPUs go to the worker only: the toolkit injects them through this mount.
    assert {"hostPath": "/dev/null", "containerPath": GPU_MOUNT} in worker["extraMounts"]
    assert GPU_MOUNT not in str(control_plane)
    # The label the device plugin's chart selects nodes by, and the script finds them by.
    assert worker["labels"] == {"nvidia.com/gpu.present": "true"}
    key, value = script_variable("GPU_NODE_LABEL").split("=", 1)
    assert worker["labels"][key] == value


# -- The chart with values-kind.yaml ---------------------------------------------------------


@pytest.fixture(scope="module")
def helm(kube_tools_bin: Path) -> Path:
    return kube_tools_bin / "helm"


def helm_template(helm: Path, *extra: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(helm), "template", "finetune-operator", str(CHART), "--namespace"]
        + [script_variable("OPERATOR_NS"), "-f", str(VALUES), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: Path) -> list[dict[str, Any]]:
    """The chart as the script installs it: values-kind.yaml, tags = pyproject's version."""
    version = project_version()
    return helm_template(
        helm, "--set-string", f"image.tag={version}", "--set-string", f"trainer.image.tag={version}"
    )


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_values_render_the_loaded_images_and_the_in_cluster_s3(
    rendered: list[dict[str, Any]],
) -> None:
    version = project_version()
    container = operator_container(rendered)
    env = plain_env(container)
    images = run_script("--print-images").stdout.split()
    assert images == [f"{OPERATOR_REPOSITORY}:{version}", f"{TRAINER_REPOSITORY}:{version}"]
    assert container["image"] == images[0]
    assert container["imagePullPolicy"] == "Never"
    assert env["FTJ_TRAINER_IMAGE"] == images[1]
    assert env["FTJ_TRAINER_IMAGE_PULL_POLICY"] == "Never"
    assert env["FTJ_GPU_RESOURCE_NAME"] == "nvidia.com/gpu"
    assert env["FTJ_S3_ENDPOINT"] == "http://minio.minio.svc:9000"
    assert env["FTJ_WATCH_NAMESPACES"] == JOB_NAMESPACE == script_variable("JOB_NS")
    assert env["FTJ_PROGRESS_POLL_SECONDS"] == "2"
    # Namespaced mode: a Role in the job namespace, nothing cluster-wide.
    kinds = {(o["kind"], o["metadata"].get("namespace")) for o in rendered}
    assert ("Role", JOB_NAMESPACE) in kinds
    assert not {k for k, _ in kinds} & {"ClusterRole", "ClusterRoleBinding"}


def test_without_tags_the_chart_gives_the_same_images(
    helm: Path, rendered: list[dict[str, Any]]
) -> None:
    # The chart's appVersion equals pyproject's version, so the tags the script sets are
    # the chart's defaults too: a plain `helm install -f values-kind.yaml` also works.
    assert operator_container(helm_template(helm)) == operator_container(rendered)


def test_values_turn_into_operator_settings_that_give_the_job_one_gpu(
    rendered: list[dict[str, Any]],
) -> None:
    settings = OperatorSettings.from_env(plain_env(operator_container(rendered)))
    data = yaml.safe_load(run_script("--print-job").stdout)
    data["metadata"].update(namespace=JOB_NAMESPACE, uid="6f1c1c5e-0000-4000-8000-000000000001")
    objects = render_objects(parse_manifest(data), settings)
    job = objects.job
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{TRAINER_REPOSITORY}:{project_version()}"
    assert container["imagePullPolicy"] == "Never"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "1"}
    # The trainer's job.json gets the chart's S3 endpoint (the manifest names none).
    (config_map,) = [o for o in objects.in_creation_order() if o["kind"] == "ConfigMap"]
    trainer_view = json.loads(next(iter(config_map["data"].values())))
    s3 = trainer_view["spec"]["storage"]["s3"]
    assert s3["endpoint"] == "http://minio.minio.svc:9000"
    assert s3["credentialsSecret"]["name"] == script_variable("CREDENTIALS_SECRET")
    # What the API server of the kind cluster will take: strict schemas, and the restricted
    # Pod Security Standard the script enforces on the job namespace.
    for obj in objects.in_creation_order():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert violations(job) == []


# -- The FineTuneJob the script applies ------------------------------------------------------


def test_the_applied_finetunejob_is_valid_and_asks_for_one_gpu(tmp_path: Path) -> None:
    done = run_script("--print-job")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "finetunejob.yaml"
    path.write_text(done.stdout)
    check = subprocess.run(
        [sys.executable, "-m", "finetune_cli.main", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    job = load_manifest(path)
    assert job.metadata.name == script_variable("JOB_NAME")
    assert job.spec.resources.gpus == 1
    # Derived from the quickstart: the same training, only the locations change.
    quickstart = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    applied = yaml.safe_load(done.stdout)
    assert applied["spec"]["training"] == quickstart["spec"]["training"]
    assert applied["spec"]["method"] == quickstart["spec"]["method"]
    assert applied["spec"]["model"]["uri"] == "s3://models/tiny-qwen3"
    assert [d["uri"] for d in applied["spec"]["datasets"]] == ["s3://datasets/identity.json"]
    assert applied["spec"]["output"]["uri"] == "s3://artifacts/quickstart-gpu"
    assert "endpoint" not in applied["spec"]["storage"]["s3"]


# -- MinIO -----------------------------------------------------------------------------------


def test_s3_manifests_are_strictly_valid_and_restricted() -> None:
    objects = [o for o in yaml.safe_load_all(S3_MANIFESTS.read_text()) if o]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    by_kind = {o["kind"]: o for o in objects}
    assert set(by_kind) == {"Namespace", "Secret", "Deployment", "Service"}
    assert violations(by_kind["Deployment"]) == []
    (container,) = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
    image = container["image"]
    assert re.fullmatch(r"minio/minio:RELEASE\.[0-9TZ-]+", image), image
    # The Service is what values-kind.yaml's s3.endpoint names.
    values = yaml.safe_load(VALUES.read_text())
    service = by_kind["Service"]
    host_port = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:"
    host_port += str(service["spec"]["ports"][0]["port"])
    assert values["s3"]["endpoint"] == f"http://{host_port}"
    assert service["metadata"]["namespace"] == script_variable("S3_NS")
    assert set(by_kind["Secret"]["stringData"]) == {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}


# -- The script's own steps, without Docker --------------------------------------------------


def test_the_gpu_smoke_pod_is_valid_and_restricted() -> None:
    # The pod the script runs before the operator (the job namespace enforces "restricted").
    match = re.search(r"^gpu_smoke_test\(\).*?<<EOF\n(.*?)^EOF$", SCRIPT.read_text(), re.M | re.S)
    assert match
    trainer_image = f"{TRAINER_REPOSITORY}:{project_version()}"
    pod = yaml.safe_load(match.group(1).replace("$TRAINER_IMAGE", trainer_image))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert violations(pod) == []
    (container,) = pod["spec"]["containers"]
    assert container["image"] == trainer_image
    assert container["imagePullPolicy"] == "Never"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    compile(container["args"][0], "gpu-smoke", "exec")  # the folded YAML is valid Python


def test_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_upload_inputs_fills_the_buckets_and_clears_an_old_output() -> None:
    with S3Server() as s3:
        client = s3.client()
        s3.create_bucket("artifacts")
        client.put_object(Bucket="artifacts", Key="quickstart-gpu/MANIFEST.json", Body=b"{}")
        for _ in range(2):  # a second run (a kept cluster) finds the buckets there
            done = run_script("--upload-inputs", s3.endpoint_url, env=s3.env())
            assert done.returncode == 0, done.stderr
        model = QUICKSTART / "tiny-qwen3"
        listed = client.list_objects_v2(Bucket="models")["Contents"]
        assert sorted(o["Key"] for o in listed) == sorted(
            f"tiny-qwen3/{p.name}" for p in model.iterdir() if p.is_file()
        )
        sizes = {o["Key"]: o["Size"] for o in listed}
        assert sizes["tiny-qwen3/model.safetensors"] == (model / "model.safetensors").stat().st_size
        data = client.get_object(Bucket="datasets", Key="identity.json")["Body"].read()
        assert data == (QUICKSTART / "identity.json").read_bytes()
        # The old output is gone (other tests' objects may share moto's process-wide store).
        old = client.list_objects_v2(Bucket="artifacts", Prefix="quickstart-gpu/")
        assert "Contents" not in old


def fake_artifacts(folder: Path, **metrics: Any) -> Path:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "loss.png").write_bytes(b"\x89PNG")
    (folder / "MANIFEST.json").write_text("{}")
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_verify_artifacts_wants_every_step_on_a_gpu(tmp_path: Path) -> None:
    good = fake_artifacts(tmp_path / "good", steps=150, gpuMemoryGib=0.2, trainLoss=0.5)
    done = run_script("--verify-artifacts", str(good))
    assert done.returncode == 0, done.stderr
    assert "verified: 150 steps on a GPU" in done.stderr

    cpu = fake_artifacts(tmp_path / "cpu", steps=150, gpuMemoryGib=None)
    done = run_script("--verify-artifacts", str(cpu))
    assert done.returncode != 0
    assert "did not use a GPU" in done.stderr

    short = fake_artifacts(tmp_path / "short", steps=20, gpuMemoryGib=0.2)
    (short / "loss.png").unlink()
    done = run_script("--verify-artifacts", str(short))
    assert done.returncode != 0
    assert "loss.png missing" in done.stderr


# -- Prerequisites, with stub tools on PATH ---------------------------------------------------

BASICS = ("bash", "dirname", "awk", "grep", "sed", "tail", "timeout", "cat", "printf")


def stub_path(tmp_path: Path, stubs: dict[str, str]) -> dict[str, str]:
    """An environment whose PATH holds only the shell basics, python and ``stubs``
    (name -> shell body); no finetune-tools folder either."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in BASICS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": str(bin_dir),
        "FTJ_TOOLS": str(tmp_path / "no-tools"),
        "FTJ_KIND_OUT": str(tmp_path / "out"),
        "NVIDIA_CTK_CONFIG": str(tmp_path / "nvidia-container-runtime.toml"),
    }


ALL_STUBS = {
    "docker": 'test "$1" = info && echo nvidia',
    "kind": "exit 0",
    "kubectl": "exit 0",
    "helm": "exit 0",
    "nvidia-smi": "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'",
    "nvidia-ctk": "exit 0",
}


def test_without_docker_the_script_says_so_and_stops(tmp_path: Path) -> None:
    env = stub_path(tmp_path, {})
    for args in (("--check",), ()):
        done = run_script(*args, env=env)
        assert done.returncode != 0
        assert "docker: no docker on PATH" in done.stderr
        last = [line for line in done.stderr.splitlines() if line.startswith("missing: ")][-1]
        assert last.split(": ", 1)[1].split(", ")[:2] == ["docker", "kind"]
    assert not (tmp_path / "out").exists()  # stopped before creating anything


def test_check_passes_when_everything_is_there(tmp_path: Path) -> None:
    env = stub_path(tmp_path, ALL_STUBS)
    Path(env["NVIDIA_CTK_CONFIG"]).write_text(
        "[nvidia-container-runtime]\naccept-nvidia-visible-devices-as-volume-mounts = true\n"
    )
    done = run_script("--check", env=env)
    assert done.returncode == 0, done.stderr
    assert "all prerequisites present" in done.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"docker": "echo 'Cannot connect to the Docker daemon' >&2; exit 1"}, "docker daemon"),
        ({"docker": 'test "$1" = info && echo runc'}, "nvidia as docker's default runtime"),
        ({"nvidia-smi": "exit 0"}, "a GPU"),
        ({}, "accept-nvidia-visible-devices-as-volume-mounts"),
    ],
    ids=["no-daemon", "runc-default", "no-gpu", "no-volume-mounts"],
)
def test_check_names_each_host_setup_step(
    tmp_path: Path, change: dict[str, str], named: str
) -> None:
    env = stub_path(tmp_path, {**ALL_STUBS, **change})
    if change:  # the volume-mount case leaves the toolkit config out
        Path(env["NVIDIA_CTK_CONFIG"]).write_text(
            "accept-nvidia-visible-devices-as-volume-mounts = true\n"
        )
    done = run_script("--check", env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"missing: {named}"


# -- The whole sequence, with fake tools (tests/kind/fake_tools.py) --------------------------

FAKES = ("docker", "buildah", "kind", "kubectl", "helm", "nvidia-smi", "nvidia-ctk", "ftj")


def fake_host(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment where every tool the script runs is a fake_tools.py stand-in."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for tool in FAKES:
        wrapper = bin_dir / tool
        wrapper.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_tools.py"}" {tool} "$@"\n'
        )
        wrapper.chmod(0o755)
    ctk_config = tmp_path / "nvidia-container-runtime.toml"
    ctk_config.write_text("accept-nvidia-visible-devices-as-volume-mounts = true\n")
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "calls.jsonl"),
        "FTJ_KIND_OUT": str(tmp_path / "out"),
        "FTJ_CLI": str(bin_dir / "ftj"),
        "FTJ_TOOLS": str(tmp_path / "no-tools"),
        "NVIDIA_CTK_CONFIG": str(ctk_config),
        # The user's own settings of the script stay out of the test.
        **dict.fromkeys(
            ("KEEP_CLUSTER", "KIND_CLUSTER_NAME", "KIND_NODE_IMAGE", "FTJ_REBUILD", "MINIO_IMAGE"),
            "",
        ),
        "DEVICE_PLUGIN_VERSION": "",
        **extra,
    }


def calls(env: dict[str, str]) -> list[list[str]]:
    lines = Path(env["FAKE_LOG"]).read_text().splitlines()
    return [json.loads(line) for line in lines]


def position(log: list[list[str]], *prefix: str) -> int:
    """Index of the first call starting with ``prefix`` (words may be ``...`` wildcards)."""
    for index, call in enumerate(log):
        if len(call) >= len(prefix) and all(
            want in ("...", got) for want, got in zip(prefix, call, strict=False)
        ):
            return index
    raise AssertionError(f"no call {prefix} in:\n" + "\n".join(map(" ".join, log)))


def test_the_whole_run_in_order_with_fake_tools(tmp_path: Path) -> None:
    env = fake_host(tmp_path)
    done = run_script(env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "verified: 150 steps on a GPU" in done.stderr
    out = Path(env["FTJ_KIND_OUT"])
    version = project_version()
    operator_image = f"{OPERATOR_REPOSITORY}:{version}"
    trainer_image = f"{TRAINER_REPOSITORY}:{version}"
    log = calls(env)
    order = [
        position(
            log, "kind", "create", "cluster", "--name", "ftj-gpu", "--config", str(KIND_CONFIG)
        ),
        position(log, "docker", "exec", "ftj-gpu-worker", "nvidia-smi", "-L"),
        position(log, "docker", "exec", "ftj-gpu-worker", "bash", "-c"),
        position(log, "helm", "upgrade", "--install", "nvidia-device-plugin"),
        position(log, "kind", "load", "docker-image", operator_image, "--name", "ftj-gpu"),
        position(log, "kind", "load", "docker-image", trainer_image, "--name", "ftj-gpu"),
        position(log, "kubectl", "-n", JOB_NAMESPACE, "apply", "-f", "-"),  # the smoke pod
        position(log, "kubectl", "apply", "-f", str(S3_MANIFESTS)),
        position(log, "kubectl", "-n", JOB_NAMESPACE, "create", "secret", "generic"),
        position(log, "helm", "upgrade", "--install", "finetune-operator", str(CHART)),
        position(log, "ftj", "validate", str(out / "finetunejob.yaml")),
        position(log, "kubectl", "-n", JOB_NAMESPACE, "apply", "-f", str(out / "finetunejob.yaml")),
        position(log, "ftj", "artifacts", "quickstart-gpu", "-n", JOB_NAMESPACE, "--download"),
        position(log, "kind", "delete", "cluster", "--name", "ftj-gpu"),
    ]
    assert order == sorted(order)
    create = log[order[0]]
    assert create[create.index("--kubeconfig") + 1] == str(out / "kubeconfig")
    node_setup = log[order[2]][-1]
    assert "nvidia-ctk runtime configure --runtime=containerd" in node_setup
    assert "--set-as-default" in node_setup
    plugin = log[order[3]]
    assert plugin[plugin.index("--version") + 1] == "0.17.1"
    smoke = log[order[6]][-1]
    assert "name: gpu-smoke" in smoke and trainer_image in smoke
    secret = log[order[8]]
    assert "--from-literal=AWS_ACCESS_KEY_ID=ftj-kind" in secret
    install = log[order[9]]
    assert install[install.index("-f") + 1] == str(VALUES)
    assert f"image.tag={version}" in install and f"trainer.image.tag={version}" in install
    artifacts = log[order[12]]
    assert artifacts[artifacts.index("--s3-endpoint") + 1].startswith("http://127.0.0.1:")
    # What the trainer would read was in S3 when the job ran.
    (uploaded,) = [call[1:] for call in log if call[0] == "s3-contents"]
    assert "models/tiny-qwen3/model.safetensors" in uploaded
    assert "datasets/identity.json" in uploaded
    assert not any(call[:3] == ["kubectl", "-n", "finetune-system"] and "restart" in call
                   for call in log)  # fmt: skip
    assert not (out / "diagnostics").exists()


@pytest.mark.parametrize("keep", ["1", ""], ids=["keep-cluster", "delete-cluster"])
def test_a_failed_job_leaves_diagnostics(tmp_path: Path, keep: str) -> None:
    env = fake_host(
        tmp_path, FAKE_PHASE="Failed", FAKE_EXISTING_CLUSTER="ftj-gpu", KEEP_CLUSTER=keep
    )
    done = run_script(env=env, timeout=300)
    assert done.returncode == 1
    assert "FineTuneJob quickstart-gpu failed" in done.stderr
    log = calls(env)
    # An existing cluster is reused: no creation, the operator restarted onto the images.
    assert not any(call[:3] == ["kind", "create", "cluster"] for call in log)
    position(log, "kind", "export", "kubeconfig", "--name", "ftj-gpu")
    position(log, "kubectl", "-n", "finetune-system", "rollout", "restart")
    diagnostics = Path(env["FTJ_KIND_OUT"]) / "diagnostics"
    for name in ("operator.log", "trainer.log", "ftj-describe.txt", "events.txt"):
        assert (diagnostics / name).is_file(), name
    deleted = any(call[:3] == ["kind", "delete", "cluster"] for call in log)
    assert deleted == (keep != "1")
    assert ("KEEP_CLUSTER=1: cluster ftj-gpu left running" in done.stderr) == (keep == "1")


# -- The docs --------------------------------------------------------------------------------


def test_docs_describe_the_tier_and_are_linked() -> None:
    text = DOC.read_text()
    assert "bash tests/kind/run-kind-e2e.sh" in text
    for setting in ("nvidia-ctk runtime configure", "accept-nvidia-visible-devices-as-volume"):
        assert setting in text
    for path in re.findall(r"`((?:tests|docs|charts|examples|\.ci)/[\w./-]+)`", text):
        assert (REPO / path).exists() or path == ".ci/build-images.sh", path
    assert "(kind-gpu.md)" in (REPO / "docs" / "cluster-quickstart.md").read_text()

"""Rendering: objects are valid Kubernetes (strict schemas) and carry the policies we rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from finetune_api import parse_manifest
from finetune_operator import naming
from finetune_operator.render import render_objects
from finetune_operator.settings import OperatorSettings

from .fixtures import UID, ftj, manifest

pytestmark = pytest.mark.unit

K8S_VERSION = "1.37"  # newest schemas kubernetes-validate ships; strict = unknown fields refused
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SETTINGS = OperatorSettings()
# examples/platform-pod-overrides.yaml adds IPC_LOCK, as a cluster whose chart allows it would.
EXAMPLE_SETTINGS = OperatorSettings(allowed_capabilities=("IPC_LOCK",))

SPECS: dict[str, dict[str, Any]] = {
    "quickstart-cpu": manifest(
        "quickstart",
        model={"uri": "quickstart/tiny-qwen3"},
        datasets=[{"uri": "quickstart/identity.json", "format": "alpaca"}],
        output={"uri": "../out/quickstart"},
        training={"maxSteps": 150},
        resources={"gpus": 0},
    ),
    "one-gpu-secret": manifest(
        "one-gpu",
        storage={
            "s3": {
                "endpoint": "http://minio.minio:9000",
                "pathStyle": True,
                "credentialsSecret": {
                    "name": "s3-creds",
                    "accessKeyIdKey": "id",
                    "secretAccessKeyKey": "key",
                },
            }
        },
        resources={"gpus": 1, "cpu": 8, "memory": "64Gi", "modelCacheClaim": "model-cache"},
        activeDeadlineSeconds=3600,
    ),
    "qlora": manifest(
        "qlora",
        method={"type": "qlora", "quantization": {"bits": 4}},
        storage={"s3": {"credentialsSecret": {"name": "s3-credentials"}}},
        resources={
            "gpus": 1,
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
            ],
        },
    ),
    "eight-gpus-queue": manifest(
        "eight",
        resources={"gpus": 8, "cpu": 64, "memory": "512Gi", "priorityClassName": "ml-training"},
        queueName="gpu-queue",
        activeDeadlineSeconds=86400,
    ),
    "two-nodes-affinity": manifest(
        "two-nodes",
        resources={
            "gpus": 8,
            "nodes": 2,
            "memory": "1000Gi",
            "nodeSelector": {"gpu.nvidia.com/class": "H100"},
            "affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "labelSelector": {"matchLabels": {"finetune.dev/job": "two-nodes"}},
                            "topologyKey": "kubernetes.io/hostname",
                        }
                    ]
                }
            },
        },
        backoffLimit=5,
    ),
    "suspended": manifest("paused", suspend=True, resources={"gpus": 2}),
    "long-dotted-name": manifest("a." * 60 + "z", resources={"gpus": 1, "nodes": 2}),
}


def rendered(name: str, settings: OperatorSettings = SETTINGS) -> Any:
    return render_objects(parse_manifest(SPECS[name]), settings)


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in SPECS:
        for obj in rendered(name).in_creation_order():
            out.append((f"{name}:{obj['kind']}", obj))
    for path in sorted(EXAMPLES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        data["metadata"]["uid"] = UID
        for obj in render_objects(parse_manifest(data), EXAMPLE_SETTINGS).in_creation_order():
            out.append((f"{path.stem}:{obj['kind']}", obj))
    return out


OBJECTS = all_objects()


@pytest.mark.parametrize(("label", "obj"), OBJECTS, ids=[label for label, _ in OBJECTS])
def test_objects_validate_strictly_against_kubernetes_schemas(
    label: str, obj: dict[str, Any]
) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_would_catch_an_unknown_field() -> None:
    job = rendered("qlora").job
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", list(SPECS))
def test_restricted_security_context(name: str) -> None:
    pod = rendered(name).job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # The read-only root needs writable volumes where the trainer writes.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/scratch", "/dev/shm", "/etc/finetune"} <= mounts


@pytest.mark.parametrize("name", list(SPECS))
def test_pod_failure_policy_fails_on_invalid_input_and_ignores_disruptions(name: str) -> None:
    spec = rendered(name).job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert spec["podFailurePolicy"]["rules"] == [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]},
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        # Stopped by SIGTERM after saving a checkpoint: the next pod resumes at no cost.
        {
            "action": "Ignore",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [143]},
        },
    ]
    container = spec["template"]["spec"]["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "progress", "containerPort": 8080, "protocol": "TCP"} in container["ports"]


def test_grace_period_covers_a_step_and_the_checkpoint_upload_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finetune_operator import grace as grace_module
    from finetune_operator.grace import (
        GRACE_CEILING_SECONDS,
        GRACE_FLOOR_SECONDS,
        STEP_ALLOWANCE_SECONDS,
        adapter_params_estimate,
    )

    def grace(**spec: Any) -> int:
        job = parse_manifest(manifest("g", **spec))
        pod = render_objects(job, SETTINGS).job["spec"]["template"]["spec"]
        return int(pod["terminationGracePeriodSeconds"])

    # Llama-3-8B with r=16 on every linear: 42M adapter parameters (published: 41.9M).
    r16 = parse_manifest(manifest("g", method={"lora": {"r": 16}}))
    assert adapter_params_estimate(r16) == pytest.approx(41.9e6, rel=0.01)
    default = grace(method={"lora": {"r": 16}})
    assert STEP_ALLOWANCE_SECONDS < default < GRACE_CEILING_SECONDS
    assert grace(method={"lora": {"r": 256}}) > default  # a bigger checkpoint takes longer
    assert grace(method={"lora": {"r": 1, "targetModules": ["q_proj"]}}) == GRACE_FLOOR_SECONDS
    monkeypatch.setattr(grace_module, "CHECKPOINT_BYTES_PER_SECOND", 1e6)  # a slow store
    assert grace(method={"lora": {"r": 256}}) == GRACE_CEILING_SECONDS
    assert grace(resources={"terminationGracePeriodSeconds": 1800}) == 1800


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_secrets_only_as_secret_key_refs() -> None:
    objects = rendered("one-gpu-secret")
    env = {e["name"]: e for e in objects.job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "id"}},
    }
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "key"}},
    }
    for obj in objects.in_creation_order():
        for item in _strings(obj):
            assert item != "secretAccessKey"  # no inline secret fields anywhere
        for container in (
            obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ):
            for var in container["env"]:
                if var["name"].startswith("AWS_"):
                    assert "value" not in var
    assert not [o for o in objects.in_creation_order() if o["kind"] == "Secret"]


def test_names_labels_and_owner_references() -> None:
    objects = rendered("two-nodes-affinity")
    for obj in objects.in_creation_order():
        meta = obj["metadata"]
        assert meta["name"] == "ftj-two-nodes"
        assert meta["namespace"] == "ml"
        assert meta["labels"]["finetune.dev/job"] == "two-nodes"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "finetune-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "two-nodes"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "name": "two-nodes",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    components = [
        o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects.in_creation_order()
    ]
    assert components == ["config", "rendezvous", "trainer"]


def test_long_and_dotted_names_become_valid_short_names() -> None:
    objects = rendered("long-dotted-name")
    name = objects.job["metadata"]["name"]
    assert len(name) <= naming.MAX_NAME_LENGTH and "." not in name
    assert name == objects.service["metadata"]["name"]  # type: ignore[index]
    assert len(objects.job["metadata"]["labels"]["finetune.dev/job"]) <= 63
    assert rendered("long-dotted-name").job == objects.job  # deterministic


def test_config_map_holds_the_job_json_and_the_default_endpoint() -> None:
    settings = OperatorSettings(s3_endpoint="http://s3.local:9000")
    cm = rendered("qlora", settings).config_map
    assert cm["immutable"] is True
    data = json.loads(cm["data"]["job.json"])
    assert data["metadata"] == {"name": "qlora", "namespace": "ml", "uid": UID, "generation": 1}
    assert data["spec"]["storage"]["s3"]["endpoint"] == "http://s3.local:9000"
    assert parse_manifest(data).spec.method.type == "qlora"
    # The spec's own endpoint wins over the operator default.
    own = json.loads(rendered("one-gpu-secret", settings).config_map["data"]["job.json"])
    assert own["spec"]["storage"]["s3"]["endpoint"] == "http://minio.minio:9000"


def test_cpu_job_has_no_gpu_request_and_no_gpu_toleration() -> None:
    pod = rendered("quickstart-cpu").job["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0]
    assert "tolerations" not in pod
    assert pod["containers"][0]["command"] == ["python", "-m", "finetune_trainer"]


def test_gpu_requests_limits_and_default_toleration() -> None:
    pod = rendered("qlora").job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "1" == resources["limits"]["nvidia.com/gpu"]
    assert pod["tolerations"][0] == {
        "key": "nvidia.com/gpu",
        "operator": "Exists",
        "effect": "NoSchedule",
    }
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_cluster_gpu_resource_name_replaces_the_api_default_only() -> None:
    amd = OperatorSettings(gpu_resource_name="amd.com/gpu")
    pod = rendered("qlora", amd).job["spec"]["template"]["spec"]
    assert "amd.com/gpu" in pod["containers"][0]["resources"]["limits"]
    explicit = render_objects(
        parse_manifest(manifest("x", resources={"gpus": 1, "gpuResourceName": "intel.com/gpu"})),
        amd,
    )
    assert (
        "intel.com/gpu"
        in explicit.job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_single_job_volumes_env_and_cache_claim() -> None:
    job = rendered("one-gpu-secret").job
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {"sizeLimit": "200Gi"}}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    assert volumes["job-config"]["configMap"]["name"] == "ftj-one-gpu"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FTJ_MANIFEST"] == "/etc/finetune/job.json"
    assert env["FTJ_WORKDIR"] == "/scratch"
    assert env["FTJ_CACHE_DIR"] == "/cache"
    assert env["FTJ_PROGRESS_PORT"] == "8080"
    assert env["HOME"] == "/tmp"
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["completionMode"] == "NonIndexed"
    assert job["spec"]["suspend"] is False


def test_scratch_storage_class_gives_a_generic_ephemeral_volume() -> None:
    settings = OperatorSettings(scratch_storage_class="fast-nvme")
    job = rendered("qlora", settings).job
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["scratch"]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "fast-nvme"
    assert claim["resources"]["requests"]["storage"] == "200Gi"
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_queue_name_labels_the_job_and_creates_it_suspended() -> None:
    job = rendered("eight-gpus-queue").job
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "ml-training"
    assert pod["containers"][0]["command"] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node=8",
        "-m",
        "finetune_trainer",
    ]


def test_suspended_spec_gives_a_suspended_job() -> None:
    assert rendered("suspended").job["spec"]["suspend"] is True


def test_multi_node_is_an_indexed_job_with_a_headless_service() -> None:
    objects = rendered("two-nodes-affinity")
    spec = objects.job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "ftj-two-nodes"
    assert pod["nodeSelector"] == {"gpu.nvidia.com/class": "H100"}
    assert "podAntiAffinity" in pod["affinity"]
    command = pod["containers"][0]["command"]
    assert command[:4] == [
        "torchrun",
        "--nproc-per-node=8",
        "--nnodes=2",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
    ]
    assert "--rdzv-endpoint=ftj-two-nodes-0.ftj-two-nodes:29500" in command
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "JOB_COMPLETION_INDEX" in env
    service = objects.service
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {
        "finetune.dev/job": "two-nodes",
        "app.kubernetes.io/component": "trainer",
    }
    template_labels = spec["template"]["metadata"]["labels"]
    assert all(template_labels[k] == v for k, v in service["spec"]["selector"].items())


def test_multi_node_failures_are_counted_per_node() -> None:
    """spec.backoffLimit retries each node's pod (one node's failure fails its peers too, so
    one shared limit would run out N times as fast); the first node out of retries fails the
    job. Single-node jobs keep the plain backoffLimit."""
    spec = rendered("two-nodes-affinity").job["spec"]
    assert spec["backoffLimitPerIndex"] == 5  # the fixture's spec.backoffLimit
    assert spec["maxFailedIndexes"] == 0
    # Left to Kubernetes' default with a per-index limit (2147483647): a shared limit would
    # count every node's failures again.
    assert "backoffLimit" not in spec
    # What Kubernetes requires of backoffLimitPerIndex.
    assert spec["completionMode"] == "Indexed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    for name in ("quickstart-cpu", "one-gpu-secret"):
        single = rendered(name).job["spec"]
        assert single["backoffLimit"] == 3  # the API default of spec.backoffLimit
        assert "backoffLimitPerIndex" not in single and "maxFailedIndexes" not in single


def test_trainer_command_override() -> None:
    settings = OperatorSettings(trainer_command=("python", "-m", "finetune_trainer", "--fake"))
    pod = rendered("two-nodes-affinity", settings).job["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["python", "-m", "finetune_trainer", "--fake"]


def test_image_from_spec_overrides_the_default() -> None:
    job = render_objects(
        ftj(resources={"gpus": 1, "image": "registry.local/trainer:dev"}), SETTINGS
    ).job
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/trainer:dev"
    default = rendered("qlora").job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert default == "ghcr.io/finetune-dev/finetune-trainer:0.1.0"

"""spec.pod: each override reaches the rendered Job, and what the operator owns stays its own.

The refusals themselves (each owned field by name, with the fix) are the ``pod-*`` entries of
tests/cases/manifests.py, checked client-side (tests/unit/test_api_models.py) and by the real
API server (tests/apiserver). Here: the rendered Job carries every override, the precedence
holds, and every name the renderer writes is one that admission refuses in a spec.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from finetune_api import contract, parse_manifest, rules
from finetune_operator import naming
from finetune_operator.render import CapabilityNotAllowed, render_objects
from finetune_operator.settings import OperatorSettings, SettingsError

from tests.cases.manifests import EVERY_POD_OVERRIDE

from .fixtures import manifest
from .test_render import K8S_VERSION

pytestmark = pytest.mark.unit

ALLOW_IPC_LOCK = OperatorSettings(allowed_capabilities=("IPC_LOCK",))


def _job(settings: OperatorSettings = ALLOW_IPC_LOCK, **spec: Any) -> dict[str, Any]:
    spec = {"resources": {"gpus": 1, "memory": "64Gi"}, **spec}
    body = manifest("pod", pod=copy.deepcopy(EVERY_POD_OVERRIDE), **spec)
    return render_objects(parse_manifest(body, cluster=True), settings).job


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def test_the_job_with_every_override_is_valid_kubernetes() -> None:
    kubernetes_validate.validate(_job(), K8S_VERSION, strict=True)


def test_service_account_and_image_pull_secrets() -> None:
    pod = _pod(_job())
    assert pod["serviceAccountName"] == "trainer-s3"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    # Web identity mounts its own projected token; the API token stays unmounted.
    assert pod["automountServiceAccountToken"] is False


def test_env_comes_after_the_operators_and_env_from_is_passed_through() -> None:
    (container,) = _pod(_job())["containers"]
    names = [e["name"] for e in container["env"]]
    assert names[-3:] == ["NCCL_DEBUG", "WANDB_API_KEY", "NODE_NAME"]
    assert names.index("FTJ_MANIFEST") < names.index("NCCL_DEBUG")
    assert container["env"][-2] == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}},
    }
    assert container["env"][-1]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert container["envFrom"] == [
        {"configMapRef": {"name": "nccl-settings"}},
        {"secretRef": {"name": "tracking"}, "prefix": "TRACK_"},
    ]


def test_volumes_and_mounts_come_after_the_operators() -> None:
    pod = _pod(_job())
    volumes = [v["name"] for v in pod["volumes"]]
    assert volumes[:4] == ["job-config", "scratch", "tmp", "dshm"]
    assert pod["volumes"][-2:] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "team-data", "readOnly": False}},
        {"name": "hugepages", "emptyDir": {"medium": "HugePages"}},
    ]
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts[0]["mountPath"] == contract.CONFIG_DIR
    assert mounts[-2:] == [
        {"name": "data", "mountPath": "/data", "readOnly": False},
        {"name": "hugepages", "mountPath": "/hugepages", "readOnly": False},
    ]


def test_labels_and_annotations_beside_the_operators() -> None:
    metadata = _job()["spec"]["template"]["metadata"]
    assert metadata["annotations"] == {"prometheus.io/scrape": "true"}
    assert metadata["labels"]["team"] == "nlp"
    assert metadata["labels"]["finetune.dev/job"] == "pod"  # selectors keep working
    assert metadata["labels"]["app.kubernetes.io/component"] == "trainer"


def test_extra_resources_are_requested_and_limited_beside_gpus() -> None:
    resources = _pod(_job())["containers"][0]["resources"]
    for side in ("requests", "limits"):
        assert resources[side] == {
            "memory": "64Gi",
            "nvidia.com/gpu": "1",
            "rdma/hca_shared_devices_a": "1",
            "hugepages-2Mi": "1Gi",
        }


def test_an_allowed_capability_is_added_and_all_others_stay_dropped() -> None:
    ctx = _pod(_job())["containers"][0]["securityContext"]
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True


def test_a_capability_the_settings_dont_allow_fails_naming_the_chart_value() -> None:
    with pytest.raises(CapabilityNotAllowed) as caught:
        _job(OperatorSettings())
    assert caught.value.reason == "CapabilityNotAllowed"
    message = str(caught.value)
    assert "spec.pod.capabilities: IPC_LOCK not allowed" in message
    assert "trainer.allowedCapabilities" in message and "(allowed: none)" in message


def test_allowed_capabilities_setting() -> None:
    env = {"FTJ_ALLOWED_CAPABILITIES": "ipc_lock, CAP_SYS_NICE"}
    assert OperatorSettings.from_env(env).allowed_capabilities == ("IPC_LOCK", "SYS_NICE")
    assert OperatorSettings.from_env({}).allowed_capabilities == ()
    with pytest.raises(SettingsError, match="FTJ_ALLOWED_CAPABILITIES"):
        OperatorSettings.from_env({"FTJ_ALLOWED_CAPABILITIES": "IPC LOCK"})


def test_placement_stays_in_spec_resources() -> None:
    job = _job(
        resources={
            "gpus": 1,
            "memory": "64Gi",
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "team", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {}},
            "priorityClassName": "training",
        }
    )
    pod = _pod(job)
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert {"key": "team", "operator": "Exists"} in pod["tolerations"]
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert pod["priorityClassName"] == "training"


def test_hf_token_from_a_secret_reference() -> None:
    job = _job(storage={"hf": {"tokenSecret": {"name": "hf-token"}}})
    env = {e["name"]: e for e in _pod(job)["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}},
    }


def test_s3_without_a_secret_leaves_credentials_to_the_default_chain() -> None:
    job = _job(storage={"s3": {"region": "eu-west-1"}})
    names = {e["name"] for e in _pod(job)["containers"][0]["env"]}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_every_name_the_operator_renders_is_refused_in_a_spec() -> None:
    """The precedence holds because a spec can't name what the operator writes."""
    body = manifest(
        "owned",
        resources={"gpus": 8, "nodes": 2, "modelCacheClaim": "cache"},
        storage={
            "s3": {"credentialsSecret": {"name": "s3"}},
            "hf": {"tokenSecret": {"name": "hf"}},
        },
    )
    pod = _pod(render_objects(parse_manifest(body), OperatorSettings()).job)
    (container,) = pod["containers"]
    for var in container["env"]:
        name = var["name"]
        assert name.startswith("FTJ_") or name in (
            rules.OPERATOR_ENV_NAMES + rules.CREDENTIAL_ENV_NAMES
        ), name
    assert {v["name"] for v in pod["volumes"]} <= set(rules.OPERATOR_VOLUME_NAMES)
    assert {m["mountPath"] for m in container["volumeMounts"]} <= set(rules.OPERATOR_MOUNT_PATHS)
    for key in naming.labels("owned", "trainer"):
        assert key.startswith(rules.OPERATOR_LABEL_PREFIXES), key
    assert naming.COMPLETION_INDEX_ANNOTATION.startswith(rules.OPERATOR_ANNOTATION_PREFIXES)


def test_a_refused_render_fails_the_job_with_its_reason() -> None:
    from datetime import datetime, timezone

    from finetune_operator.observe import observe_status

    job = parse_manifest(manifest("pod", pod={"capabilities": ["SYS_ADMIN"]}))
    with pytest.raises(CapabilityNotAllowed) as caught:
        render_objects(job, OperatorSettings())
    refusal = (caught.value.reason, str(caught.value))
    update = observe_status(job, None, [], None, datetime.now(timezone.utc), refusal)
    assert update.phase == "Failed"
    failed = next(c for c in update.status.conditions if c.type == "Failed")
    assert failed.reason == "CapabilityNotAllowed" and "SYS_ADMIN" in failed.message
    assert [e.reason for e in update.events if e.type == "Warning"] == ["CapabilityNotAllowed"]

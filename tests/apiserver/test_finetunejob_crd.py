"""The generated FineTuneJob CRD, as Kubernetes' own API server enforces it.

Everything here goes through the real apiextensions-apiserver: OpenAPI validation, CEL rules,
structural defaulting, the status subresource and server-side printing. The same table of bad
manifests is refused client-side by ``ftj validate`` (tests/unit/test_api_models.py).
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cases.manifests import BAD_CASES, GOOD_CASES, BadCase, GoodCase, minimal_manifest
from tests.harness.apiserver import KubeApiServer

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "finetune.dev_finetunejobs.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Examples written for `ftj run` on one machine: their local paths are on no volume of a pod.
LOCAL_EXAMPLES = {"quickstart"}
NAMESPACE = "crd-tests"
COLLECTION = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"

# Tallies printed at the end of the session (see conftest.py): accepted and refused manifests.
TALLY = {"accepted": 0, "refused": 0}


@pytest.fixture(scope="module")
def api(kube_apiserver: KubeApiServer) -> KubeApiServer:
    kube_apiserver.install_crd(CRD_PATH)
    return kube_apiserver


def _create(api: KubeApiServer, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST with strict field validation, as `kubectl apply` does by default."""
    manifest = copy.deepcopy(manifest)
    manifest.setdefault("metadata", {})["namespace"] = NAMESPACE
    code, body = api.request("POST", f"{COLLECTION}?fieldValidation=Strict", manifest)
    TALLY["accepted" if code == 201 else "refused"] += 1
    return code, body


def _delete(api: KubeApiServer, name: str) -> None:
    api.request("DELETE", f"{COLLECTION}/{name}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_is_accepted(api: KubeApiServer, path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    code, body = _create(api, manifest)
    if path.stem in LOCAL_EXAMPLES:
        assert code == 422, "a local output path must be refused for the cluster"
        assert "spec.output.uri is a local path" in body["message"]
        return
    assert code == 201, body.get("message", body)
    _delete(api, manifest["metadata"]["name"])


def test_kubectl_apply_refuses_a_local_output_unless_a_claim_is_mounted(
    api: KubeApiServer, kube_tools_bin: Path, tmp_path: Path
) -> None:
    """Issue 22: `output.uri: /data/out` is accepted only with a PersistentVolumeClaim at /data."""
    manifest = minimal_manifest("local-output")
    manifest["metadata"]["namespace"] = NAMESPACE
    manifest["spec"]["output"]["uri"] = "/data/out"
    path = tmp_path / "job.yaml"

    def apply() -> subprocess.CompletedProcess[str]:
        path.write_text(yaml.safe_dump(manifest))
        return subprocess.run(
            # --validate=false: the standalone server publishes no OpenAPI for kubectl's
            # field check; the CRD's schema and CEL rules are enforced by the server anyway.
            [str(kube_tools_bin / "kubectl"), "apply", "--validate=false", "-f", str(path)],
            env=api.kubectl_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = apply()
    assert refused.returncode != 0, refused.stdout
    assert "spec.output.uri is a local path that no durable volume of the pod holds" in (
        refused.stderr
    )
    assert "mount a PersistentVolumeClaim" in refused.stderr  # the fix
    manifest["spec"]["pod"] = {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "team-data"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    accepted = apply()
    assert accepted.returncode == 0, accepted.stderr
    assert "created" in accepted.stdout
    _delete(api, "local-output")


def test_server_fills_in_defaults(api: KubeApiServer) -> None:
    code, stored = _create(api, minimal_manifest("defaults"))
    assert code == 201, stored
    spec = stored["spec"]
    assert spec["training"]["epochs"] == 3
    assert spec["training"]["learningRate"] == 0.0002
    assert spec["training"]["precision"] == "auto"
    assert spec["method"]["type"] == "lora"
    assert spec["method"]["lora"] == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "targetModules": ["all-linear"],
        "useRslora": False,
        "useDora": False,
    }
    assert spec["template"] == {"name": "auto", "reasoning": "keep"}
    assert spec["datasets"][0]["format"] == "auto"
    assert spec["output"]["merge"] is True and spec["output"]["overwrite"] is False
    assert spec["resources"]["gpus"] == 1
    assert spec["resources"]["gpuResourceName"] == "nvidia.com/gpu"
    assert spec["suspend"] is False and spec["backoffLimit"] == 3
    _delete(api, "defaults")


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_manifest_is_refused_naming_the_field(api: KubeApiServer, case: BadCase) -> None:
    code, body = _create(api, case.manifest())
    # 422 Invalid for schema/CEL failures; 400 BadRequest for unknown fields (strict decoding)
    assert code in (400, 422), f"accepted a bad manifest ({case.id}): {json.dumps(body)[:300]}"
    message = body.get("message", "")
    assert case.fragment in message, message


def test_spec_is_immutable_except_suspend(api: KubeApiServer) -> None:
    code, stored = _create(api, minimal_manifest("immutable"))
    assert code == 201
    path = f"{COLLECTION}/immutable"
    code, body = api.request(
        "PATCH", path, {"spec": {"suspend": True}}, content_type="application/merge-patch+json"
    )
    assert code == 200 and body["spec"]["suspend"] is True, body
    code, body = api.request(
        "PATCH",
        path,
        {"spec": {"training": {"learningRate": 0.1}}},
        content_type="application/merge-patch+json",
    )
    assert code == 422, body
    assert "spec is immutable after creation except spec.suspend" in body["message"]
    code, body = api.request(
        "PATCH",
        path,
        {"spec": {"queueName": "late-queue"}},
        content_type="application/merge-patch+json",
    )
    assert code == 422, "adding a field after creation must be refused too"
    _delete(api, "immutable")


def test_status_subresource_is_separate_from_spec(api: KubeApiServer) -> None:
    code, _ = _create(api, minimal_manifest("subresource"))
    assert code == 201
    path = f"{COLLECTION}/subresource"
    # Writing status through the main resource is ignored...
    code, body = api.request(
        "PATCH",
        path,
        {"status": {"phase": "Succeeded"}},
        content_type="application/merge-patch+json",
    )
    assert code == 200 and "status" not in body or body["status"].get("phase") is None
    # ...and spec changes sent to /status are ignored, while status lands.
    code, body = api.request(
        "PATCH",
        f"{path}/status",
        {"spec": {"suspend": True}, "status": {"phase": "Training", "progress": {"step": 5}}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, body
    assert body["status"]["phase"] == "Training" and body["status"]["progress"]["step"] == 5
    assert body["spec"]["suspend"] is False
    # A status that breaks the schema is refused by /status too.
    code, body = api.request(
        "PATCH",
        f"{path}/status",
        {"status": {"phase": "Dancing"}},
        content_type="application/merge-patch+json",
    )
    assert code == 422 and "status.phase" in body["message"]
    _delete(api, "subresource")


def test_kubectl_get_prints_the_columns(api: KubeApiServer, kube_tools_bin: Path) -> None:
    code, _ = _create(api, minimal_manifest("columns"))
    assert code == 201
    api.request(
        "PATCH",
        f"{COLLECTION}/columns/status",
        {
            "status": {
                "phase": "Training",
                "progress": {
                    "step": 120,
                    "totalSteps": 500,
                    "summary": "120/500 (24%)",
                    "loss": 1.234,
                    "eta": "12m30s",
                    "tokensPerSecond": 7422.5,
                },
            }
        },
        content_type="application/merge-patch+json",
    )
    env = api.kubectl_env()

    def kubectl(*args: str) -> str:
        done = subprocess.run(
            [str(kube_tools_bin / "kubectl"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    table = kubectl("get", "ftj", "-n", NAMESPACE)
    header, row = table.splitlines()[0].split(), table.splitlines()[1]
    assert header == ["NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "MODEL", "AGE"]
    assert "Training" in row and "120/500 (24%)" in row and "1.234" in row and "12m30s" in row
    assert "s3://models/Qwen/Qwen3-8B" in row
    wide = kubectl("get", "finetunejobs", "-n", NAMESPACE, "-o", "wide")
    assert "TOKENS/S" in wide.splitlines()[0] and "7422.5" in wide
    # the category lists FineTuneJobs beside other ML resources
    assert "columns" in kubectl("get", "finetune", "-n", NAMESPACE)
    # `kubectl explain` reads these descriptions (from the aggregated OpenAPI of a full cluster;
    # the standalone server publishes none, so read the stored CRD instead).
    _, crd = api.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/finetunejobs.finetune.dev"
    )
    training = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["training"]["properties"]
    assert "Recompute activations" in training["gradientCheckpointing"]["description"]
    _delete(api, "columns")


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda c: c.id)
def test_server_accepts_good_variation(api: KubeApiServer, case: GoodCase) -> None:
    manifest = case.manifest()
    code, body = _create(api, manifest)
    assert code == 201, body.get("message", body)
    _delete(api, manifest["metadata"]["name"])


def test_kubectl_get_wide_shows_gpu_hours_and_cost(
    api: KubeApiServer, kube_tools_bin: Path
) -> None:
    code, _ = _create(api, minimal_manifest("gpu-hours"))
    assert code == 201
    code, body = api.request(
        "PATCH",
        f"{COLLECTION}/gpu-hours/status",
        {
            "status": {
                "phase": "Training",
                "gpuHours": 12.345678,
                "gpuHoursAsOf": "2025-06-01T12:00:00Z",
                "cost": {"amount": 30.74, "currency": "USD", "gpuHourPrice": 2.49},
            }
        },
        content_type="application/merge-patch+json",
    )
    assert code == 200, body  # the status schema takes the GPU-hours and the cost
    done = subprocess.run(
        [str(kube_tools_bin / "kubectl"), "get", "ftj", "gpu-hours", "-n", NAMESPACE, "-o", "wide"],
        env=api.kubectl_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]

    def cell(name: str) -> str:  # empty cells (no progress yet) make split() unreliable
        start = header.index(name)
        return row[start:].split()[0]

    assert cell("GPU-HOURS") == "12.345678"
    assert cell("COST") == "30.74"
    narrow = subprocess.run(
        [str(kube_tools_bin / "kubectl"), "get", "ftj", "gpu-hours", "-n", NAMESPACE],
        env=api.kubectl_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "GPU-HOURS" not in narrow.stdout  # priority 1: only with -o wide
    _delete(api, "gpu-hours")

"""The chart's RBAC equals what the operator really does (least privilege, both ways).

The operator runs end to end against the harness (a FineTuneJob that succeeds, one that fails,
peering on); the gateway's audit log gives every (apiGroup, resource, verb) it used. Each one
must be granted by the chart's ClusterRole (else the operator breaks on a real cluster) and
each granted one must have been used (else the chart grants too much).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO, KubeEnv, wait_for
from tests.harness.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "finetune-operator"
PEERING_NAME = "ftj-rbac"

# Rules the chart grants for code paths this scenario doesn't reach, each with its reason.
# Keep this short: every entry is a permission no test proves necessary.
NOT_EXERCISED: dict[tuple[str, str, str], str] = {
    ("", "services", "create"): "only multi-node jobs (nodes > 1) get a headless Service",
    ("", "services", "get"): "multi-node only",
    ("", "services", "list"): "multi-node only",
    ("", "services", "watch"): "multi-node only",
    ("", "services", "patch"): "multi-node only",
}


def chart_rules(helm: Path, *sets: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) triples of the ClusterRole rendered with default values."""
    args = [str(helm), "template", "ftj", str(CHART), "--namespace", "finetune-system"]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    roles = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ClusterRole"]
    assert len(roles) == 1
    return {
        (group, resource, verb)
        for rule in roles[0]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _job(name: str, ns: str, exit_code: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {
                "fake-trainer.finetune.dev/exit-code": str(exit_code),
                "fake-trainer.finetune.dev/step-seconds": "0.05",
            },
        },
        "spec": {
            "model": {"uri": "s3://models/tiny"},
            "datasets": [{"uri": "s3://datasets/d.jsonl"}],
            "output": {"uri": f"s3://out/{name}"},
            "training": {"maxSteps": 6, "saveSteps": 3},
            "resources": {"gpus": 0},
            "backoffLimit": 0,
        },
    }


@pytest.fixture
def operator_used(
    kube_env: KubeEnv,
    ns: str,
    tmp_path: Path,
) -> Iterator[set[tuple[str, str, str]]]:
    """Run the operator with peering through a success and a failure; yield what it used."""
    import importlib.util

    from tests.e2e.conftest import FAKE_TRAINER_COMMAND

    if importlib.util.find_spec("finetune_operator.__main__") is None:
        pytest.skip("the operator's entry point does not exist yet")
    kube_env.apiserver.install_crd(CHART / "crds" / "kopf.dev_peerings.yaml")
    kube_env.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING_NAME}},
        namespace=ns,
    )
    start = len(kube_env.gateway.audit)
    env = {
        "FTJ_WATCH_NAMESPACES": ns,
        "FTJ_S3_ENDPOINT": kube_env.s3.endpoint_url,
        "FTJ_TRAINER_COMMAND": FAKE_TRAINER_COMMAND,
        "FTJ_PEERING": PEERING_NAME,
        "FTJ_PROGRESS_POLL_SECONDS": "1",
        "FTJ_STATUS_MIN_INTERVAL_SECONDS": "0",
    }
    proc = OperatorProcess(kube_env.kubeconfig, tmp_path / "operator", env=env).start()
    try:
        proc.wait_ready()
        for name, code in (("rbac-ok", 0), ("rbac-bad", 42)):
            kube_env.apply(_job(name, ns, code), namespace=ns)
        for name, phase in (("rbac-ok", "Succeeded"), ("rbac-bad", "Failed")):
            wait_for(
                lambda n=name, p=phase: (
                    kube_env.kubectl_json("get", "ftj", n, "-n", ns).get("status", {}).get("phase")
                    == p
                ),
                timeout=120,
                what=f"{name} {phase}",
                details=proc.logs,
            )
        kube_env.kubectl("delete", "ftj", "rbac-ok", "-n", ns)
        wait_for(
            lambda: "rbac-ok" not in kube_env.kubectl("get", "ftj", "-n", ns).stdout,
            timeout=60,
            what="rbac-ok deleted",
            details=proc.logs,
        )
    finally:
        proc.stop()
    records = kube_env.gateway.audit[start:]
    yield {
        (r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb)
        for r in records
        if r.resource and "kubectl" not in r.user_agent
    }


def test_operator_needs_exactly_the_chart_rules(
    operator_used: set[tuple[str, str, str]], kube_tools_bin: Path
) -> None:
    granted = chart_rules(kube_tools_bin / "helm")
    missing = sorted(operator_used - granted)
    unused = sorted(granted - operator_used - set(NOT_EXERCISED))
    assert not missing, f"the operator used requests the chart does not grant: {missing}"
    assert not unused, f"the chart grants what the operator never used: {unused}"

"""The chart's RBAC equals what the operator really does (least privilege, both ways).

The real operator (``python -m finetune_operator``, peering on) runs a scenario that reaches
every code path a single-node FineTuneJob has: one job succeeds, one fails (exit 42), one is
suspended while training, the operator is restarted while it is suspended (the resume handler
adopts the existing ConfigMap and Job: create → 409 → get), it is resumed and succeeds, and a
finished job is deleted. The gateway's audit log then gives every (apiGroup, resource, verb)
the operator used. Each one must be granted by the rules the chart renders for that mode (else
the operator breaks on a real cluster) and each granted one must have been used (else the chart
grants too much).

Both install modes run: cluster-wide (the default: a ClusterRole, a ClusterKopfPeering) and
namespaced (``watchNamespaces``: a Role per namespace, a KopfPeering in it).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import FAKE_TRAINER_COMMAND, REPO, KubeEnv, wait_for
from tests.harness.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "finetune-operator"
BUCKET = "rbac-artifacts"
Rule = tuple[str, str, str]

# Rules the chart grants for code paths no scenario here reaches, each with its reason.
# Keep this short: every entry is a permission no test proves necessary.
NOT_EXERCISED: dict[Rule, str] = {
    ("", "services", "create"): "only multi-node jobs (nodes > 1) get a headless Service",
    ("", "services", "get"): "multi-node only: adopting an existing Service after a restart",
}


def rendered_rules(helm: Path, kind: str, *sets: str) -> set[Rule]:
    """(group, resource, verb) triples of the chart's one ClusterRole or Role of ``kind``."""
    args = [str(helm), "template", "ftj", str(CHART), "--namespace", "finetune-system"]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    roles = [d for d in yaml.safe_load_all(out) if d and d["kind"] in ("ClusterRole", "Role")]
    assert [r["kind"] for r in roles] == [kind], [r["kind"] for r in roles]
    for rule in roles[0]["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
    return {
        (group, resource, verb)
        for rule in roles[0]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _job(name: str, *, invalid: bool = False, steps: int = 6) -> Any:
    """A FineTuneJob for the fake trainer: ``steps`` steps of 0.05 s each; a dataset URI
    containing "invalid" makes it exit 42 (InvalidInput). (Its per-job annotations don't
    reach the pod: job.json carries only name, namespace, uid and generation.)"""
    dataset = "s3://datasets/invalid.jsonl" if invalid else "s3://datasets/d.jsonl"
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/tiny"},
            "datasets": [{"uri": dataset}],
            "output": {"uri": f"s3://{BUCKET}/{uuid.uuid4().hex[:6]}/{name}"},
            "training": {"maxSteps": steps, "saveSteps": max(steps // 4, 1)},
            "resources": {"gpus": 0},
            "backoffLimit": 0,
        },
    }


def _status(kube_env: KubeEnv, ns: str, name: str) -> dict[str, Any]:
    return kube_env.kubectl_json("get", "ftj", name, "-n", ns).get("status") or {}


def run_scenario(kube_env: KubeEnv, ns: str, proc: OperatorProcess) -> None:
    """Success, failure, suspend → operator restart → resume → success, delete."""

    def wait_phase(name: str, phase: str, timeout: float = 60) -> None:
        wait_for(
            lambda: _status(kube_env, ns, name).get("phase") == phase,
            timeout=timeout,
            what=f"{name} {phase}",
            details=lambda: f"{_status(kube_env, ns, name)}\n{proc.logs()[-4000:]}",
        )

    proc.start().wait_ready()
    kube_env.apply(_job("rbac-ok"), ns)
    kube_env.apply(_job("rbac-bad", invalid=True), ns)
    kube_env.apply(_job("rbac-pause", steps=120), ns)
    wait_for(
        lambda: (_status(kube_env, ns, "rbac-pause").get("progress") or {}).get("step", 0) >= 2,
        timeout=60,
        what="rbac-pause training",
        details=proc.logs,
    )
    kube_env.kubectl(
        "patch", "ftj", "rbac-pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_phase("rbac-pause", "Suspended")
    # A restart while a job is unfinished: the resume handler finds its objects (409 → get).
    proc.stop()
    proc.start().wait_ready()
    kube_env.kubectl(
        "patch", "ftj", "rbac-pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_phase("rbac-ok", "Succeeded")
    wait_phase("rbac-bad", "Failed")
    wait_phase("rbac-pause", "Succeeded")
    kube_env.kubectl("delete", "ftj", "rbac-ok", "-n", ns)
    wait_for(
        lambda: "rbac-ok" not in kube_env.kubectl("get", "ftj", "-n", ns).stdout,
        timeout=60,
        what="rbac-ok deleted",
        details=proc.logs,
    )


def _peering(mode: str, name: str) -> tuple[dict[str, Any], str]:
    kind = "ClusterKopfPeering" if mode == "clusterwide" else "KopfPeering"
    return {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": name}}, kind


@pytest.fixture(params=["clusterwide", "namespaced"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def operator_used(kube_env: KubeEnv, ns: str, mode: str, tmp_path: Path) -> Iterator[set[Rule]]:
    """Run the scenario with the operator in ``mode``; yield the rules it used."""
    kube_env.apiserver.install_crd(CHART / "crds" / "kopf.dev_peerings.yaml")
    client = kube_env.s3.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    peering_name = f"ftj-rbac-{uuid.uuid4().hex[:6]}"
    peering, kind = _peering(mode, peering_name)
    kube_env.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(peering))
    env = {
        # Cluster-wide sees other tests' namespaces too: only finished jobs live there, which
        # the operator leaves alone (and any request it made for them is still its own).
        "FTJ_WATCH_NAMESPACES": ns if mode == "namespaced" else "",
        "FTJ_S3_ENDPOINT": kube_env.s3.endpoint_url,
        "FTJ_TRAINER_COMMAND": FAKE_TRAINER_COMMAND,
        "FTJ_PEERING": peering_name,
        "FTJ_PROGRESS_POLL_SECONDS": "1",
        "FTJ_STATUS_MIN_INTERVAL_SECONDS": "0",
    }
    proc = OperatorProcess(kube_env.kubeconfig, tmp_path / "operator", env=env)
    start = len(kube_env.gateway.audit)
    try:
        run_scenario(kube_env, ns, proc)
    finally:
        proc.stop()
        print(f"--- operator log (last 3000 chars) ---\n{proc.logs()[-3000:]}")
        if mode == "clusterwide":
            kube_env.kubectl("delete", kind.lower(), peering_name, check=False)
    records = kube_env.gateway.audit[start:]
    # The operator's requests: everything but kubectl (the test's own calls); the job
    # simulator and the garbage collector work on the gateway's store, not over HTTP.
    yield {
        (r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb)
        for r in records
        if r.resource and "kubectl" not in r.user_agent
    }


def test_operator_needs_exactly_the_chart_rules(
    operator_used: set[Rule], mode: str, ns: str, kube_tools_bin: Path
) -> None:
    if mode == "clusterwide":
        granted = rendered_rules(kube_tools_bin / "helm", "ClusterRole")
    else:
        granted = rendered_rules(kube_tools_bin / "helm", "Role", f"watchNamespaces={{{ns}}}")
    print("used:", *sorted(operator_used), sep="\n  ")
    missing = sorted(operator_used - granted)
    unused = sorted(granted - operator_used - set(NOT_EXERCISED))
    assert not missing, f"the operator used requests the chart does not grant: {missing}"
    assert not unused, f"the chart grants what the operator never used: {unused}"
    # The operator never reads cluster-scoped objects beyond its own peering (no CRD or
    # namespace scanning: settings.scanning.disabled), so a namespaced install works.
    cluster_scoped = {
        r
        for r in operator_used
        if r[1].split("/")[0] in ("namespaces", "customresourcedefinitions")
    }
    assert not cluster_scoped, cluster_scoped

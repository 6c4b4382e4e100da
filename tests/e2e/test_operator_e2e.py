"""The operator end to end: what a user sees with ``kubectl get ftj`` in each issue scenario.

Real parts: the operator process (``python -m finetune_operator``), apiextensions-apiserver
(admission, status subresource, printer columns), kubectl, an S3 server over HTTP, and, in
``test_quickstart_real_trainer``, the real trainer (``python -m finetune_trainer``) training the
tiny Qwen3 from S3 to S3. The other scenarios run the fake trainer (same pod contract, no torch)
so the suite fits 2 CPU cores: they prove the operator's behaviour, not training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from typing import Any

import pytest

from tests.e2e.conftest import REPO, KubeEnv, wait_for
from tests.harness.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

BUCKET_CREDENTIALS = "s3-credentials"


def ftj(
    name: str,
    kube_env: KubeEnv,
    ns: str,
    *,
    steps: int = 20,
    step_seconds: float = 0.05,
    exit_code: int = 0,
    output: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A FineTuneJob for the fake trainer, output in S3; its knobs go to the pods' env."""
    kube_env.simulator.set_pod_env(
        ns,
        {"FAKE_TRAINER_STEP_SECONDS": str(step_seconds), "FAKE_TRAINER_EXIT_CODE": str(exit_code)},
        job=name,
    )
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/tiny-qwen3"},
            "datasets": [{"uri": "s3://datasets/identity.json", "format": "alpaca"}],
            "training": {"maxSteps": steps, "saveSteps": max(steps // 4, 1)},
            "output": {"uri": output or f"s3://artifacts/{name}"},
            "storage": {
                "s3": {
                    "endpoint": kube_env.s3.endpoint_url,
                    "pathStyle": True,
                    "credentialsSecret": {"name": BUCKET_CREDENTIALS},
                }
            },
            "resources": {"gpus": 0},
        },
    }
    body["spec"].update(spec)
    return body


def status(kube_env: KubeEnv, ns: str, name: str) -> dict[str, Any]:
    return kube_env.kubectl_json("get", "ftj", name, "-n", ns).get("status") or {}


def wait_phase(
    kube_env: KubeEnv,
    ns: str,
    name: str,
    phases: set[str],
    operator: OperatorProcess,
    timeout: float = 60,
) -> dict[str, Any]:
    return wait_for(
        lambda: (lambda s: s if s.get("phase") in phases else None)(status(kube_env, ns, name)),
        timeout=timeout,
        what=f"{name} phase in {sorted(phases)}",
        details=lambda: (
            f"status: {status(kube_env, ns, name)}\noperator log:\n{operator.logs()[-4000:]}"
        ),
    )


def operator_and_pod_logs(kube_env: KubeEnv, ns: str, operator: OperatorProcess) -> str:
    """The ends of the operator's log and of every pod's in ``ns``: what a failed wait shows."""
    pods = kube_env.gateway.objects("pods", ns)
    return operator.logs()[-3000:] + "\n".join(
        kube_env.simulator.pod_log(p["metadata"]["name"], ns)[-3000:] for p in pods
    )


def trainer_jobs(kube_env: KubeEnv, ns: str) -> list[dict[str, Any]]:
    return kube_env.gateway.objects("jobs", ns, group="batch")


@pytest.fixture(autouse=True)
def buckets(kube_env: KubeEnv, ns: str) -> None:
    """Buckets, the credentials Secret, the tiny model and dataset in S3 (idempotent)."""
    client = kube_env.s3.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in ("models", "datasets", "artifacts"):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    if "models" not in existing:
        model_dir = REPO / "examples" / "quickstart" / "tiny-qwen3"
        for path in model_dir.iterdir():
            client.upload_file(str(path), "models", f"tiny-qwen3/{path.name}")
        client.upload_file(
            str(REPO / "examples" / "quickstart" / "identity.json"), "datasets", "identity.json"
        )
    kube_env.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": BUCKET_CREDENTIALS},
            "stringData": {
                "AWS_ACCESS_KEY_ID": "FTJTESTACCESSKEY0000",
                "AWS_SECRET_ACCESS_KEY": "ftj-test-secret",
            },
        },
        ns,
    )


def read_s3(kube_env: KubeEnv, uri: str) -> bytes:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return kube_env.s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def verify_manifest(kube_env: KubeEnv, manifest_uri: str) -> dict[str, Any]:
    """Every file the MANIFEST lists exists with its size and sha256."""
    manifest = json.loads(read_s3(kube_env, manifest_uri))
    base = manifest_uri.rsplit("/", 1)[0]
    assert manifest["files"], manifest
    for entry in manifest["files"]:
        data = read_s3(kube_env, f"{base}/{entry['path']}")
        assert len(data) == entry["size"], entry
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry
    return manifest


# --------------------------------------------------------------------------------------------
# Scenarios with the fake trainer.
# --------------------------------------------------------------------------------------------


def test_lifecycle_pending_training_succeeded(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    kube_env.apply(ftj("life", kube_env, ns, steps=40, step_seconds=0.15), ns)
    wait_phase(kube_env, ns, "life", {"Pending", "Initializing", "Training"}, operator)
    training = wait_phase(kube_env, ns, "life", {"Training"}, operator)
    first_step = training["progress"]["step"]
    later = wait_for(
        lambda: (lambda s: s if (s.get("progress") or {}).get("step", 0) > first_step else None)(
            status(kube_env, ns, "life")
        ),
        what="progress moves",
        details=operator.logs,
    )
    assert later["progress"].get("loss") is not None
    table = kube_env.kubectl("get", "ftj", "life", "-n", ns).stdout
    assert "Training" in table or "Succeeded" in table
    done = wait_phase(kube_env, ns, "life", {"Succeeded", "Failed"}, operator)
    assert done["phase"] == "Succeeded", done
    verify_manifest(kube_env, done["artifacts"]["manifest"])
    assert len(trainer_jobs(kube_env, ns)) == 1


def test_bad_data_fails_with_trainer_message_and_no_retry(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    body = ftj("baddata", kube_env, ns)
    body["spec"]["datasets"] = [{"uri": "s3://datasets/invalid.json", "format": "alpaca"}]
    kube_env.apply(body, ns)
    done = wait_phase(kube_env, ns, "baddata", {"Succeeded", "Failed"}, operator)
    assert done["phase"] == "Failed"
    reasons = {c.get("reason") for c in done.get("conditions", [])}
    assert "InvalidInput" in reasons, done
    # The pod's termination message may arrive a moment after the Job's verdict.
    done = wait_for(
        lambda: (lambda s: s if "missing field 'output'" in json.dumps(s) else None)(
            status(kube_env, ns, "baddata")
        ),
        timeout=20,
        what="the trainer's message in the status",
        details=lambda: f"status: {status(kube_env, ns, 'baddata')}",
    )
    pods = kube_env.gateway.objects("pods", ns)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]


def test_killed_trainer_pod_resumes_from_checkpoint(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    kube_env.apply(ftj("resume", kube_env, ns, steps=40, step_seconds=0.1), ns)

    def checkpointed() -> str | None:
        s = status(kube_env, ns, "resume")
        if (s.get("progress") or {}).get("step", 0) > 12:  # saveSteps=10
            running = kube_env.simulator.running_pods(ns)
            return running[0] if running else None
        return None

    pod = wait_for(
        checkpointed, timeout=60, what="past the first checkpoint", details=operator.logs
    )
    kube_env.simulator.kill_pod(pod, signal.SIGKILL, ns)
    done = wait_phase(kube_env, ns, "resume", {"Succeeded", "Failed"}, operator, timeout=90)
    assert done["phase"] == "Succeeded", done
    resumed = [c for c in done.get("conditions", []) if c.get("reason") == "ResumedFromCheckpoint"]
    assert resumed, done["conditions"]
    # The pod is killed once status shows a step past the first checkpoint; status trails the
    # trainer by a poll, so under load the newest checkpoint may already be step 20 or 30.
    found = re.search(r"checkpoint at step (\d+)", resumed[0].get("message", ""))
    assert found, resumed[0]
    step = int(found.group(1))
    assert step % 10 == 0 and 10 <= step < 40, resumed[0]  # saveSteps=10, maxSteps=40
    assert len(kube_env.gateway.objects("pods", ns)) == 2


def test_operator_killed_mid_reconcile_creates_exactly_one_job(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    kube_env.apply(ftj("once", kube_env, ns, steps=30, step_seconds=0.1), ns)
    # Kill as soon as the operator has started acting on the object (the Job may or may not
    # exist yet), then restart: the new process must adopt, not duplicate.
    wait_for(
        lambda: any(
            r.namespace == ns and r.verb in ("create", "patch") and "kubectl" not in r.user_agent
            for r in kube_env.gateway.audit
        ),
        timeout=30,
        interval=0.02,
        what="the operator's first write",
    )
    operator.kill()
    operator.start()
    operator.wait_ready()
    done = wait_phase(kube_env, ns, "once", {"Succeeded", "Failed"}, operator, timeout=90)
    assert done["phase"] == "Succeeded", done
    assert len(trainer_jobs(kube_env, ns)) == 1
    configmaps = [c for c in kube_env.gateway.objects("configmaps", ns)]
    assert len(configmaps) <= 1


def wait_past_first_checkpoint(
    kube_env: KubeEnv, ns: str, name: str, operator: OperatorProcess
) -> None:
    """Until the status shows a step past the first checkpoint (saveSteps=10 at 40 steps)."""
    wait_for(
        lambda: (status(kube_env, ns, name).get("progress") or {}).get("step", 0) > 12,
        timeout=60,
        what="past the first checkpoint",
        details=operator.logs,
    )


def test_suspend_then_resume_continues_from_checkpoint(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    kube_env.apply(ftj("pause", kube_env, ns, steps=40, step_seconds=0.1), ns)
    wait_past_first_checkpoint(kube_env, ns, "pause", operator)
    kube_env.kubectl(
        "patch", "ftj", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_phase(kube_env, ns, "pause", {"Suspended"}, operator)
    wait_for(lambda: not kube_env.simulator.running_pods(ns), what="trainer stopped")
    kube_env.kubectl(
        "patch", "ftj", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    done = wait_phase(kube_env, ns, "pause", {"Succeeded", "Failed"}, operator, timeout=90)
    assert done["phase"] == "Succeeded", done
    logs = "".join(
        kube_env.kubectl("logs", p["metadata"]["name"], "-n", ns).stdout
        for p in kube_env.gateway.objects("pods", ns)
    )
    assert '"event": "resumed"' in logs


def test_a_job_deleted_by_hand_is_created_again_and_resumes(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    """`kubectl delete job` on a training FineTuneJob's Job: the operator creates the Job again
    and the trainer resumes from its checkpoint, instead of the status saying "creating the
    Kubernetes Job" until the operator restarts."""
    kube_env.apply(ftj("redo", kube_env, ns, steps=40, step_seconds=0.1), ns)
    wait_past_first_checkpoint(kube_env, ns, "redo", operator)
    (first,) = trainer_jobs(kube_env, ns)
    kube_env.kubectl("delete", "job", first["metadata"]["name"], "-n", ns, timeout=60)
    done = wait_phase(kube_env, ns, "redo", {"Succeeded", "Failed"}, operator, timeout=120)
    assert done["phase"] == "Succeeded", done
    (again,) = trainer_jobs(kube_env, ns)
    assert again["metadata"]["name"] == first["metadata"]["name"]
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert "was deleted while the job trains: creating it again" in operator.logs()
    logs = "".join(
        kube_env.kubectl("logs", p["metadata"]["name"], "-n", ns).stdout
        for p in kube_env.gateway.objects("pods", ns)
    )
    assert '"event": "resumed"' in logs  # only a pod of the new Job can have resumed

    # Finished: deleting the Job now changes nothing (no new Job, the status stays Succeeded).
    kube_env.kubectl("delete", "job", again["metadata"]["name"], "-n", ns, timeout=60)
    wait_for(lambda: not trainer_jobs(kube_env, ns), timeout=30, what="Job deleted")
    time.sleep(3)  # the operator has the DELETED event well within this (a watch, not a poll)
    assert not trainer_jobs(kube_env, ns)
    after = status(kube_env, ns, "redo")
    assert after["phase"] == "Succeeded" and after.get("artifacts") == done.get("artifacts")


def test_delete_removes_job_and_keeps_artifacts(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    kube_env.apply(ftj("gone", kube_env, ns, steps=10), ns)
    done = wait_phase(kube_env, ns, "gone", {"Succeeded", "Failed"}, operator)
    assert done["phase"] == "Succeeded", done
    assert trainer_jobs(kube_env, ns)
    kube_env.kubectl("delete", "ftj", "gone", "-n", ns, timeout=60)
    wait_for(lambda: not trainer_jobs(kube_env, ns), timeout=30, what="Job collected")
    wait_for(lambda: not kube_env.gateway.objects("pods", ns), what="pods collected")
    verify_manifest(kube_env, done["artifacts"]["manifest"])


def test_twenty_jobs_at_once_all_succeed(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    names = [f"many-{i:02d}" for i in range(20)]
    docs = [ftj(n, kube_env, ns, steps=10, step_seconds=0.1) for n in names]
    kube_env.kubectl(
        "apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs)
    )

    def all_done() -> bool:
        items = kube_env.kubectl_json("get", "ftj", "-n", ns)["items"]
        phases = [(i.get("status") or {}).get("phase") for i in items]
        return len(phases) == 20 and all(p in ("Succeeded", "Failed") for p in phases)

    started = time.monotonic()
    wait_for(
        all_done,
        timeout=180,
        interval=1,
        what="20 jobs finished",
        details=lambda: kube_env.kubectl("get", "ftj", "-n", ns).stdout + operator.logs()[-3000:],
    )
    items = kube_env.kubectl_json("get", "ftj", "-n", ns)["items"]
    assert all(i["status"]["phase"] == "Succeeded" for i in items), [
        (i["metadata"]["name"], i["status"]) for i in items if i["status"]["phase"] != "Succeeded"
    ]
    assert len(trainer_jobs(kube_env, ns)) == 20
    print(f"20 jobs finished in {time.monotonic() - started:.1f}s")


# --------------------------------------------------------------------------------------------
# The real trainer.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def operator_env() -> dict[str, str]:
    """Default: the fake trainer; the real-trainer test overrides it below."""
    from tests.e2e.conftest import FAKE_TRAINER_COMMAND

    return {"FTJ_TRAINER_COMMAND": FAKE_TRAINER_COMMAND}


@pytest.mark.parametrize(
    "operator_env", [{"FTJ_TRAINER_COMMAND": f"{sys.executable} -m finetune_trainer"}]
)
def test_quickstart_real_trainer(kube_env: KubeEnv, ns: str, operator: OperatorProcess) -> None:
    if os.environ.get("FTJ_E2E_SKIP_REAL_TRAINER"):
        pytest.skip("FTJ_E2E_SKIP_REAL_TRAINER is set")
    pytest.importorskip("torch")
    body = ftj("quickstart", kube_env, ns)
    body["spec"].update(
        {
            "datasets": [
                {
                    "uri": "s3://datasets/identity.json",
                    "format": "alpaca",
                    "variables": {"name": "Quokka", "author": "the FineTune Operator team"},
                }
            ],
            "template": {"name": "qwen3"},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "maxSteps": 20,
                "learningRate": 0.005,
                "batchSize": 4,
                "cutoffLength": 128,
                "precision": "fp32",
                "saveSteps": 10,
                "evalSteps": 10,
                "loggingSteps": 2,
                "testSplit": 0.1,
            },
        }
    )
    kube_env.apply(body, ns)
    seen: set[str] = set()
    losses: list[float] = []
    # FTJ_E2E_TRANSCRIPT=FILE records what `kubectl get ftj` printed along the way (the
    # README's sample output comes from this).
    transcript_path = os.environ.get("FTJ_E2E_TRANSCRIPT")
    tables: list[str] = []

    def finished() -> dict[str, Any] | None:
        s = status(kube_env, ns, "quickstart")
        seen.add(s.get("phase") or "")
        if (s.get("progress") or {}).get("loss") is not None:
            losses.append(s["progress"]["loss"])
        if transcript_path:
            table = kube_env.kubectl("get", "ftj", "-n", ns).stdout
            if not tables or table.splitlines()[1:] != tables[-1].splitlines()[1:]:
                tables.append(table)
        return s if s.get("phase") in ("Succeeded", "Failed") else None

    done = wait_for(
        finished,
        timeout=400,
        interval=1,
        what="quickstart finished",
        details=lambda: operator_and_pod_logs(kube_env, ns, operator),
    )
    assert done["phase"] == "Succeeded", done
    assert "Training" in seen, seen
    assert losses, "no loss was ever shown"
    verify_manifest(kube_env, done["artifacts"]["manifest"])
    if transcript_path:
        wide = kube_env.kubectl("get", "ftj", "-n", ns, "-o", "wide").stdout
        with open(transcript_path, "w") as out:
            out.write("\n".join(tables) + "\n$ kubectl get ftj -o wide\n" + wide)
    for key in ("adapter", "merged", "metrics"):
        assert done["artifacts"][key].startswith("s3://artifacts/quickstart"), done["artifacts"]

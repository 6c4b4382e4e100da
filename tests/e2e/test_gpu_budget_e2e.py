"""GPU-hours, cost and ``spec.limits.maxGPUHours`` through the real operator and API server.

Real: the operator process, the apiextensions-apiserver (status schema, printer columns), the
real kubectl, the S3 server. Emulated (tests/harness/cluster): the core API, the Job
controller (suspend: SIGTERM to the pods, then SIGKILL after the grace period, pods deleted),
the kubelet (pod ``startTime``, container ``finishedAt``; GPUs are requested but not simulated,
so the count uses the spec's GPUs), and the trainer: the fake trainer checkpoints every
``saveSteps`` and exits on SIGTERM. The real trainer's SIGTERM checkpoint (save the current
step, upload, exit 143) makes the kept checkpoint the latest step; here it is the last periodic
one.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import FAKE_TRAINER_COMMAND, KubeEnv, wait_for
from tests.e2e.test_operator_e2e import buckets, ftj, status, trainer_jobs, wait_phase
from tests.harness.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e
__all__ = ["buckets"]  # the autouse fixture: buckets, model, data and the S3 Secret
PRICE = 3.0
BUDGET_HOURS = 0.002  # 7.2 s of one GPU


@pytest.fixture
def operator_env() -> dict[str, str]:
    return {"FTJ_TRAINER_COMMAND": FAKE_TRAINER_COMMAND, "FTJ_GPU_HOUR_PRICE": str(PRICE)}


def test_a_spent_gpu_budget_stops_the_job_with_budget_exceeded_and_a_checkpoint(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    body = ftj(
        "budget",
        kube_env,
        ns,
        steps=400,  # 40 s of training: far more than the budget
        step_seconds=0.1,
        resources={"gpus": 1},
        limits={"maxGPUHours": BUDGET_HOURS},
    )
    body["spec"]["training"]["saveSteps"] = 10
    kube_env.apply(body, ns)
    done = wait_phase(kube_env, ns, "budget", {"Succeeded", "Failed"}, operator, timeout=120)

    assert done["phase"] == "Failed", done
    failed = next(c for c in done["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BudgetExceeded", failed
    assert (
        "checkpoint" in failed["message"]
        and "s3://artifacts/budget/checkpoints/" in (failed["message"])
    )
    # Stopped soon after the budget: at most a status poll (1 s here) plus the stop's grace.
    assert BUDGET_HOURS <= done["gpuHours"] < BUDGET_HOURS + 40 / 3600, done
    assert done["cost"] == {
        "amount": round(done["gpuHours"] * PRICE, 2),
        "currency": "USD",
        "gpuHourPrice": PRICE,
    }
    assert done["progress"]["step"] < 400
    # The Job is suspended, nothing runs any more, and the output keeps a complete checkpoint.
    (job,) = trainer_jobs(kube_env, ns)
    assert job["spec"]["suspend"] is True
    wait_for(lambda: not kube_env.simulator.running_pods(ns), what="trainer stopped")
    listing = kube_env.s3.client().list_objects_v2(Bucket="artifacts", Prefix="budget/checkpoints/")
    complete = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("/COMPLETE")]
    assert complete, listing
    # What `kubectl get ftj -o wide` shows.
    wide = kube_env.kubectl("get", "ftj", "budget", "-n", ns, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    assert row[header.index("GPU-HOURS") :].split()[0] == str(done["gpuHours"])
    # A finished job's count no longer moves.
    assert status(kube_env, ns, "budget")["gpuHours"] == done["gpuHours"]

"""GPU-hours, cost and the GPU budget; the Tracking condition; the MLflow credentials in the pod.

Pure functions over objects shaped as the kubelet and the Job controller write them
(fixtures.py): what ``kubectl get ftj -o wide`` and ``kubectl describe ftj`` would show.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from finetune_api import parse_manifest, rules
from finetune_operator.gpu_usage import GpuHours, count_gpu_hours
from finetune_operator.observe import observe_status, rfc3339
from finetune_operator.render import render_objects
from finetune_operator.settings import OperatorSettings, SettingsError
from finetune_operator.status_writes import status_patch

from tests.unit.operator.fixtures import ftj, job_condition, k8s_job, manifest, pod, terminated

pytestmark = pytest.mark.unit

T0 = datetime(2025, 6, 1, 10, 0, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def stamp(minutes: float) -> str:
    return rfc3339(at(minutes))


def finished_pod(name: str, start: float, end: float, exit_code: int = 1) -> dict[str, Any]:
    return pod(
        name,
        "Failed" if exit_code else "Succeeded",
        created=stamp(start),
        state=terminated(exit_code, finished=stamp(end)),
    )


# --- GPU-hours ---------------------------------------------------------------------------------


def test_gpu_hours_add_up_gpus_times_running_time_over_every_attempt() -> None:
    first = finished_pod("ftj-demo-a", 0, 30)  # 30 min, then failed
    second = pod("ftj-demo-b", created=stamp(31))  # running since minute 31
    count = count_gpu_hours(GpuHours(0.0, None), [first, second], 8, at(61))
    # 8 GPUs x (30 + 30) minutes = 8 GPU-hours
    assert count.hours == pytest.approx(8.0)
    assert count.as_of == at(61)


def test_a_later_count_adds_only_the_time_since_the_last_and_keeps_vanished_pods() -> None:
    first = finished_pod("ftj-demo-a", 0, 30)
    counted = count_gpu_hours(GpuHours(0.0, None), [first], 2, at(40))
    assert counted.hours == pytest.approx(1.0)
    # The first pod is gone (deleted), a replacement runs from minute 45: nothing counted twice.
    second = pod("ftj-demo-b", created=stamp(45))
    later = count_gpu_hours(counted, [second], 2, at(75))
    assert later.hours == pytest.approx(1.0 + 2 * 0.5)
    # The same pods seen again at the same moment add nothing.
    assert count_gpu_hours(later, [first, second], 2, at(75)) == later


def test_a_finished_job_count_stops_moving() -> None:
    done = finished_pod("ftj-demo-a", 0, 30, exit_code=0)
    counted = count_gpu_hours(GpuHours(0.0, None), [done], 1, at(31))
    assert count_gpu_hours(counted, [done], 1, at(500)) == counted  # no write on later events


def test_cpu_jobs_count_no_gpu_hours() -> None:
    assert count_gpu_hours(GpuHours(0.0, None), [pod()], 0, at(60)).hours == 0.0


def test_status_shows_gpu_hours_and_the_cost_at_the_operators_price() -> None:
    job = ftj(resources={"gpus": 4})
    update = observe_status(
        job, k8s_job(), [pod(created=stamp(0))], None, at(90), gpu_hour_price=2.5, currency="EUR"
    )
    assert update.status.gpu_hours == pytest.approx(6.0)  # 4 GPUs x 1.5 h
    assert update.status.gpu_hours_as_of == stamp(90)
    cost = update.status.cost
    assert cost is not None and (cost.amount, cost.currency, cost.gpu_hour_price) == (
        15.0,
        "EUR",
        2.5,
    )
    assert observe_status(job, k8s_job(), [pod()], None, at(90)).status.cost is None


def test_gpu_hours_alone_are_written_at_the_progress_rate() -> None:
    current = {"phase": "Training", "gpuHours": 1.0, "gpuHoursAsOf": stamp(0)}
    wanted = {"phase": "Training", "gpuHours": 1.1, "gpuHoursAsOf": stamp(1)}
    assert status_patch(current, wanted, last_write=100.0, now=105.0, min_interval=10) is None
    assert status_patch(current, wanted, last_write=100.0, now=111.0, min_interval=10)


# --- the GPU budget ----------------------------------------------------------------------------


def test_a_spent_budget_stops_the_job_then_fails_it_with_budget_exceeded() -> None:
    job = ftj(resources={"gpus": 2}, limits={"maxGPUHours": 1.0})
    running = pod(created=stamp(0))
    under = observe_status(job, k8s_job(), [running], {"phase": "Training"}, at(20))
    assert under.phase == "Training" and not under.stop_job

    over = observe_status(job, k8s_job(), [running], {"phase": "Training"}, at(31))
    assert over.stop_job, "2 GPUs x 31 min > 1 GPU-hour: the Job must be suspended"
    assert over.phase == "Training"  # the trainer is still saving its checkpoint
    running_condition = next(c for c in over.status.conditions if c.type == "Running")
    assert (running_condition.status, running_condition.reason) == ("False", "BudgetExceeded")
    assert [(e.type, e.reason) for e in over.events] == [("Warning", "BudgetExceeded")]
    assert "stopping the trainer" in over.status.message

    # The Job is suspended and its pod has exited (SIGTERM: checkpoint, exit 143).
    stopping = job.model_copy(update={"status": over.status})
    stopped = observe_status(stopping, k8s_job(suspend=True), [], None, at(33))
    assert stopped.phase == "Failed" and not stopped.stop_job
    failed = next(c for c in stopped.status.conditions if c.type == "Failed")
    assert failed.reason == "BudgetExceeded"
    assert "s3://finetunes/demo/checkpoints/" in failed.message
    assert stopped.status.gpu_hours == over.status.gpu_hours  # nothing ran after the stop
    assert [(e.type, e.reason) for e in stopped.events] == [("Warning", "BudgetExceeded")]


def test_a_job_that_completes_within_the_budget_succeeds() -> None:
    job = ftj(resources={"gpus": 1}, limits={"maxGPUHours": 10.0})
    done = finished_pod("ftj-demo-a", 0, 30, exit_code=0)
    update = observe_status(
        job, k8s_job(job_condition("Complete", "Completed")), [done], None, at(31)
    )
    assert update.phase == "Succeeded" and not update.stop_job


# --- the Tracking condition ------------------------------------------------------------------


def test_a_tracking_server_that_was_down_leaves_the_job_succeeded_with_a_warning() -> None:
    report = {
        "ok": False,
        "reason": "TrackingIncomplete",
        "message": "MLflow at http://mlflow:5000: 12 values could not be sent before the end",
    }
    summary = {"phase": "Succeeded", "progress": {"step": 20, "tracking": report}}
    done = pod("ftj-demo-a", "Succeeded", state=terminated(0, "Completed", summary))
    job = ftj()
    update = observe_status(
        job, k8s_job(job_condition("Complete", "Completed")), [done], None, at(31)
    )
    assert update.phase == "Succeeded"
    tracking = next(c for c in update.status.conditions if c.type == "Tracking")
    assert (tracking.status, tracking.reason) == ("False", "TrackingIncomplete")
    assert "12 values" in tracking.message
    assert ("Warning", "TrackingIncomplete") in [(e.type, e.reason) for e in update.events]


def test_the_live_tracking_report_turns_the_condition_and_back() -> None:
    job = ftj()
    down = {"ok": False, "reason": "TrackingServerUnreachable", "message": "connection refused"}
    first = observe_status(job, k8s_job(), [pod()], {"phase": "Training", "tracking": down}, at(5))
    condition = next(c for c in first.status.conditions if c.type == "Tracking")
    assert (condition.status, condition.reason) == ("False", "TrackingServerUnreachable")
    assert ("Warning", "TrackingServerUnreachable") in [(e.type, e.reason) for e in first.events]
    back = {"ok": True, "reason": "Tracked", "message": "MLflow run x: 40 values sent"}
    later = observe_status(
        job.model_copy(update={"status": first.status}),
        k8s_job(),
        [pod()],
        {"phase": "Training", "tracking": back},
        at(6),
    )
    condition = next(c for c in later.status.conditions if c.type == "Tracking")
    assert (condition.status, condition.reason) == ("True", "Tracked")
    assert [(e.type, e.reason) for e in later.events] == [("Normal", "Tracked")]


def test_no_tracking_condition_without_a_tracking_server() -> None:
    update = observe_status(ftj(), k8s_job(), [pod()], {"phase": "Training"}, at(5))
    assert "Tracking" not in {c.type for c in update.status.conditions}


# --- the pod: MLflow credentials by reference ------------------------------------------------


def _env(body: dict[str, Any]) -> list[dict[str, Any]]:
    job = render_objects(parse_manifest(body), OperatorSettings()).job
    env: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def test_mlflow_credentials_reach_the_pod_only_as_optional_secret_references() -> None:
    tracking = {
        "mlflow": {
            "trackingUri": "https://mlflow.example.com",
            "credentialsSecret": {"name": "mlflow-credentials", "tokenKey": "token"},
        }
    }
    env = {e["name"]: e for e in _env(manifest(tracking=tracking))}
    for name, key in (
        ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_USERNAME"),
        ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_PASSWORD"),
        ("MLFLOW_TRACKING_TOKEN", "token"),
    ):
        assert "value" not in env[name]
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mlflow-credentials", "key": key, "optional": True}
        assert name in rules.CREDENTIAL_ENV_NAMES  # a spec can't set it by value
    without = {e["name"] for e in _env(manifest(tracking={"mlflow": tracking["mlflow"] | {}}))}
    assert "MLFLOW_TRACKING_TOKEN" in without
    plain = {e["name"] for e in _env(manifest())}
    assert not {n for n in plain if n.startswith("MLFLOW_")}


def test_a_spec_may_not_set_mlflow_credentials_by_value() -> None:
    from finetune_api import ManifestError

    body = manifest(pod={"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"}]})
    with pytest.raises(ManifestError, match="spec.tracking.mlflow.credentialsSecret"):
        parse_manifest(body)


# --- settings ----------------------------------------------------------------------------------


def test_the_price_setting_is_read_and_checked() -> None:
    settings = OperatorSettings.from_env({"FTJ_GPU_HOUR_PRICE": "2.49"})
    assert (settings.gpu_hour_price, settings.gpu_hour_currency) == (2.49, "USD")
    assert OperatorSettings.from_env({}).gpu_hour_price is None
    with pytest.raises(SettingsError, match="FTJ_GPU_HOUR_PRICE"):
        OperatorSettings.from_env({"FTJ_GPU_HOUR_PRICE": "cheap"})
    with pytest.raises(SettingsError, match="FTJ_GPU_HOUR_PRICE"):
        OperatorSettings.from_env({"FTJ_GPU_HOUR_PRICE": "-1"})

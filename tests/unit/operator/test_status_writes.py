"""Status writes: only on change; progress-only changes rate-limited."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_operator.status_writes import merge_diff, status_patch

pytestmark = pytest.mark.unit

TRAINING = {"phase": "Training", "progress": {"step": 10}}


def test_nothing_changed_nothing_written() -> None:
    assert status_patch(TRAINING, dict(TRAINING), None, 100.0, 10.0) is None


def test_progress_only_change_waits_for_the_interval() -> None:
    moved = {"phase": "Training", "progress": {"step": 11}}
    assert status_patch(TRAINING, moved, last_write=95.0, now=100.0, min_interval=10.0) is None
    only_progress = {"status": {"progress": {"step": 11}}}
    assert status_patch(TRAINING, moved, last_write=89.0, now=100.0, min_interval=10.0) == (
        only_progress
    )
    assert status_patch(TRAINING, moved, last_write=None, now=100.0, min_interval=10.0) == (
        only_progress
    )


def test_phase_change_is_written_at_once() -> None:
    done = {"phase": "Merging", "progress": {"step": 11}}
    assert status_patch(TRAINING, done, last_write=99.9, now=100.0, min_interval=10.0) == {
        "status": done
    }


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 applied as the API server applies a merge patch (the reference algorithm)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


RUNNING = {
    "phase": "Training",
    "conditions": [{"type": "Running", "status": "True", "reason": "Training"}],
    "progress": {
        "step": 10,
        "totalSteps": 100,
        "loss": 2.5,
        "eta": "1m",
        "updatedAt": "2025-06-01T10:00:00Z",
    },
    "gpuHours": 0.5,
    "jobName": "ftj-demo",
}


def test_a_progress_write_sends_only_what_moved_and_lands_on_the_wanted_status() -> None:
    wanted = {
        **RUNNING,
        "progress": {
            "step": 11,
            "totalSteps": 100,
            "loss": 2.4,
            "updatedAt": "2025-06-01T10:00:10Z",
        },
        "gpuHours": 0.51,
    }
    patch = status_patch(RUNNING, wanted, last_write=80.0, now=100.0, min_interval=10.0)
    assert patch == {
        "status": {
            "progress": {
                "step": 11,
                "loss": 2.4,
                "eta": None,  # gone from the trainer's answer: removed, not left stale
                "updatedAt": "2025-06-01T10:00:10Z",
            },
            "gpuHours": 0.51,
        }
    }
    assert merge(RUNNING, patch["status"]) == wanted


def test_a_phase_change_writes_the_whole_status() -> None:
    wanted = {**RUNNING, "phase": "Merging", "progress": {**RUNNING["progress"], "step": 100}}
    assert status_patch(RUNNING, wanted, 99.0, 100.0, 10.0) == {"status": wanted}


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        ({}, RUNNING),
        (RUNNING, {}),
        ({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"c": 1}}, "e": [1, 2]}),
        ({"a": [1, 2], "b": "x"}, {"a": [2], "b": "x"}),
        ({"a": {"b": 1}}, {"a": 5}),
        ({"a": 5}, {"a": {"b": 1}}),
    ],
)
def test_merge_diff_applied_to_current_gives_wanted(current: Any, wanted: Any) -> None:
    assert merge(current, merge_diff(current, wanted)) == wanted


def running(step: int, reason: str = "Training") -> dict[str, Any]:
    """A running job's status as observe_status writes it: the summary is in the messages."""
    message = f"Training: {step}/100"
    return {
        "phase": "Training",
        "message": message,
        "conditions": [
            {"type": "Running", "status": "True", "reason": reason, "message": message},
            {"type": "Suspended", "status": "False", "reason": "NotSuspended", "message": ""},
        ],
        "progress": {"step": step, "totalSteps": 100, "summary": f"{step}/100"},
    }


def test_a_running_jobs_summary_in_its_messages_is_progress_too() -> None:
    assert (
        status_patch(running(10), running(11), last_write=95.0, now=100.0, min_interval=10.0)
        is None
    )
    patch = status_patch(running(10), running(11), last_write=80.0, now=100.0, min_interval=10.0)
    assert patch is not None
    assert set(patch["status"]) == {"message", "conditions", "progress"}
    assert merge(running(10), patch["status"]) == running(11)


def test_a_new_reason_of_a_running_job_is_written_at_once() -> None:
    moved = running(11, reason="Evaluating")
    assert status_patch(running(10), moved, 99.0, 100.0, 10.0) == {"status": moved}


def test_a_message_change_of_a_job_that_is_not_running_is_written_at_once() -> None:
    # A failed job's message improves when the pod's termination message arrives after the
    # Job's verdict; no timer runs for finished jobs, so waiting would lose it.
    failed = {
        "phase": "Failed",
        "message": "BackoffLimitExceeded",
        "conditions": [{"type": "Running", "status": "False", "reason": "Failed", "message": "x"}],
    }
    better = {**failed, "message": "the trainer ran out of memory"}
    assert status_patch(failed, better, 99.0, 100.0, 10.0) == {"status": better}

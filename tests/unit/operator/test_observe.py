"""Status mapping: a table of Job/pod/progress states → phase, reasons, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from finetune_operator.observe import observe_status, progress_from

from .fixtures import (
    disruption,
    ftj,
    job_condition,
    k8s_job,
    pod,
    terminated,
    unschedulable,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
STAMP = "2025-06-01T12:00:00Z"
PROGRESS = {
    "phase": "Training",
    "step": 120,
    "totalSteps": 500,
    "epoch": 0.72,
    "percent": 24.0,
    "summary": "120/500 (24%)",
    "loss": 1.234,
    "learningRate": 0.0002,
    "tokensPerSecond": 5120.5,
    "etaSeconds": 3900,
    "eta": "1h05m",
    "updatedAt": "2025-06-01T11:59:55Z",
}
POLICY_MESSAGE = (
    "Container trainer for pod ml/ftj-demo-abcde failed with exit code 42 matching FailJob "
    "rule at index 0"
)
SCHEDULER_MESSAGE = (
    "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are "
    "available: 4 No preemption victims found for incoming pod."
)


@dataclass(frozen=True)
class Case:
    id: str
    job: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    phase: str = "Pending"
    reason: str = ""  # reason of the condition that explains the phase
    condition: str = "Running"  # which condition carries `reason`
    message_has: tuple[str, ...] = ()
    event: tuple[str, str] | None = None  # (type, reason) of an event that must be emitted


CASES = [
    Case("no-job-yet", None, reason="Creating", event=("Normal", "Creating")),
    Case("job-created-no-pods", k8s_job(), reason="JobCreated"),
    Case(
        "unschedulable",
        k8s_job(),
        [
            pod(
                phase="Pending",
                state={"waiting": {"reason": "ContainerCreating"}},
                conditions=unschedulable(SCHEDULER_MESSAGE),
                ip="",
            )
        ],
        reason="Unschedulable",
        message_has=("Insufficient nvidia.com/gpu",),
        event=("Warning", "Unschedulable"),
    ),
    Case(
        "image-pull-backoff",
        k8s_job(),
        [
            pod(
                phase="Pending",
                state={
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": (
                            'Back-off pulling image "ghcr.io/finetune-dev/finetune-trainer:0.1.0"'
                        ),
                    }
                },
            )
        ],
        reason="ImagePullBackOff",
        message_has=("ghcr.io/finetune-dev/finetune-trainer:0.1.0",),
        event=("Warning", "ImagePullBackOff"),
    ),
    Case(
        "err-image-pull",
        k8s_job(),
        [
            pod(
                phase="Pending",
                state={
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": "rpc error: code = NotFound desc = failed to pull and unpack",
                    }
                },
            )
        ],
        reason="ErrImagePull",
        message_has=("image ghcr.io/finetune-dev/finetune-trainer:0.1.0", "NotFound"),
    ),
    Case(
        "missing-secret",
        k8s_job(),
        [
            pod(
                phase="Pending",
                state={
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": 'secret "s3-credentials" not found',
                    }
                },
            )
        ],
        reason="CreateContainerConfigError",
        message_has=('secret "s3-credentials" not found',),
    ),
    Case(
        "running-no-progress-yet",
        k8s_job(active=1),
        [pod()],
        phase="Initializing",
        reason="Initializing",
        event=("Normal", "Initializing"),
    ),
    Case(
        "training",
        k8s_job(active=1),
        [pod()],
        PROGRESS,
        phase="Training",
        reason="Training",
        message_has=("120/500",),
        event=("Normal", "Training"),
    ),
    Case(
        "merging",
        k8s_job(active=1),
        [pod()],
        {**PROGRESS, "phase": "Merging"},
        phase="Merging",
        reason="Merging",
    ),
    Case(
        "uploading",
        k8s_job(active=1),
        [pod()],
        {**PROGRESS, "phase": "Uploading"},
        phase="Uploading",
        reason="Uploading",
    ),
    Case(
        "succeeded",
        k8s_job(
            job_condition("SuccessCriteriaMet", "CompletionsReached"),
            job_condition("Complete", "CompletionsReached"),
            completionTime="2025-06-01T11:58:00Z",
            succeeded=1,
        ),
        [
            pod(
                phase="Succeeded",
                state=terminated(
                    0,
                    "Completed",
                    {
                        "phase": "Succeeded",
                        "progress": {**PROGRESS, "step": 500, "percent": 100.0},
                        "artifacts": {
                            "adapter": "s3://finetunes/demo/adapter",
                            "merged": "s3://finetunes/demo/merged",
                            "manifest": "s3://finetunes/demo/MANIFEST.json",
                        },
                    },
                ),
            )
        ],
        phase="Succeeded",
        reason="Succeeded",
        condition="Succeeded",
        event=("Normal", "Succeeded"),
    ),
    Case(
        "invalid-input",
        k8s_job(
            job_condition(
                "FailureTarget",
                "PodFailurePolicy",
                POLICY_MESSAGE,
            ),
            job_condition(
                "Failed",
                "PodFailurePolicy",
                POLICY_MESSAGE,
            ),
            failed=1,
        ),
        [
            pod(
                phase="Failed",
                state=terminated(
                    42,
                    "Error",
                    {
                        "phase": "Failed",
                        "reason": "InvalidInput",
                        "message": "datasets[0] identity.jsonl line 17: missing column 'output'",
                    },
                ),
            )
        ],
        phase="Failed",
        reason="InvalidInput",
        condition="Failed",
        message_has=("line 17: missing column 'output'",),
        event=("Warning", "InvalidInput"),
    ),
    Case(
        # The trainer exited 0; the Job controller has not written Complete yet.
        "trainer-done-job-not-complete-yet",
        k8s_job(),
        [pod(phase="Succeeded", state=terminated(0, "Completed", {"phase": "Succeeded"}))],
        phase="Uploading",
        reason="Completing",
    ),
    Case(
        # The Job's verdict seen before the pod's termination state reached the operator.
        "invalid-input-before-pod-update",
        k8s_job(job_condition("Failed", "PodFailurePolicy", POLICY_MESSAGE), failed=1),
        [pod(phase="Running", state={"running": {"startedAt": "2025-06-01T10:00:00Z"}})],
        phase="Failed",
        reason="InvalidInput",
        condition="Failed",
        message_has=("exit code 42",),
    ),
    Case(
        "invalid-input-subreason",
        k8s_job(job_condition("Failed", "PodFailurePolicy"), failed=1),
        [
            pod(
                phase="Failed",
                state=terminated(
                    42,
                    "Error",
                    {
                        "phase": "Failed",
                        "reason": "OutputConflict",
                        "message": "s3://finetunes/demo holds the output of job ml/other/1234",
                    },
                ),
            )
        ],
        phase="Failed",
        reason="OutputConflict",
        condition="Failed",
        message_has=("ml/other",),
    ),
    Case(
        "deadline-exceeded",
        k8s_job(
            job_condition(
                "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
            )
        ),
        [pod(phase="Failed", state=terminated(143, "Error", "Terminated"))],
        phase="Failed",
        reason="DeadlineExceeded",
        condition="Failed",
        message_has=("longer than specified deadline",),
    ),
    Case(
        "backoff-limit-after-oom",
        k8s_job(
            job_condition(
                "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            ),
            failed=4,
        ),
        [
            pod(
                f"ftj-demo-{i}",
                "Failed",
                created=f"2025-06-01T10:0{i}:00Z",
                state=terminated(137, "OOMKilled", finished=f"2025-06-01T10:0{i}:30Z"),
            )
            for i in range(4)
        ],
        phase="Failed",
        reason="BackoffLimitExceeded",
        condition="Failed",
        message_has=("backoff limit", "OOMKilled", "batchSize", "gradientCheckpointing: always"),
    ),
    Case(
        "oom-then-retrying",
        k8s_job(failed=1),
        [
            pod("ftj-demo-old", "Failed", state=terminated(137, "OOMKilled")),
            pod(
                "ftj-demo-new",
                "Pending",
                created="2025-06-01T10:31:00Z",
                state={"waiting": {"reason": "ContainerCreating"}},
            ),
        ],
        reason="OOMKilled",
        condition="Interrupted",
        message_has=(
            "ran out of memory (memory limit 64Gi)",
            "cutoffLength",
            "gradientCheckpointing: always",
        ),
    ),
    Case(
        "oom-in-last-state-after-container-restart",
        k8s_job(active=1),
        [pod(restarts=1, last_state=terminated(137, "OOMKilled"))],
        phase="Initializing",
        reason="OOMKilled",
        condition="Interrupted",
    ),
    Case(
        "preempted",
        k8s_job(active=1),
        [
            pod(
                "ftj-demo-old",
                "Running",
                conditions=[
                    disruption(
                        "PreemptionByScheduler",
                        "ml/ftj-other: preempting to accommodate a higher priority pod",
                    )
                ],
            ),
            pod(
                "ftj-demo-new",
                "Pending",
                created="2025-06-01T10:31:00Z",
                state={"waiting": {"reason": "ContainerCreating"}},
            ),
        ],
        reason="Preempted",
        condition="Interrupted",
        message_has=("PreemptionByScheduler",),
        event=("Warning", "Preempted"),
    ),
    Case(
        "evicted",
        k8s_job(),
        [
            pod(
                "ftj-demo-old",
                "Failed",
                reason="Evicted",
                message="The node was low on resource: memory.",
                state=terminated(137, "Error"),
            )
        ],
        reason="Preempted",
        condition="Interrupted",
        message_has=("low on resource",),
    ),
    Case(
        "resumed-after-preemption",
        k8s_job(active=1),
        [
            pod(
                "ftj-demo-old",
                "Failed",
                conditions=[disruption("EvictionByEvictionAPI", "Eviction API: evicting")],
                state=terminated(143, "Error"),
            ),
            pod("ftj-demo-new", created="2025-06-01T10:31:00Z"),
        ],
        {**PROGRESS, "resumedFromStep": 100},
        phase="Training",
        reason="ResumedFromCheckpoint",
        condition="Resumed",
        message_has=("step 100",),
    ),
    Case(
        "suspended",
        k8s_job(suspend=True),
        [],
        spec={"suspend": True},
        phase="Suspended",
        reason="Suspended",
        condition="Suspended",
        event=("Normal", "Suspended"),
    ),
    Case(
        "queued-by-kueue",
        k8s_job(suspend=True),
        [],
        spec={"queueName": "gpu-queue"},
        reason="Queued",
        condition="Suspended",
        message_has=("gpu-queue",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_observe_table(case: Case) -> None:
    job = ftj(**case.spec)
    update = observe_status(job, case.job, case.pods, case.progress, NOW)
    status = update.status
    assert status.phase == case.phase
    assert status.observed_generation == 1
    conditions = {c.type: c for c in status.conditions}
    cond = conditions[case.condition]
    assert cond.reason == case.reason, cond
    assert cond.observed_generation == 1
    assert cond.last_transition_time == STAMP
    for fragment in case.message_has:
        assert fragment in cond.message, (fragment, cond.message)
    if case.event is not None:
        assert case.event in [(e.type, e.reason) for e in update.events], update.events
    assert status.to_wire()  # serializable, valid against the status model


def test_succeeded_copies_artifacts_progress_and_completion_time() -> None:
    case = next(c for c in CASES if c.id == "succeeded")
    status = observe_status(ftj(), case.job, case.pods, None, NOW).status
    assert status.artifacts is not None
    assert status.artifacts.manifest == "s3://finetunes/demo/MANIFEST.json"
    assert status.progress is not None and status.progress.step == 500
    assert status.completion_time == "2025-06-01T11:58:00Z"
    assert status.start_time == "2025-06-01T10:00:00Z"


def test_progress_is_copied_while_training() -> None:
    status = observe_status(ftj(), k8s_job(active=1), [pod()], PROGRESS, NOW).status
    assert status.progress is not None
    assert status.progress.to_wire() == {k: v for k, v in PROGRESS.items() if k != "phase"}
    assert status.job_name == "ftj-demo"


def test_bad_progress_values_are_dropped_not_fatal() -> None:
    progress = progress_from({"step": -3, "loss": float("nan"), "totalSteps": 10, "unknown": 1})
    assert progress is not None and progress.to_wire() == {"totalSteps": 10}


def test_restarts_count_failed_pods_and_container_restarts() -> None:
    pods = [
        pod("a", "Failed", state=terminated(1)),
        pod("b", restarts=2, created="2025-06-01T10:40:00Z"),
    ]
    status = observe_status(ftj(), k8s_job(failed=1, active=1), pods, None, NOW).status
    assert status.restarts == 3


def test_last_transition_time_kept_while_status_unchanged() -> None:
    first = observe_status(ftj(), k8s_job(active=1), [pod()], PROGRESS, NOW).status
    later = datetime(2025, 6, 1, 12, 5, tzinfo=timezone.utc)
    job = ftj(status=first.to_wire())
    second = observe_status(job, k8s_job(active=1), [pod()], {**PROGRESS, "step": 200}, later)
    running = {c.type: c for c in second.status.conditions}["Running"]
    assert running.last_transition_time == STAMP
    assert second.events == ()  # same phase: no event
    done = k8s_job(job_condition("Complete", "CompletionsReached"))
    third = observe_status(ftj(status=second.status.to_wire()), done, [], None, later)
    running = {c.type: c for c in third.status.conditions}["Running"]
    assert running.status == "False" and running.last_transition_time == "2025-06-01T12:05:00Z"


def test_previous_progress_and_artifacts_survive_when_pods_are_gone() -> None:
    first = observe_status(ftj(), k8s_job(active=1), [pod()], PROGRESS, NOW).status
    second = observe_status(ftj(status=first.to_wire()), k8s_job(), [], None, NOW).status
    assert second.progress == first.progress


def test_stale_progress_of_a_previous_pod_is_not_used_while_pending() -> None:
    pending = pod(phase="Pending", state={"waiting": {"reason": "ContainerCreating"}})
    status = observe_status(ftj(), k8s_job(), [pending], PROGRESS, NOW).status
    assert status.phase == "Pending"


def test_messages_never_carry_secret_looking_values() -> None:
    leaked = terminated(1, "Error", "boto failed: aws_secret_access_key=AKIAxxxxSECRET123 denied")
    status = observe_status(ftj(), k8s_job(), [pod(phase="Failed", state=leaked)], None, NOW).status
    text = " ".join(c.message for c in status.conditions) + (status.message or "")
    assert "AKIAxxxxSECRET123" not in text
    assert "aws_secret_access_key=***" in text


def two_node_attempts(rounds: int, *, failing: str) -> list[dict[str, Any]]:
    """The pods of a 2-node job whose node ``failing`` crashed ``rounds`` times; each time the
    other node's torchrun failed too, a moment later, when the rendezvous broke."""
    pods = []
    for attempt in range(rounds):
        for index in ("0", "1"):
            crashed = index == failing
            message = (
                {"phase": "Failed", "reason": "TrainerFailed", "message": f"NCCL timeout {attempt}"}
                if crashed
                else "torch.distributed.elastic.rendezvous.api.RendezvousClosedError"
            )
            pods.append(
                pod(
                    f"ftj-demo-{index}-try{attempt}",
                    "Failed",
                    index=index,
                    created=f"2025-06-01T10:{10 * attempt:02d}:00Z",
                    state=terminated(
                        1,
                        message=message,
                        finished=f"2025-06-01T10:{10 * attempt + 5 + (not crashed):02d}:00Z",
                    ),
                )
            )
    return pods


def test_a_node_out_of_retries_fails_the_job_naming_that_node() -> None:
    """nodes: 2, backoffLimit: 2 (per node). Node 1 crashed three times; node 0 failed with it
    each time. The Job controller gives up on index 1 (maxFailedIndexes: 0): the reason says
    which node it was and how it last failed, not the peer's echo of it."""
    job = ftj(resources={"gpus": 8, "nodes": 2}, backoffLimit=2)
    k8s = k8s_job(
        job_condition(
            "FailureTarget",
            "MaxFailedIndexesExceeded",
            "Job has exceeded the specified maximal number of failed indexes",
        ),
        job_condition(
            "Failed",
            "MaxFailedIndexesExceeded",
            "Job has exceeded the specified maximal number of failed indexes",
        ),
        failed=6,
        failedIndexes="1",
    )
    update = observe_status(job, k8s, two_node_attempts(3, failing="1"), None, NOW)
    status = update.status
    assert status.phase == "Failed"
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "NodeFailed"
    assert failed.message.startswith(
        "node 1 of 2 (Job index 1) failed more often than spec.backoffLimit (2) allows each node"
    ), failed.message
    # Its last failure, from its own pod's termination message.
    assert "node 1's last failure: TrainerFailed: pod ftj-demo-1-try2 (node 1)" in failed.message
    assert "NCCL timeout 2" in failed.message
    assert "node 0" not in failed.message and "Rendezvous" not in failed.message
    assert ("Warning", "NodeFailed") in [(e.type, e.reason) for e in update.events]

    # The other node, the same way: the message follows status.failedIndexes.
    k8s["status"]["failedIndexes"] = "0"
    status = observe_status(job, k8s, two_node_attempts(3, failing="0"), None, NOW).status
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.message.startswith("node 0 of 2 (Job index 0)"), failed.message
    assert "pod ftj-demo-0-try2 (node 0)" in failed.message


def test_a_multi_node_interruption_names_the_node_of_the_failed_pod() -> None:
    """While the Job retries, the Interrupted condition says on which node the trainer failed."""
    job = ftj(resources={"gpus": 8, "nodes": 2})
    crashed = pod(
        "ftj-demo-1-old",
        "Failed",
        index="1",
        state=terminated(
            1, message={"phase": "Failed", "reason": "TrainerFailed", "message": "boom"}
        ),
    )
    running = [pod(f"ftj-demo-{i}-new", index=str(i), created="2025-06-01T10:40:00Z") for i in "01"]
    status = observe_status(
        job, k8s_job(active=2, failed=1), [crashed, *running], PROGRESS, NOW
    ).status
    interrupted = next(c for c in status.conditions if c.type == "Interrupted")
    assert interrupted.reason == "TrainerFailed"
    assert "pod ftj-demo-1-old (node 1) exited with code 1: boom" in interrupted.message


FRESH = (
    "output s3://finetunes/demo held checkpoints of ml/demo (uid old), trained with another "
    "recipe (spec.datasets[0] content (sha256 1a2b… → 3c4d…)): they were removed and training "
    "starts from step 0"
)


def test_a_recreated_job_that_started_fresh_says_so_once() -> None:
    """The trainer removed an earlier job's checkpoints (another recipe): a condition and one
    Normal Event say what differed; they stay after the job succeeds."""
    running = observe_status(
        ftj(), k8s_job(active=1), [pod()], {**PROGRESS, "startedFresh": FRESH}, NOW
    )
    resumed = {c.type: c for c in running.status.conditions}["Resumed"]
    assert (resumed.status, resumed.reason) == ("False", "StartedFresh")
    assert "spec.datasets[0] content" in resumed.message
    assert [(e.type, e.reason) for e in running.events if e.reason == "StartedFresh"] == [
        ("Normal", "StartedFresh")
    ]
    assert "startedFresh" not in running.status.progress.to_wire()  # type: ignore[union-attr]

    again = observe_status(
        ftj(status=running.status.to_wire()),
        k8s_job(active=1),
        [pod()],
        {**PROGRESS, "step": 130, "startedFresh": FRESH},
        NOW,
    )
    assert not [e for e in again.events if e.reason == "StartedFresh"]

    summary = {"phase": "Succeeded", "progress": {**PROGRESS, "startedFresh": FRESH}}
    done = observe_status(
        ftj(),
        k8s_job(job_condition("Complete", "CompletionsReached")),
        [pod(phase="Succeeded", state=terminated(0, "Completed", summary))],
        None,
        NOW,
    )
    assert {c.type: c for c in done.status.conditions}["Resumed"].reason == "StartedFresh"


def test_a_job_without_a_fresh_start_has_no_resumed_condition() -> None:
    status = observe_status(ftj(), k8s_job(active=1), [pod()], PROGRESS, NOW).status
    assert "Resumed" not in {c.type for c in status.conditions}

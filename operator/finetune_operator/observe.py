"""Job, pods and trainer progress → FineTuneJob status. Pure: everything comes in as arguments.

The inputs are the objects as the API server returns them (``status`` written by the Job
controller, the scheduler and the kubelet) and the trainer's ``/progress`` JSON; the output is
the complete new status plus the Events worth telling a person about. The status is recomputed
from scratch each time (level-triggered, as controllers should be:
https://kubernetes.io/docs/concepts/architecture/controller/#desired-versus-current-state);
only ``lastTransitionTime``, ``startTime``, ``restarts`` and the last known progress and
artifacts carry over from the previous status.

Where each reason comes from:

=====================  ==========================================================================
Unschedulable          pod condition ``PodScheduled=False, reason=Unschedulable`` (scheduler)
ImagePullBackOff,      trainer container ``state.waiting.reason`` (kubelet)
ErrImagePull
OOMKilled              trainer container ``state``/``lastState.terminated.reason`` (kubelet)
InvalidInput           trainer exit code 42; message from the termination message JSON
DeadlineExceeded,      Job condition ``Failed=True`` reason (Job controller)
BackoffLimitExceeded
NodeFailed             ``nodes > 1``: Job ``Failed=True`` reason ``MaxFailedIndexesExceeded``; the
                       node: the Job's ``status.failedIndexes``; its last failure: the pods with
                       that ``batch.kubernetes.io/job-completion-index`` annotation
Preempted              pod condition ``DisruptionTarget=True`` or pod ``reason: Evicted``
                       (https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions)
ResumedFromCheckpoint  ``resumedFromStep > 0`` in the progress or the termination message
StartedFresh           ``startedFresh`` in the progress or the termination message: the output
                       held checkpoints of an earlier job of this name with another recipe; the
                       trainer removed them (condition ``Resumed=False``, a Normal Event)
OutOfMemoryReplanned   ``memoryReplan`` in the progress or the termination message (the trainer
                       ran out of GPU memory and went on with a smaller plan)
OutOfMemory            trainer exit code 42 with that reason: no smaller plan fits
Stopped                trainer exit code 143: SIGTERM, checkpoint saved and uploaded
BudgetExceeded         ``status.gpuHours`` reached ``spec.limits.maxGPUHours`` (gpu_usage.py): the
                       Job is suspended (SIGTERM: checkpoint, exit), then the job fails
Tracking condition     ``tracking`` in the progress or the termination message (tracking_report.py)
=====================  ==========================================================================
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from finetune_api import FineTuneJob, contract
from finetune_api.status import Artifacts, Condition, FineTuneJobStatus, Progress
from pydantic import ValidationError

from finetune_operator import gpu_usage, naming
from finetune_operator.tracking_report import tracking_condition

K8sObject = Mapping[str, Any]

ACTIVE_PHASES = ("Initializing", "Training", "Merging", "Uploading")
WAITING_REASONS_SHOWN = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)
WARNING_REASONS = frozenset(
    {
        *WAITING_REASONS_SHOWN,
        "Unschedulable",
        "OOMKilled",
        "OutOfMemory",
        "OutOfMemoryReplanned",
        "Preempted",
        "TrainerFailed",
        "InvalidInput",
        "DeadlineExceeded",
        "BackoffLimitExceeded",
        "BudgetExceeded",
        "NodeFailed",
    }
)
OOM_HINT = (
    "reduce spec.training.batchSize or spec.training.cutoffLength, or set "
    "spec.training.gradientCheckpointing: always (or raise spec.resources.memory)"
)
MAX_MESSAGE = 2048
# The Job controller's reasons for an Indexed Job whose index ran out of backoffLimitPerIndex
# (with maxFailedIndexes: 0 the first; the second once every index has finished).
FAILED_INDEX_REASONS = ("MaxFailedIndexesExceeded", "FailedIndexes")
CONDITION_ORDER = {
    "Running": 0,
    "Suspended": 1,
    "Succeeded": 2,
    "Failed": 3,
    "Interrupted": 4,
    "Resumed": 5,
    "MemoryReplanned": 6,
}

_SECRETISH = re.compile(
    r"(?i)(aws_secret_access_key|secret_access_key|password|token|authorization)(\s*[=:]\s*|\s+)\S+"
)


# The Event API caps messages at 1 KiB for the fields kubectl shows; every Event built here is
# clipped to it (clean_message), so events.py posts the message as it is.
EVENT_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the FineTuneJob (its message within EVENT_MESSAGE_LIMIT)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class StatusUpdate:
    """The new status and the Events that describe how it differs from the previous one."""

    status: FineTuneJobStatus
    events: tuple[Event, ...]
    # The GPU budget is spent and the Job still runs: suspend it (its pods get SIGTERM).
    stop_job: bool = False

    @property
    def phase(self) -> str:
        """The new phase (always set)."""
        return self.status.phase or "Pending"


@dataclass(frozen=True)
class _Termination:
    """One terminated run of the trainer container."""

    pod_name: str
    node: str | None  # the completion index of a multi-node job's pod; None on one node
    exit_code: int
    reason: str
    finished_at: str
    summary: Mapping[str, Any]
    raw_message: str
    memory_limit: str | None


@dataclass(frozen=True)
class _Verdict:
    phase: str
    reason: str
    message: str
    running: bool


# --- small readers over API objects -----------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """``2025-01-31T12:00:00Z``: the timestamp format of the Kubernetes API."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def clean_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message safe for status and events: secret-looking values masked, length capped."""
    text = _SECRETISH.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _true_condition(obj: K8sObject | None, type_: str) -> Mapping[str, Any] | None:
    for cond in _get(obj, "status", "conditions") or ():
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _condition(obj: K8sObject, type_: str) -> Mapping[str, Any] | None:
    for cond in _get(obj, "status", "conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


def _trainer_status(pod: K8sObject) -> Mapping[str, Any] | None:
    for status in _get(pod, "status", "containerStatuses") or ():
        if status.get("name") == contract.CONTAINER_NAME:
            return dict(status)
    return None


def _container_image(pod: K8sObject) -> str:
    for container in _get(pod, "spec", "containers") or ():
        if container.get("name") == contract.CONTAINER_NAME:
            return str(container.get("image") or "")
    return ""


def _memory_limit(pod: K8sObject) -> str | None:
    for container in _get(pod, "spec", "containers") or ():
        if container.get("name") == contract.CONTAINER_NAME:
            limit = _get(container, "resources", "limits", "memory")
            return str(limit) if limit is not None else None
    return None


def parse_termination_message(message: str | None) -> Mapping[str, Any]:
    """The trainer's JSON summary; ``{}`` when the message is logs (FallbackToLogsOnError)."""
    if not message:
        return {}
    try:
        data = json.loads(message)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _terminations(pods: Iterable[K8sObject]) -> list[_Termination]:
    """Every terminated trainer run, oldest first (a pod's lastState, then its state)."""
    found: list[_Termination] = []
    for pod in pods:
        status = _trainer_status(pod)
        if not status:
            continue
        for where in ("lastState", "state"):
            term = _get(status, where, "terminated")
            if not term:
                continue
            raw = str(term.get("message") or "")
            found.append(
                _Termination(
                    pod_name=str(_get(pod, "metadata", "name") or ""),
                    node=_completion_index(pod),
                    exit_code=int(term.get("exitCode", 0)),
                    reason=str(term.get("reason") or ""),
                    finished_at=str(term.get("finishedAt") or ""),
                    summary=parse_termination_message(raw),
                    raw_message=raw,
                    memory_limit=_memory_limit(pod),
                )
            )
    found.sort(key=lambda t: t.finished_at)
    return found


def _is_active(pod: K8sObject) -> bool:
    return _get(pod, "status", "phase") in (None, "Pending", "Running") and not _get(
        pod, "metadata", "deletionTimestamp"
    )


def _completion_index(pod: K8sObject) -> str | None:
    index = _get(pod, "metadata", "annotations", naming.COMPLETION_INDEX_ANNOTATION)
    return str(index) if index is not None else None


def _is_rank0(pod: K8sObject) -> bool:
    return _completion_index(pod) in (None, "0")


def parse_index_set(text: str | None) -> list[int]:
    """``"1,3-5"`` (the format of a Job's ``status.failedIndexes``) → ``[1, 3, 4, 5]``."""
    found: list[int] = []
    for part in (text or "").split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            found.extend(range(int(first), int(last or first) + 1))
    return found


def _created(pod: K8sObject) -> str:
    return str(_get(pod, "metadata", "creationTimestamp") or "")


def _disruption(pod: K8sObject) -> str | None:
    """Why the pod was disrupted (preempted, evicted, drained), or None."""
    cond = _true_condition(pod, "DisruptionTarget")
    if cond:
        return f"{cond.get('reason', 'DisruptionTarget')}: {cond.get('message', '')}".strip(": ")
    if _get(pod, "status", "reason") in ("Evicted", "Preempting"):
        return f"{_get(pod, 'status', 'reason')}: {_get(pod, 'status', 'message') or ''}".strip(
            ": "
        )
    return None


# --- progress -----------------------------------------------------------------------------------

_PROGRESS_KEYS = {(field.alias or name): name for name, field in Progress.model_fields.items()}


def progress_from(data: Mapping[str, Any] | None) -> Progress | None:
    """The ``status.progress`` part of a /progress answer; unknown or invalid keys are dropped.

    A trainer that reports a bad value (NaN loss, a negative step) must not block the whole
    status write: the API server refuses non-finite numbers and out-of-range values.
    """
    if not data:
        return None
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _PROGRESS_KEYS or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        try:
            Progress.model_validate({key: value})
        except ValidationError:
            continue
        kept[key] = value
    return Progress.model_validate(kept) if kept else None


def _memory_replan(
    progress: Mapping[str, Any] | None, terms: list[_Termination]
) -> tuple[str, str] | None:
    """Reason and message of the trainer's latest re-plan after an out-of-memory error
    (``memoryReplan`` in /progress, or in the last termination message's progress)."""
    found = _get(progress, "memoryReplan")
    for term in reversed(terms):
        if found:
            break
        found = _get(term.summary, "progress", "memoryReplan")
    if not isinstance(found, Mapping):
        return None
    count = found.get("count") or 1
    message = (
        f"out of GPU memory at step {found.get('step')}; re-planned ({count} time(s)) from "
        f"[{found.get('before')}] to [{found.get('after')}]"
    )
    return "OutOfMemoryReplanned", message


def _started_fresh(progress: Mapping[str, Any] | None, terms: list[_Termination]) -> str | None:
    """Why the trainer removed the output's earlier checkpoints (``startedFresh`` in /progress,
    or in the last termination message's progress); None when it did not."""
    found = _get(progress, "startedFresh")
    for term in reversed(terms):
        if found:
            break
        found = _get(term.summary, "progress", "startedFresh")
    return found if isinstance(found, str) and found else None


def _resumed_from(progress: Mapping[str, Any] | None, terms: list[_Termination]) -> int:
    candidates = [_get(progress, "resumedFromStep")]
    candidates += [t.summary.get("resumedFromStep") for t in terms[-1:]]
    for value in candidates:
        if isinstance(value, int) and value > 0:
            return value
    return 0


# --- the decision -------------------------------------------------------------------------------


def _failure_of(term: _Termination) -> tuple[str, str]:
    """Reason and message of one failed trainer run."""
    summary_reason = term.summary.get("reason")
    summary_message = str(term.summary.get("message") or "")
    pod = f"pod {term.pod_name}" + (f" (node {term.node})" if term.node is not None else "")
    if term.reason == "OOMKilled" or term.exit_code == 137 and not term.summary:
        limit = f" (memory limit {term.memory_limit})" if term.memory_limit else ""
        message = f"the trainer in {pod} ran out of memory{limit}: {OOM_HINT}"
        return "OOMKilled", message
    named = summary_reason if isinstance(summary_reason, str) and summary_reason else None
    if term.exit_code == contract.EXIT_INVALID_INPUT:
        return named or "InvalidInput", summary_message or term.raw_message or "input refused"
    reason = named or "TrainerFailed"
    detail = summary_message or term.raw_message or term.reason or "no message"
    return reason, f"{pod} exited with code {term.exit_code}: {detail}"


def _failed_nodes(job: FineTuneJob, k8s_job: K8sObject, terms: list[_Termination]) -> str:
    """Which node of a multi-node job used up its retries, and how it last failed.

    One node's failure usually makes its peers fail too (their collectives lose a member), so
    every index fails about as often; the one the Job lists in ``status.failedIndexes`` is the
    first whose retries ran out, normally the node whose failures started each round, and its
    own last failure (not its peers' echo of it) is the lead to follow.
    """
    nodes = job.spec.resources.nodes
    failed = parse_index_set(_get(k8s_job, "status", "failedIndexes"))
    which = ", ".join(str(i) for i in failed) or "?"
    message = (
        f"node {which} of {nodes} (Job index {which}) failed more often than spec.backoffLimit "
        f"({job.spec.backoff_limit}) allows each node"
    )
    for index in failed:
        own = [t for t in terms if t.node == str(index) and t.exit_code != 0]
        if own:
            reason, detail = _failure_of(own[-1])
            message += f"; node {index}'s last failure: {reason}: {detail}"
    return message


def _pending_verdict(job: FineTuneJob, k8s_job: K8sObject, pods: list[K8sObject]) -> _Verdict:
    active = sorted((p for p in pods if _is_active(p)), key=_created)
    for pod in active:
        status = _trainer_status(pod) or {}
        waiting = _get(status, "state", "waiting") or {}
        if waiting.get("reason") in WAITING_REASONS_SHOWN:
            image = status.get("image") or _container_image(pod)
            message = f"image {image}: {waiting.get('message') or waiting['reason']}"
            return _Verdict("Pending", str(waiting["reason"]), message, False)
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False":
            reason = str(scheduled.get("reason") or "Unschedulable")
            message = str(scheduled.get("message") or "no node fits the pod")
            return _Verdict("Pending", reason, message, False)
    rank0 = [p for p in active if _is_rank0(p)] or active
    if rank0:
        pod = rank0[-1]
        running = _get(_trainer_status(pod), "state", "running") is not None
        if running:
            return _Verdict(
                "Initializing",
                "Initializing",
                f"pod {_get(pod, 'metadata', 'name')} is running",
                True,
            )
        return _Verdict(
            "Pending", "PodStarting", f"pod {_get(pod, 'metadata', 'name')} is starting", False
        )
    if any(_get(p, "status", "phase") == "Succeeded" and _is_rank0(p) for p in pods):
        # The trainer has exited 0 but the Job controller has not marked the Job Complete
        # yet (a separate watch event): keep the last active phase instead of going back to
        # Pending for a moment.
        return _Verdict(
            "Uploading",
            "Completing",
            "the trainer finished; waiting for the Job to complete",
            False,
        )
    if any(_get(p, "status", "phase") == "Failed" for p in pods):
        return _Verdict(
            "Pending", "Restarting", "waiting for the Job to start a new trainer pod", False
        )
    return _Verdict(
        "Pending",
        "JobCreated",
        f"waiting for pods of Job {_get(k8s_job, 'metadata', 'name')}",
        False,
    )


def _verdict(
    job: FineTuneJob,
    k8s_job: K8sObject | None,
    pods: list[K8sObject],
    progress: Mapping[str, Any] | None,
    terms: list[_Termination],
    refusal: tuple[str, str] | None = None,
) -> _Verdict:
    if k8s_job is None:
        if refusal is not None:
            return _Verdict("Failed", refusal[0], refusal[1], False)
        return _Verdict("Pending", "Creating", "creating the Kubernetes Job", False)
    if _true_condition(k8s_job, "Complete") or _true_condition(k8s_job, "SuccessCriteriaMet"):
        return _Verdict(
            "Succeeded", "Succeeded", "training finished and artifacts were published", False
        )
    failed = _true_condition(k8s_job, "Failed") or _true_condition(k8s_job, "FailureTarget")
    if failed:
        invalid = [t for t in terms if t.exit_code == contract.EXIT_INVALID_INPUT]
        if invalid:
            reason, message = _failure_of(invalid[-1])
            return _Verdict("Failed", reason, message, False)
        job_reason = str(failed.get("reason") or "Failed")
        message = str(failed.get("message") or job_reason)
        if job_reason in FAILED_INDEX_REASONS:
            return _Verdict("Failed", "NodeFailed", _failed_nodes(job, k8s_job, terms), False)
        if (
            job_reason == "PodFailurePolicy"
            and f"exit code {contract.EXIT_INVALID_INPUT}" in message
        ):
            # The Job's verdict can be seen before the pod's termination state (two watch
            # streams): the exit code alone already says the input was refused. The trainer's
            # own message replaces this one as soon as the pod update arrives.
            return _Verdict(
                "Failed", "InvalidInput", f"the trainer refused its input: {message}", False
            )
        failures = [t for t in terms if t.exit_code != 0]
        if failures:
            last_reason, last_message = _failure_of(failures[-1])
            message = f"{message}; last failure: {last_reason}: {last_message}"
        return _Verdict("Failed", job_reason, message, False)
    if job.spec.suspend:
        return _Verdict(
            "Suspended", "Suspended", "spec.suspend is true: pods removed until resumed", False
        )
    if _get(k8s_job, "spec", "suspend"):
        if job.spec.queue_name:
            return _Verdict(
                "Pending",
                "Queued",
                f"waiting for Kueue to admit the Job from LocalQueue {job.spec.queue_name}",
                False,
            )
        return _Verdict("Pending", "Resuming", "unsuspending the Job", False)
    verdict = _pending_verdict(job, k8s_job, pods)
    if verdict.running:
        reported = _get(progress, "phase")
        if reported in ACTIVE_PHASES:
            summary = _get(progress, "summary")
            message = f"{reported}" + (f": {summary}" if summary else "")
            return _Verdict(str(reported), str(reported), message, True)
    return verdict


def _interruption(pods: list[K8sObject], terms: list[_Termination]) -> tuple[str, str] | None:
    """Reason and message of the newest pod that ended early (preempted, OOM, crashed)."""
    disrupted = [(p, d) for p in pods if (d := _disruption(p))]
    if disrupted:
        pod, detail = max(disrupted, key=lambda pd: _created(pd[0]))
        name = _get(pod, "metadata", "name")
        return "Preempted", (
            f"pod {name} was disrupted ({detail}); the Job starts a new pod that resumes "
            "from the last checkpoint"
        )
    failures = [t for t in terms if t.exit_code != 0]
    if failures:
        return _failure_of(failures[-1])
    return None


def _merge_conditions(
    previous: list[Condition],
    wanted: list[tuple[str, str, str, str]],
    now: str,
    generation: int | None,
) -> list[Condition]:
    """``wanted`` (type, status, reason, message) merged into ``previous``.

    ``lastTransitionTime`` only moves when the status changes (metav1.Condition semantics:
    https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#typical-status-properties);
    types not computed this time are kept as they were.
    """
    by_type = {c.type: c for c in previous}
    for type_, status, reason, message in wanted:
        old = by_type.get(type_)
        since = old.last_transition_time if old is not None and old.status == status else now
        by_type[type_] = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=clean_message(message),
            last_transition_time=since,
            observed_generation=generation,
        )
    return sorted(by_type.values(), key=lambda c: (CONDITION_ORDER.get(c.type, 99), c.type))


def _start_time(
    previous: str | None, k8s_job: K8sObject | None, pods: list[K8sObject]
) -> str | None:
    if previous:
        return previous
    starts = sorted(str(s) for p in pods if (s := _get(p, "status", "startTime")))
    if starts:
        return starts[0]
    start = _get(k8s_job, "status", "startTime")
    return str(start) if start and pods else None


def _events(old: FineTuneJobStatus, new: FineTuneJobStatus, verdict: _Verdict) -> list[Event]:
    events: list[Event] = []

    def kind(reason: str) -> Literal["Normal", "Warning"]:
        return "Warning" if reason in WARNING_REASONS or verdict.phase == "Failed" else "Normal"

    old_running = next((c for c in old.conditions if c.type == "Running"), None)
    if new.phase != old.phase or (
        old_running is not None and not verdict.running and old_running.reason != verdict.reason
    ):
        events.append(
            Event(
                kind(verdict.reason),
                verdict.reason,
                clean_message(verdict.message, EVENT_MESSAGE_LIMIT),
            )
        )
    old_by_type = {c.type: c for c in old.conditions}
    for cond in new.conditions:
        if cond.type not in ("Interrupted", "Resumed", "MemoryReplanned") or (
            cond.status != "True" and cond.reason != "StartedFresh"
        ):
            continue
        before = old_by_type.get(cond.type)
        if before is None or (before.status, before.reason, before.message) != (
            cond.status,
            cond.reason,
            cond.message,
        ):
            events.append(
                Event(
                    kind(cond.reason), cond.reason, clean_message(cond.message, EVENT_MESSAGE_LIMIT)
                )
            )
    tracking = next((c for c in new.conditions if c.type == "Tracking"), None)
    before = old_by_type.get("Tracking")
    if tracking is not None and (before is None or before.reason != tracking.reason):
        severity: Literal["Normal", "Warning"] = (
            "Normal" if tracking.status == "True" else "Warning"
        )
        events.append(
            Event(severity, tracking.reason, clean_message(tracking.message, EVENT_MESSAGE_LIMIT))
        )
    return events


def _budget_verdict(
    job: FineTuneJob, k8s_job: K8sObject | None, pods: list[K8sObject], hours: float, now: _Verdict
) -> tuple[_Verdict, bool]:
    """The GPU budget is spent: stop the Job (its pods save a checkpoint on SIGTERM), then fail.

    Returns the verdict and whether the Job must (still) be suspended.
    """
    stopped = bool(_get(k8s_job, "spec", "suspend")) and not any(_is_active(p) for p in pods)
    message = gpu_usage.budget_message(job, hours, stopped)
    if stopped:
        return _Verdict("Failed", "BudgetExceeded", message, False), False
    phase = now.phase if now.phase in ACTIVE_PHASES else "Pending"
    return _Verdict(phase, "BudgetExceeded", message, False), not _get(k8s_job, "spec", "suspend")


def observe_status(
    job: FineTuneJob,
    k8s_job: K8sObject | None,
    pods: Sequence[K8sObject],
    progress: Mapping[str, Any] | None,
    now: datetime,
    refusal: tuple[str, str] | None = None,
    gpu_hour_price: float | None = None,
    currency: str = "USD",
) -> StatusUpdate:
    """The status a FineTuneJob should have, given its Job, its pods and the latest progress.

    ``progress`` is the rank-0 trainer's ``/progress`` answer for the pod running now (or None);
    ``job.status`` is the status as last written, used for what must carry over. ``refusal``
    (reason, message): the operator refused to create the Job, so the job failed without one.
    ``gpu_hour_price`` (in ``currency``): the operator's price, for ``status.cost``.
    """
    old = job.status or FineTuneJobStatus()
    stamp = rfc3339(now)
    generation = job.metadata.generation
    pods = list(pods)
    terms = _terminations(pods)
    verdict = _verdict(job, k8s_job, pods, progress, terms, refusal)
    usage = gpu_usage.count_gpu_hours(
        gpu_usage.GpuHours.of(old.gpu_hours, old.gpu_hours_as_of),
        pods,
        gpu_usage.gpus_per_pod(job),
        now,
    )
    stop_job = False
    if gpu_usage.budget_spent(job, usage.hours) and verdict.phase not in ("Succeeded", "Failed"):
        verdict, stop_job = _budget_verdict(job, k8s_job, pods, usage.hours, verdict)
    terminal = verdict.phase in ("Succeeded", "Failed")

    final = next((t.summary for t in reversed(terms) if t.summary.get("progress")), {})
    live = progress_from(progress) if verdict.running else None
    new_progress = live or progress_from(final.get("progress")) or old.progress
    if verdict.phase == "Succeeded" and new_progress is not None and new_progress.total_steps:
        new_progress = new_progress.model_copy(
            update={"step": new_progress.total_steps, "percent": 100.0}
        )

    artifacts = old.artifacts
    for term in reversed(terms):
        found = term.summary.get("artifacts")
        if isinstance(found, Mapping):
            try:
                artifacts = Artifacts.model_validate(found)
            except ValidationError:
                continue
            break

    held = verdict.phase == "Suspended" or verdict.reason == "Queued"
    wanted: list[tuple[str, str, str, str]] = [
        ("Running", "True" if verdict.running else "False", verdict.reason, verdict.message),
        (
            ("Suspended", "True", verdict.reason, verdict.message)
            if held
            else ("Suspended", "False", "NotSuspended", "")
        ),
    ]
    if verdict.phase == "Succeeded":
        wanted.append(("Succeeded", "True", verdict.reason, verdict.message))
        wanted.append(("Failed", "False", "Succeeded", ""))
    if verdict.phase == "Failed":
        wanted.append(("Failed", "True", verdict.reason, verdict.message))
        wanted.append(("Succeeded", "False", verdict.reason, ""))
    interruption = _interruption(pods, terms)
    # A failure that already is the job's Failed reason isn't an interruption as well.
    if interruption is not None and not (terminal and interruption[0] == verdict.reason):
        wanted.append(("Interrupted", "True", *interruption))
    replan = _memory_replan(progress if verdict.running else None, terms)
    if replan is not None:
        wanted.append(("MemoryReplanned", "True", *replan))
    fresh = _started_fresh(progress if verdict.running else None, terms)
    if fresh is not None:  # a later resume from this run's own checkpoints replaces it
        wanted.append(("Resumed", "False", "StartedFresh", fresh))
    resumed = _resumed_from(progress if verdict.running else None, terms)
    if resumed:
        message = f"training resumed from the checkpoint at step {resumed}"
        wanted.append(("Resumed", "True", "ResumedFromCheckpoint", message))
    tracking = tracking_condition(
        progress if verdict.running else None, [t.summary for t in reversed(terms)]
    )
    if tracking is not None:
        wanted.append(tracking)

    failed_pods = sum(1 for p in pods if _get(p, "status", "phase") == "Failed")
    restarts_now = max(failed_pods, int(_get(k8s_job, "status", "failed") or 0)) + sum(
        int((_trainer_status(p) or {}).get("restartCount") or 0) for p in pods
    )

    completion = old.completion_time
    if terminal and not completion:
        cond = _true_condition(k8s_job, "Complete" if verdict.phase == "Succeeded" else "Failed")
        completion = str(
            _get(k8s_job, "status", "completionTime")
            or (cond or {}).get("lastTransitionTime")
            or stamp
        )

    new = FineTuneJobStatus(
        phase=verdict.phase,
        conditions=_merge_conditions(old.conditions, wanted, stamp, generation),
        progress=new_progress,
        artifacts=artifacts,
        start_time=_start_time(old.start_time, k8s_job, pods),
        completion_time=completion,
        restarts=max(old.restarts or 0, restarts_now),
        gpu_hours=usage.hours,
        gpu_hours_as_of=rfc3339(usage.as_of) if usage.as_of else None,
        cost=gpu_usage.estimated_cost(usage.hours, gpu_hour_price, currency),
        job_name=old.job_name or (str(_get(k8s_job, "metadata", "name")) if k8s_job else None),
        observed_generation=generation,
        message=clean_message(verdict.message),
    )
    return StatusUpdate(status=new, events=tuple(_events(old, new, verdict)), stop_job=stop_job)

"""GPU-hours: what a FineTuneJob has used, what it cost, and whether its budget is spent. Pure.

``status.gpuHours`` is accumulated across reconciles: each count adds, for every trainer pod
the operator sees, the part of the pod's running time (``status.startTime``, when the kubelet
took it and its GPUs were reserved, to the trainer container's ``finishedAt``, or now) that
lies after ``status.gpuHoursAsOf``, times the pod's GPUs (``spec.resources.gpus``: one pod per
node). Pods of earlier attempts count too, while they exist; a pod that is deleted (a
preemption, a suspended Job) keeps what was counted up to the last status write, so the count
can miss at most the status write interval (``FTJ_STATUS_MIN_INTERVAL_SECONDS``) of each
deleted pod, plus any time the operator was down while a pod ran and vanished. It never counts
a moment twice: counted intervals start where the previous count ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_api import FineTuneJob, contract
from finetune_api.status import Cost

HOURS_DECIMALS = 6  # 3.6 ms: no visible drift from rounding at one count every few seconds


@dataclass(frozen=True)
class GpuHours:
    """A count of GPU-hours and the moment it is counted up to."""

    hours: float
    as_of: datetime | None

    @classmethod
    def of(cls, hours: float | None, as_of: str | None) -> GpuHours:
        """The count a status carries (``gpuHours``, ``gpuHoursAsOf``)."""
        return cls(hours or 0.0, parse_time(as_of))


def parse_time(stamp: Any) -> datetime | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None


def _trainer_terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") == contract.CONTAINER_NAME:
            terminated = (status.get("state") or {}).get("terminated")
            return terminated if isinstance(terminated, Mapping) else None
    return None


def running_interval(pod: Mapping[str, Any], now: datetime) -> tuple[datetime, datetime] | None:
    """When the pod held its GPUs: from ``status.startTime`` to the trainer's ``finishedAt``
    (now while it runs); None for a pod that never started."""
    status = pod.get("status") or {}
    start = parse_time(status.get("startTime"))
    if start is None:
        return None
    terminated = _trainer_terminated(pod)
    if terminated is not None:
        end = parse_time(terminated.get("finishedAt")) or start
    elif status.get("phase") in ("Succeeded", "Failed"):
        end = start  # ended without a container record: nothing to count
    else:
        end = now
    return start, max(start, min(end, now))


def count_gpu_hours(
    previous: GpuHours, pods: Iterable[Mapping[str, Any]], gpus_per_pod: int, now: datetime
) -> GpuHours:
    """``previous`` plus the pods' GPU time after ``previous.as_of``, up to ``now``.

    ``as_of`` moves only when time was added, so a finished job's count does not change (and
    is not written again) on every later event.
    """
    now = now.astimezone(timezone.utc).replace(microsecond=0)
    if gpus_per_pod <= 0:
        return GpuHours(previous.hours, previous.as_of)
    since = previous.as_of or datetime.min.replace(tzinfo=timezone.utc)
    seconds = 0.0
    for pod in pods:
        interval = running_interval(pod, now)
        if interval is None:
            continue
        start, end = max(interval[0], since), interval[1]
        if end > start:
            seconds += (end - start) / timedelta(seconds=1)
    if seconds <= 0:
        return GpuHours(previous.hours, previous.as_of)
    hours = round(previous.hours + seconds * gpus_per_pod / 3600, HOURS_DECIMALS)
    return GpuHours(hours, now)


def gpus_per_pod(job: FineTuneJob) -> int:
    """GPUs each trainer pod holds: ``spec.resources.gpus`` (one pod per node)."""
    return job.spec.resources.gpus


def budget_spent(job: FineTuneJob, hours: float | None) -> bool:
    """True when ``spec.limits.maxGPUHours`` is set and ``hours`` has reached it."""
    limit = job.spec.limits.max_gpu_hours
    return limit is not None and hours is not None and hours >= limit


def estimated_cost(hours: float | None, price: float | None, currency: str) -> Cost | None:
    """``hours`` at ``price`` per GPU-hour, or None without a price."""
    if price is None or hours is None:
        return None
    return Cost(amount=round(hours * price, 2), currency=currency, gpu_hour_price=price)


def budget_message(job: FineTuneJob, hours: float, stopped: bool) -> str:
    """What a person reads when the GPU budget is spent (status message and Event)."""
    limit = job.spec.limits.max_gpu_hours
    head = f"spec.limits.maxGPUHours ({limit:g}) reached: {hours:.4f} GPU-hours used"
    if not stopped:
        return f"{head}; stopping the trainer (it saves a checkpoint before it exits)"
    return (
        f"{head}; the trainer was stopped and its newest checkpoint is kept in "
        f"{job.spec.output.uri.rstrip('/')}/checkpoints/"
    )

"""Prometheus metrics of the operator, served on ``FTJ_METRICS_PORT`` (0: off).

A private registry (not the process-global default) keeps tests independent and the endpoint
free of metrics the operator doesn't own.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime, timezone

from finetune_api.status import PHASES
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_BY_PHASE = Gauge(
    "finetune_operator_jobs",
    "FineTuneJobs seen by this operator, by status.phase (Unknown: no phase yet).",
    ["phase"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "finetune_operator_reconcile_duration_seconds",
    "Time spent in one handler run (create/resume, status recompute, progress poll).",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
ERRORS = Counter(
    "finetune_operator_errors_total",
    "Failures in handlers, by reason (the exception's reason or class name).",
    ["reason"],
    registry=REGISTRY,
)
PROGRESS_LAG_SECONDS = Histogram(
    "finetune_operator_progress_update_lag_seconds",
    "Age of the trainer's progress (now - progress.updatedAt) when written to status.",
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300),
    registry=REGISTRY,
)
PROGRESS_POLLS = Counter(
    "finetune_operator_progress_polls_total",
    "Reads of a trainer's /progress, by outcome: changed (a new document), unchanged (304 after "
    "the long poll's wait), timeout (no answer in wait + FTJ_PROGRESS_TIMEOUT_SECONDS), error "
    "(refused, reset, not 200, not JSON). Many timeouts mean the operator or the trainers are "
    "too slow to answer within the timeout.",
    ["outcome"],
    registry=REGISTRY,
)


def serve(port: int) -> None:
    """Start the /metrics HTTP server in a daemon thread (no-op for port 0)."""
    if port > 0:
        start_http_server(port, registry=REGISTRY)


def set_phase_counts(phases: Iterable[str | None]) -> None:
    """Set the per-phase gauge from the phases of all known FineTuneJobs."""
    tally = Tally(p or "Unknown" for p in phases)
    for phase in (*PHASES, "Unknown"):
        JOBS_BY_PHASE.labels(phase=phase).set(tally.get(phase, 0))


def record_error(error: BaseException) -> None:
    """Count one handler failure under its reason."""
    ERRORS.labels(reason=getattr(error, "reason", None) or type(error).__name__).inc()


def record_progress_lag(updated_at: str | None, now: datetime) -> None:
    """Observe ``now - updatedAt`` for a progress value being written (ignored if unparsable)."""
    if not updated_at:
        return
    try:
        moment = datetime.fromisoformat(updated_at.replace("Z", "+00:00"))
    except ValueError:
        return
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    PROGRESS_LAG_SECONDS.observe(max(0.0, (now - moment).total_seconds()))


def record_progress_poll(outcome: str) -> None:
    """Count one read of a trainer's /progress under its outcome (see PROGRESS_POLLS)."""
    PROGRESS_POLLS.labels(outcome=outcome).inc()

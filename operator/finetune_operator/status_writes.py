"""When a status write is worth making: only on change, and progress-only changes rate-limited.

Pure decision, so the rule is unit-tested without a clock or a server. Phase, condition and
artifact changes are written at once (a person waits for them); a change that only moves the
progress numbers (or the GPU-hours, or the progress summary in the messages of a running job)
waits until ``min_interval`` has passed since this job's last write, which bounds the API
server load at ``jobs / min_interval`` PATCHes per second.

A progress-only write sends only what moved (``{"status": {"progress": {"step": 12, ...}}}``),
not the whole status: the API server decodes, merges and validates less, and at a thousand
running jobs these writes are nearly all the operator sends. Any other change writes the whole
status, so a status edited by someone else is put right at the job's next phase or condition
change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys that move on every count while pods run: written at the progress rate, not at once.
# (GPU-hours lose nothing by waiting: the count resumes from the last written gpuHoursAsOf.)
PROGRESS_LIKE = frozenset({"progress", "gpuHours", "gpuHoursAsOf", "cost"})


def _without_progress(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without what moves with every step while the trainer runs."""
    settled = {k: v for k, v in status.items() if k not in PROGRESS_LIKE}
    conditions = settled.get("conditions") or []
    running = next((c for c in conditions if c.get("type") == "Running"), None)
    if running is not None and running.get("status") == "True":
        # While training, status.message and the Running condition's message carry the
        # progress summary ("Training: 120/500"); a new reason or status is still a change.
        settled["message"] = None
        settled["conditions"] = [{**c, "message": None} if c is running else c for c in conditions]
    return settled


def progress_only(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether ``wanted`` differs from ``current`` in the progress numbers at most."""
    return _without_progress(current) == _without_progress(wanted)


def merge_diff(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) turning ``current`` into ``wanted``: changed and new keys,
    objects recursively, removed keys as null, lists whole (pure)."""
    diff: dict[str, Any] = {}
    for key, value in wanted.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = merge_diff(old, value)
            if nested:
                diff[key] = nested
        elif key not in current or old != value:
            diff[key] = value
    for key in current:
        if key not in wanted:
            diff[key] = None
    return diff


def status_patch(
    current: Mapping[str, Any],
    wanted: Mapping[str, Any],
    last_write: float | None,
    now: float,
    min_interval: float,
) -> dict[str, Any] | None:
    """The merge patch body to send to ``/status``, or None when nothing should be written.

    ``current`` and ``wanted`` are wire-form statuses (camelCase dicts); ``last_write`` is the
    monotonic time of this job's previous write in this process (None: never).
    """
    if dict(current) == dict(wanted):
        return None
    if not progress_only(current, wanted):
        # A merge patch replaces lists (conditions) whole and leaves absent keys alone
        # (https://datatracker.ietf.org/doc/html/rfc7386); the status is recomputed in full,
        # so writing all of it is both simple and correct.
        return {"status": dict(wanted)}
    if last_write is not None and now - last_write < min_interval:
        return None
    return {"status": merge_diff(current, wanted)}

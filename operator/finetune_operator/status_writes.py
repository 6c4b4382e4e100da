"""When a status write is worth making: only on change, and progress-only changes rate-limited.

Pure decision, so the rule is unit-tested without a clock or a server. Phase, condition and
artifact changes are written at once (a person waits for them); a change that only moves the
progress numbers (or the GPU-hours) waits until ``min_interval`` has passed since this job's
last write, which bounds the API server load at ``jobs / min_interval`` PATCHes per second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys that move on every count while pods run: written at the progress rate, not at once.
# (GPU-hours lose nothing by waiting: the count resumes from the last written gpuHoursAsOf.)
PROGRESS_LIKE = frozenset({"progress", "gpuHours", "gpuHoursAsOf", "cost"})


def _without_progress(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in PROGRESS_LIKE}


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
    progress_only = _without_progress(current) == _without_progress(wanted)
    if progress_only and last_write is not None and now - last_write < min_interval:
        return None
    # A merge patch replaces lists (conditions) whole and leaves absent keys alone
    # (https://datatracker.ietf.org/doc/html/rfc7386); the status is recomputed in full,
    # so writing all of it is both simple and correct.
    return {"status": dict(wanted)}

"""The trainer's experiment-tracking report → the ``Tracking`` condition. Pure.

The trainer (rank 0) puts ``tracking`` into its ``/progress`` answer and its termination
message's progress (``docs/internals.md``): ``{"ok": bool, "reason": CamelCase, "message":
str}``. ``ok`` false means the tracking server could not be reached (or refused a request):
training goes on, the run's values wait in the trainer and are sent when the server is back or
at the end. The condition is ``Tracking`` (True/False) with the trainer's reason; a change of
reason is posted as an Event (Warning when not ok).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

CONDITION_TYPE = "Tracking"
FALLBACK_REASON = "TrackingProblem"
_REASON = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")


def tracking_condition(
    live: Mapping[str, Any] | None, finals: Sequence[Mapping[str, Any]]
) -> tuple[str, str, str, str] | None:
    """(type, status, reason, message) from the live progress, else the newest termination
    message's progress that has a report; None when the job has no tracking server."""
    report = (live or {}).get("tracking")
    for summary in finals:
        if isinstance(report, Mapping):
            break
        report = (summary.get("progress") or {}).get("tracking")
    if not isinstance(report, Mapping):
        return None
    ok = report.get("ok") is True
    reason = str(report.get("reason") or "")
    if not _REASON.match(reason):
        reason = "Tracking" if ok else FALLBACK_REASON
    message = str(report.get("message") or "")
    return CONDITION_TYPE, "True" if ok else "False", reason, message

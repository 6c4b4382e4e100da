"""Conditions in the shapes the kubelet writes on pods and the Job controller on Jobs.

Why its own module: the kubelet, the fault injection and the Job controller all write
conditions, and the operator reads them (``PodScheduled``, ``Ready``, ``DisruptionTarget``,
``Complete``, ``Failed``, ``Suspended``...), so they are built the same way everywhere:
``lastTransitionTime`` moves only when ``status`` changes, as upstream's controllers do
(https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-conditions).
"""

from __future__ import annotations

import datetime
from typing import Any

from tests.harness.kube_api import now_iso


def pod_condition(
    kind: str, status: str, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """A pod condition, transitioned now."""
    cond: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": now_iso(),
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def replace_pod_condition(status: dict[str, Any], kind: str, value: str, reason: str) -> None:
    """Put a fresh ``kind`` condition in a pod's ``status`` in place of the old one."""
    conditions = [c for c in status.get("conditions", []) if c["type"] != kind]
    conditions.append(pod_condition(kind, value, reason))
    status["conditions"] = conditions


def has_condition(conditions: list[dict[str, Any]], kind: str) -> bool:
    """Whether ``kind`` is among ``conditions`` with status True."""
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def set_job_condition(
    conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str
) -> None:
    """Add or update a Job condition in place (transition time kept unless status changes)."""
    now = now_iso()
    for cond in conditions:
        if cond["type"] == kind:
            if cond["status"] != status:
                cond["lastTransitionTime"] = now
            cond.update(status=status, reason=reason, message=message, lastProbeTime=now)
            return
    conditions.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        }
    )


def parse_time(value: str) -> datetime.datetime:
    """A Kubernetes timestamp (as :func:`~tests.harness.kube_api.now_iso` writes) in UTC."""
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )

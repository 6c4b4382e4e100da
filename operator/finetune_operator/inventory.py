"""Which Job and which pods belong to a FineTuneJob, from the watched objects. Pure.

Labels find candidates cheaply (the watches select on ``finetune.dev/job``); owner references
decide, so objects left over by an earlier FineTuneJob of the same name (still being garbage
collected) never leak into the new one's status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

K8sObject = Mapping[str, Any]
Key = tuple[str, str]


def object_key(namespace: str | None, job_label: str) -> Key:
    """Index key of a FineTuneJob and its objects: namespace + ``finetune.dev/job`` label value."""
    return (namespace or "default", job_label)


def is_owned_by(obj: K8sObject, owner_uid: str | None) -> bool:
    """Whether ``obj`` has an owner reference to ``owner_uid``."""
    if not owner_uid:
        return False
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


def _created(obj: K8sObject) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


def owned_job(jobs: Iterable[K8sObject], ftj_uid: str | None) -> dict[str, Any] | None:
    """The Job controlled by the FineTuneJob (the newest, should there ever be two)."""
    owned = [dict(j) for j in jobs if is_owned_by(j, ftj_uid)]
    return max(owned, key=_created) if owned else None


def job_pods(pods: Iterable[K8sObject], job: K8sObject | None) -> list[dict[str, Any]]:
    """The pods of ``job``, oldest first."""
    if job is None:
        return []
    uid = (job.get("metadata") or {}).get("uid")
    return sorted((dict(p) for p in pods if is_owned_by(p, uid)), key=_created)

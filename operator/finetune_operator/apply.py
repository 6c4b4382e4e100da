"""Create the rendered objects idempotently: create, and on AlreadyExists adopt what is there.

The operator can crash between any two calls, and kopf retries a handler that failed. The
names are deterministic, so a repeated ``create`` answers 409 AlreadyExists instead of making
a second Job (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uniqueness);
then the existing object is read and kept if this FineTuneJob owns it. Existing objects are
not patched: the spec is immutable after creation (except ``suspend``, handled apart) and a
Job's pod template can't change anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from finetune_operator.errors import AlreadyExists, OwnershipConflict

Manifest = dict[str, Any]


class ObjectApi(Protocol):
    """What :func:`ensure_objects` needs from the API (``KubeClient`` or a test fake)."""

    async def create(self, obj: Manifest) -> Manifest:
        """Create; raise AlreadyExists when the name is taken."""
        ...

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest:
        """Read; raise NotFound when missing."""
        ...


@dataclass(frozen=True)
class Applied:
    """One object after :func:`ensure_object`, and whether this call created it."""

    kind: str
    name: str
    outcome: Literal["created", "existing"]
    obj: Manifest


def owner_uids(obj: Manifest) -> set[str]:
    """UIDs of the object's controller owners."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {str(r.get("uid")) for r in refs if r.get("controller")}


async def ensure_object(api: ObjectApi, desired: Manifest) -> Applied:
    """Create ``desired`` unless it exists; refuse to adopt an object owned by someone else."""
    meta = desired["metadata"]
    kind, name = str(desired["kind"]), str(meta["name"])
    try:
        return Applied(kind, name, "created", await api.create(desired))
    except AlreadyExists:
        existing = await api.get(desired["apiVersion"], kind, meta["namespace"], name)
    if not owner_uids(desired) <= owner_uids(existing):
        raise OwnershipConflict(
            f"{kind} {meta['namespace']}/{name} exists but is not owned by this FineTuneJob "
            "(an older FineTuneJob of the same name may still be being deleted); will retry"
        )
    return Applied(kind, name, "existing", existing)


async def ensure_objects(api: ObjectApi, objects: Iterable[Manifest]) -> list[Applied]:
    """:func:`ensure_object` for each object, in order (ConfigMap and Service before the Job)."""
    return [await ensure_object(api, obj) for obj in objects]


def suspend_patch(spec_suspend: bool, queue_name: str | None, k8s_job: Manifest) -> Manifest | None:
    """Merge patch bringing the Job's ``spec.suspend`` in line with the FineTuneJob, or None.

    Suspending a Job deletes its running pods; unsuspending starts new ones, which resume from
    the last checkpoint (https://kubernetes.io/docs/concepts/workloads/controllers/job/#suspending-a-job).
    A Job in a Kueue queue is never unsuspended here: admitting it (unsuspending) is Kueue's
    decision (https://kueue.sigs.k8s.io/docs/tasks/run/jobs/).
    """
    suspended = bool((k8s_job.get("spec") or {}).get("suspend"))
    if spec_suspend and not suspended:
        return {"spec": {"suspend": True}}
    if not spec_suspend and suspended and not queue_name:
        return {"spec": {"suspend": False}}
    return None

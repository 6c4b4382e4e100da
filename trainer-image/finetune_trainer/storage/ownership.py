"""Who may write an output: one job per output location, unless the user says overwrite.

Two records decide it. ``MANIFEST.json`` names the job that *published* there; ``OWNER.json``
names the job that *claimed* the output when it started, before its first checkpoint. The
claim is what refuses a second job pointed at the same output while the first still runs
(there is no manifest yet), and what keeps one job from resuming from another's checkpoints.

The claim is an atomic create (S3 ``If-None-Match: *``, ``O_EXCL`` locally), so two jobs
starting in the same second can't both win. The same job (same namespace, name and uid: a
retried or preempted pod) passes and may republish.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from finetune_trainer.errors import OutputConflict
from finetune_trainer.storage.client import Storage
from finetune_trainer.storage.identity import JobIdentity
from finetune_trainer.storage.location import Location

log = logging.getLogger(__name__)

OWNER_FILE = "OWNER.json"
MANIFEST_FILE = "MANIFEST.json"
CHECKPOINTS_DIR = "checkpoints"
UNKNOWN = "(unknown: unreadable record)"


def _conflict(output: str, other: str, what: str) -> OutputConflict:
    return OutputConflict(
        f"output {output} {what} {other}. Set spec.output.overwrite: true to replace it, "
        "or choose a new spec.output.uri."
    )


def _claim_record(job: JobIdentity) -> dict[str, str]:
    return job.to_dict() | {"claimedAt": datetime.now(timezone.utc).isoformat()}


def _take_over(storage: Storage, root: Location, record: dict[str, str], previous: str) -> None:
    """Make ``root`` this job's: the old manifest and checkpoints go, so a reader can't take
    the previous job's artifacts for ours and we can't resume from its checkpoints."""
    log.warning("taking over output %s from %s (spec.output.overwrite: true)", root, previous)
    storage.delete(str(root.join(MANIFEST_FILE)))
    storage.delete(str(root.join(CHECKPOINTS_DIR)), recursive=True)
    storage.write_json(str(root.join(OWNER_FILE)), record)


def check_output_ownership(
    storage: Storage, output_uri: str, job: JobIdentity, overwrite: bool
) -> None:
    """Refuse an output that belongs to another job, else claim it for ``job``.

    Call it before training: a conflict then costs seconds, not a GPU-day. Raises
    :class:`OutputConflict` (exit 42: retrying can't help) naming the other job and the fix.
    With ``overwrite`` the output is taken over, and the previous job's checkpoints are
    removed so this job can't resume from them.
    """
    root = Location.parse(output_uri)
    owner_uri = str(root.join(OWNER_FILE))
    manifest_uri = str(root.join(MANIFEST_FILE))
    checkpoints = str(root.join(CHECKPOINTS_DIR))
    owner_record = storage.read_json(owner_uri)
    owner = JobIdentity.from_dict(owner_record) if owner_record else None
    if owner == job:
        # Claimed by this job already (a retried or preempted pod): keep its checkpoints.
        return
    manifest = storage.read_json(manifest_uri)
    publisher = JobIdentity.from_dict(manifest.get("job")) if manifest else None

    others: list[tuple[str, str]] = []
    if owner_record is not None:
        others.append(("is claimed by job", str(owner or UNKNOWN)))
    if manifest is not None and publisher != job:
        others.append(("holds artifacts published by job", str(publisher or UNKNOWN)))
    if owner_record is None and publisher != job and storage.exists(checkpoints):
        others.append(("holds checkpoints", "of a job that did not claim it (no OWNER.json)"))

    record = _claim_record(job)
    if others:
        if not overwrite:
            what, other = others[0]
            raise _conflict(str(root), other, what)
        _take_over(storage, root, record, others[0][1])
        return
    if not storage.create_json(owner_uri, record, only_if_absent=True):
        # Another job claimed it between our read and our create.
        winner = JobIdentity.from_dict(storage.read_json(owner_uri))
        if winner != job:
            if not overwrite:
                raise _conflict(str(root), str(winner or UNKNOWN), "is claimed by job")
            _take_over(storage, root, record, str(winner))
            return
    log.info("claimed output %s for job %s", root, job)

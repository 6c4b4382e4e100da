"""Who may write an output: one job per output location, unless the user says overwrite.

An output belongs to a job's ``namespace/name`` (:mod:`.identity`): a deleted and re-created
job takes over its own output. Two records decide it. ``MANIFEST.json`` names the job that
*published* there; ``OWNER.json`` names the job that *claimed* it, with the fingerprint of what
it trains (:mod:`.fingerprint`). The claim is what refuses a second job pointed at the same
output while the first still runs (there is no manifest yet), and what decides whether a run
may continue from the checkpoints there.

A run touches the output in two moments:

* :func:`check_output`, before any download, only reads: another job's output costs seconds,
  not a model download and a GPU.
* :func:`claim_output`, just before training, writes ``OWNER.json``: the first thing worth
  keeping is about to be written, and the data has been validated. A run that fails before
  (bad data, a missing model) leaves nothing behind that could block the fixed run. Same name
  and same fingerprint: the checkpoints are kept and training resumes. Same name, another
  fingerprint: they are removed and the run says so (:attr:`Claim.started_fresh`). A new
  claim is an atomic create (S3 ``If-None-Match: *``, ``O_EXCL`` locally), so two jobs
  starting in the same second can't both win.

:func:`confirm_ownership` checks again before publishing (a claim may be hours old).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from finetune_trainer.errors import OutputConflict
from finetune_trainer.storage.client import Storage
from finetune_trainer.storage.fingerprint import TrainingFingerprint
from finetune_trainer.storage.identity import JobIdentity
from finetune_trainer.storage.location import Location

log = logging.getLogger(__name__)

OWNER_FILE = "OWNER.json"
MANIFEST_FILE = "MANIFEST.json"
CHECKPOINTS_DIR = "checkpoints"
UNKNOWN = "(unknown: unreadable record)"
_FIX = "Set spec.output.overwrite: true to replace it, or choose a new spec.output.uri."


def _conflict(output: str, other: str, what: str) -> OutputConflict:
    return OutputConflict(f"output {output} {what} {other}. {_FIX}")


@dataclass(frozen=True)
class OutputHolding:
    """What an output holds now, as its records say."""

    root: Location
    owner_record: dict[str, Any] | None
    publisher: JobIdentity | None
    has_manifest: bool
    has_checkpoints: bool

    @property
    def owner(self) -> JobIdentity | None:
        """The job named in OWNER.json (None: no record, or a malformed one)."""
        return JobIdentity.from_dict(self.owner_record) if self.owner_record else None

    @property
    def empty(self) -> bool:
        """Nothing there that anyone could lose."""
        return self.owner_record is None and not self.has_manifest and not self.has_checkpoints

    def foreign(self, job: JobIdentity) -> tuple[str, str] | None:
        """``(what, whose)`` when the output is another job's (another namespace/name)."""
        if self.owner_record is not None and self.owner != job:
            return "is claimed by job", str(self.owner or UNKNOWN)
        if self.has_manifest and self.publisher != job:
            return "holds artifacts published by job", str(self.publisher or UNKNOWN)
        if self.owner_record is None and not self.has_manifest and self.has_checkpoints:
            return "holds checkpoints", "of a job that did not claim it (no OWNER.json)"
        return None


def read_holding(storage: Storage, output_uri: str) -> OutputHolding:
    """Read OWNER.json and MANIFEST.json and look for checkpoints; writes nothing."""
    root = Location.parse(output_uri)
    manifest = storage.read_json(str(root.join(MANIFEST_FILE)))
    return OutputHolding(
        root=root,
        owner_record=storage.read_json(str(root.join(OWNER_FILE))),
        publisher=JobIdentity.from_dict(manifest.get("job")) if manifest else None,
        has_manifest=manifest is not None,
        has_checkpoints=storage.exists(str(root.join(CHECKPOINTS_DIR))),
    )


@dataclass(frozen=True)
class Claim:
    """How this run came to own its output: what it found and what it did about it."""

    previous: JobIdentity | None  # the job that held the output before (None: nobody)
    resumable: bool  # the checkpoints there (if any) were trained with this run's recipe
    started_fresh: str | None = None  # why earlier checkpoints/artifacts were removed


def _claim_record(job: JobIdentity, fingerprint: TrainingFingerprint | None) -> dict[str, Any]:
    record: dict[str, Any] = job.to_dict()
    record["claimedAt"] = datetime.now(timezone.utc).isoformat()
    if fingerprint is not None:
        record["fingerprint"] = fingerprint.to_dict()
    return record


def _clear(storage: Storage, root: Location) -> None:
    """Remove the manifest (a reader must not take the old artifacts for ours) and the
    checkpoints (this run must not resume from them)."""
    storage.delete(str(root.join(MANIFEST_FILE)))
    storage.delete(str(root.join(CHECKPOINTS_DIR)), recursive=True)


def check_output(
    storage: Storage, output_uri: str, job: JobIdentity, overwrite: bool
) -> OutputHolding:
    """Refuse an output that belongs to another job; read-only, for before any download.

    Raises :class:`OutputConflict` (exit 42: retrying can't help) naming the other job and the
    fix, unless ``overwrite``. Returns what the output holds, for :func:`claim_output` to act
    on once training is about to start.
    """
    holding = read_holding(storage, output_uri)
    other = holding.foreign(job)
    if other is not None:
        if not overwrite:
            raise _conflict(str(holding.root), other[1], other[0])
        log.warning(
            "output %s %s %s: spec.output.overwrite is true, so this job takes it over when "
            "training starts",
            holding.root,
            *other,
        )
    elif holding.owner is not None and not holding.owner.same_object(job):
        log.info(
            "output %s was claimed by %s, an earlier job of the same name: this job takes it "
            "over when training starts, resuming from its checkpoints if the base model, data "
            "and method match",
            holding.root,
            holding.owner,
        )
    return holding


def claim_output(
    storage: Storage,
    output_uri: str,
    job: JobIdentity,
    fingerprint: TrainingFingerprint,
    overwrite: bool,
) -> Claim:
    """Write OWNER.json for ``job`` just before training; say whether checkpoints may resume.

    * Nothing there: an atomic create (another job winning the race is an OutputConflict).
    * This job's name with the same ``fingerprint`` (a retried pod, or the job re-created with
      the same recipe): the checkpoints stay and training resumes from them.
    * This job's name with another fingerprint, or none: the earlier checkpoints and manifest
      are removed; :attr:`Claim.started_fresh` says what differed.
    * Another job's: :class:`OutputConflict`, or with ``overwrite`` taken over as above.
    """
    for _ in range(2):  # a second look only after losing the race to create OWNER.json
        holding = read_holding(storage, output_uri)
        root, owner_uri = holding.root, str(holding.root.join(OWNER_FILE))
        record = _claim_record(job, fingerprint)
        other = holding.foreign(job)
        if other is not None:
            if not overwrite:
                raise _conflict(str(root), other[1], other[0])
            _clear(storage, root)
            storage.write_json(owner_uri, record)
            why = (
                f"output {root} {other[0]} {other[1]}; spec.output.overwrite is true, so its "
                "checkpoints and manifest were removed and training starts from step 0"
            )
            log.warning("%s", why)
            return Claim(holding.owner or holding.publisher, False, why)
        if holding.empty:
            if storage.create_json(owner_uri, record, only_if_absent=True):
                log.info("claimed output %s for job %s", root, job)
                return Claim(None, True)
            continue  # claimed by someone between our read and our create: look again
        return _take_over_own(storage, holding, job, fingerprint, record)
    raise OutputConflict(f"output {output_uri} changes hands too fast to claim it. {_FIX}")


def _take_over_own(
    storage: Storage,
    holding: OutputHolding,
    job: JobIdentity,
    fingerprint: TrainingFingerprint,
    record: dict[str, Any],
) -> Claim:
    """The output is this job's name's: resume if the recipe matches, else start fresh."""
    root, owner_uri = holding.root, str(holding.root.join(OWNER_FILE))
    previous = holding.owner or holding.publisher
    earlier = TrainingFingerprint.from_record(holding.owner_record)
    who = (
        "this job"
        if previous is not None and previous.same_object(job)
        else f"{previous}, an earlier job of the same name"
    )
    if earlier is not None and earlier.sha256 == fingerprint.sha256:
        storage.write_json(owner_uri, record)  # this uid, now
        if holding.has_checkpoints:
            log.info(
                "output %s holds checkpoints of %s with the same base model, data and method: "
                "training resumes from them",
                root,
                who,
            )
        return Claim(previous, True)
    if not holding.has_checkpoints and not holding.has_manifest:
        storage.write_json(owner_uri, record)  # a claim left by a run that never trained
        return Claim(previous, True)
    differences = (
        fingerprint.differences(earlier)
        if earlier is not None
        else ["the earlier run recorded no fingerprint of its recipe"]
    )
    _clear(storage, root)
    storage.write_json(owner_uri, record)
    shown = "; ".join(differences[:6]) + ("; …" if len(differences) > 6 else "")
    why = (
        f"output {root} held checkpoints of {who}, trained with another recipe ({shown}): "
        "they were removed and training starts from step 0"
    )
    log.warning("starting fresh: %s", why)
    return Claim(previous, False, why)


def confirm_ownership(storage: Storage, output_uri: str, job: JobIdentity, overwrite: bool) -> None:
    """Just before publishing: the output is still this run's (its claim may be hours old).

    A newer job of the same name that took the output over meanwhile (this job was deleted and
    re-created while its last pod still ran) wins: this run's results are not published. An
    unclaimed output is claimed (without a fingerprint: nothing is trained after this).
    """
    for _ in range(2):
        holding = read_holding(storage, output_uri)
        root, owner = holding.root, holding.owner
        if owner is not None and owner == job and not owner.same_object(job):
            raise OutputConflict(
                f"output {root} was taken over by {owner}, a newer job of the same name, "
                f"while this run (uid {job.uid}) trained: its results are not published there."
            )
        other = holding.foreign(job)
        if other is not None:
            if not overwrite:
                raise _conflict(str(root), other[1], other[0])
            log.warning(
                "taking over output %s from %s (spec.output.overwrite: true)", root, other[1]
            )
            _clear(storage, root)
            storage.write_json(str(root.join(OWNER_FILE)), _claim_record(job, None))
            return
        if holding.owner_record is not None:
            return
        if storage.create_json(str(root.join(OWNER_FILE)), _claim_record(job, None)):
            return
    raise OutputConflict(f"output {output_uri} changes hands too fast to claim it. {_FIX}")

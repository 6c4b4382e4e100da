"""One job per output, named by namespace/name: another job is refused before any download,
a re-created job takes over its own output, resuming only when its recipe matches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.errors import EXIT_INVALID_INPUT, OutputConflict
from finetune_trainer.storage import (
    CheckpointStore,
    JobIdentity,
    Storage,
    TrainingFingerprint,
    check_output,
    claim_output,
    publish_artifacts,
)

from tests.unit.storage.conftest import make_tree

pytestmark = pytest.mark.unit

RECIPE = TrainingFingerprint({"model": {"uri": "s3://m/base"}, "training": {"learningRate": 2e-4}})
OTHER_RECIPE = TrainingFingerprint(
    {"model": {"uri": "s3://m/base"}, "training": {"learningRate": 1e-3}}
)


def _publish(storage: Storage, root: Path, out: str, job: JobIdentity, overwrite: bool) -> None:
    local = make_tree(root, {"adapter/a.bin": job.uid.encode(), "metrics.json": b"{}"})
    publish_artifacts(storage, local, out, job=job, spec={}, overwrite=overwrite)


def _trained(storage: Storage, tmp: Path, out: str, job: JobIdentity, step: int = 10) -> None:
    """``job`` claimed ``out`` with RECIPE and saved a checkpoint at ``step``."""
    claim_output(storage, out, job, RECIPE, overwrite=False)
    CheckpointStore(storage, out).save(step, make_tree(tmp / f"ck{step}", {"w.bin": b"w"}))


def _recreated(job: JobIdentity) -> JobIdentity:
    """The same job deleted and applied again: same namespace and name, a new uid."""
    return JobIdentity(job.namespace, job.name, "uid-recreated")


def test_second_job_is_refused_naming_the_other_job_and_the_fix(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = f"s3://{bucket}/shared"
    claim_output(storage, out, job, RECIPE, overwrite=False)
    _publish(storage, tmp_path / "a", out, job, overwrite=False)
    with pytest.raises(OutputConflict) as info:
        check_output(storage, out, other_job, overwrite=False)
    message = info.value.message
    assert "team-a/qwen-sft (uid uid-1111)" in message
    assert out in message
    assert "spec.output.overwrite: true" in message and "spec.output.uri" in message
    assert info.value.exit_code == EXIT_INVALID_INPUT
    with pytest.raises(OutputConflict):
        claim_output(storage, out, other_job, RECIPE, overwrite=False)
    with pytest.raises(OutputConflict):
        _publish(storage, tmp_path / "b", out, other_job, overwrite=False)


def test_recreated_job_with_the_same_recipe_resumes_from_its_checkpoints(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/recreated"
    _trained(storage, tmp_path, out, job)
    again = _recreated(job)
    check_output(storage, out, again, overwrite=False)  # not a conflict: its own output
    claim = claim_output(storage, out, again, RECIPE, overwrite=False)
    assert claim.resumable and claim.started_fresh is None
    assert claim.previous is not None and claim.previous.uid == job.uid
    assert CheckpointStore(storage, out).latest_complete() == 10
    owner = storage.read_json(f"{out}/OWNER.json")
    assert owner is not None and owner["uid"] == "uid-recreated"
    assert owner["fingerprint"]["sha256"] == RECIPE.sha256


def test_recreated_job_with_another_recipe_starts_fresh_and_says_why(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/changed"
    _trained(storage, tmp_path, out, job)
    _publish(storage, tmp_path / "a", out, job, overwrite=False)
    claim = claim_output(storage, out, _recreated(job), OTHER_RECIPE, overwrite=False)
    assert not claim.resumable
    assert claim.started_fresh is not None
    assert "spec.training.learningRate 0.0002 → 0.001" in claim.started_fresh
    assert "uid-1111" in claim.started_fresh and "step 0" in claim.started_fresh
    assert CheckpointStore(storage, out).latest_complete() is None
    assert storage.read_json(f"{out}/MANIFEST.json") is None  # the old artifacts aren't ours
    owner = storage.read_json(f"{out}/OWNER.json")
    assert owner is not None and owner["fingerprint"]["sha256"] == OTHER_RECIPE.sha256


def test_an_earlier_claim_without_fingerprint_starts_fresh(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    """Outputs claimed by an older trainer record no recipe: resuming could be wrong."""
    out = f"s3://{bucket}/legacy"
    storage.write_json(f"{out}/OWNER.json", job.to_dict())
    CheckpointStore(storage, out).save(5, make_tree(tmp_path / "ck", {"w.bin": b"w"}))
    claim = claim_output(storage, out, _recreated(job), RECIPE, overwrite=False)
    assert claim.started_fresh is not None and "no fingerprint" in claim.started_fresh
    assert CheckpointStore(storage, out).latest_complete() is None


def test_checking_an_output_writes_nothing(
    storage: Storage, s3: Any, bucket: str, job: JobIdentity
) -> None:
    """The check before downloads only reads, so a run that fails before training (bad data,
    a missing model) leaves no OWNER.json to block the fixed run or another name."""
    out = f"s3://{bucket}/untouched"
    check_output(storage, out, job, overwrite=False)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_the_deleted_jobs_last_pod_cannot_publish_over_its_successor(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/successor"
    claim_output(storage, out, job, RECIPE, overwrite=False)
    claim_output(storage, out, _recreated(job), OTHER_RECIPE, overwrite=False)
    with pytest.raises(OutputConflict, match="newer job of the same name"):
        _publish(storage, tmp_path / "old", out, job, overwrite=False)
    _publish(storage, tmp_path / "new", out, _recreated(job), overwrite=False)


def test_same_job_may_republish(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/retried"
    _publish(storage, tmp_path / "a", out, job, overwrite=False)
    check_output(storage, out, job, overwrite=False)  # the retried pod
    _publish(storage, tmp_path / "b", out, job, overwrite=False)


def test_running_job_claims_output_before_any_manifest(
    storage: Storage, bucket: str, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = f"s3://{bucket}/running"
    claim_output(storage, out, job, RECIPE, overwrite=False)
    assert storage.read_json(f"{out}/OWNER.json")["uid"] == job.uid  # type: ignore[index]
    with pytest.raises(OutputConflict, match="is claimed by job team-a/qwen-sft"):
        check_output(storage, out, other_job, overwrite=False)


def test_overwrite_takes_over_and_drops_old_checkpoints(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = f"s3://{bucket}/takeover"
    _trained(storage, tmp_path, out, job)
    _publish(storage, tmp_path / "a", out, job, overwrite=False)

    check_output(storage, out, other_job, overwrite=True)  # says so, changes nothing yet
    assert CheckpointStore(storage, out).latest_complete() == 10
    claim = claim_output(storage, out, other_job, RECIPE, overwrite=True)
    assert claim.started_fresh is not None and "overwrite" in claim.started_fresh
    assert CheckpointStore(storage, out).latest_complete() is None  # not resumable by other_job
    assert storage.read_json(f"{out}/MANIFEST.json") is None  # job's manifest is gone too

    # other_job's pod is preempted after its first checkpoint: the retry keeps it.
    CheckpointStore(storage, out).save(3, make_tree(tmp_path / "ck3", {"w.bin": b"v"}))
    assert claim_output(storage, out, other_job, RECIPE, overwrite=True).started_fresh is None
    assert CheckpointStore(storage, out).latest_complete() == 3
    _publish(storage, tmp_path / "b", out, other_job, overwrite=True)
    manifest = storage.read_json(f"{out}/MANIFEST.json")
    assert manifest is not None and manifest["job"]["uid"] == other_job.uid


def test_unclaimed_checkpoints_are_refused(
    storage: Storage, s3: Any, bucket: str, job: JobIdentity
) -> None:
    s3.put_object(Bucket=bucket, Key="orphan/checkpoints/checkpoint-5/w.bin", Body=b"w")
    with pytest.raises(OutputConflict, match="holds checkpoints"):
        check_output(storage, f"s3://{bucket}/orphan", job, overwrite=False)


def test_claim_race_has_one_winner(
    storage: Storage,
    bucket: str,
    job: JobIdentity,
    other_job: JobIdentity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """other_job's OWNER.json lands between our read and our atomic create."""
    out = f"s3://{bucket}/race"
    real_create = storage.create_json

    def create_after_rival(uri: str, data: dict[str, Any], *, only_if_absent: bool = True) -> bool:
        real_create(uri, other_job.to_dict(), only_if_absent=True)
        return real_create(uri, data, only_if_absent=only_if_absent)

    monkeypatch.setattr(storage, "create_json", create_after_rival)
    with pytest.raises(OutputConflict, match="llama-sft"):
        claim_output(storage, out, job, RECIPE, overwrite=False)


def test_local_output_ownership(
    storage: Storage, tmp_path: Path, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = str(tmp_path / "out")
    check_output(storage, out, job, overwrite=False)
    assert not (tmp_path / "out").exists()
    claim_output(storage, out, job, RECIPE, overwrite=False)
    assert (tmp_path / "out" / "OWNER.json").is_file()
    with pytest.raises(OutputConflict):
        check_output(storage, out, other_job, overwrite=False)
    with pytest.raises(OutputConflict):
        claim_output(storage, out, other_job, RECIPE, overwrite=False)

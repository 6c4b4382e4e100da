"""One job per output: conflicts are refused before training, with the other job and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.errors import EXIT_INVALID_INPUT, OutputConflict
from finetune_trainer.storage import (
    CheckpointStore,
    JobIdentity,
    Storage,
    check_output_ownership,
    publish_artifacts,
)

from tests.unit.storage.conftest import make_tree

pytestmark = pytest.mark.unit


def _publish(storage: Storage, root: Path, out: str, job: JobIdentity, overwrite: bool) -> None:
    local = make_tree(root, {"adapter/a.bin": job.uid.encode(), "metrics.json": b"{}"})
    publish_artifacts(storage, local, out, job=job, spec={}, overwrite=overwrite)


def test_second_job_is_refused_naming_the_other_job_and_the_fix(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = f"s3://{bucket}/shared"
    check_output_ownership(storage, out, job, overwrite=False)
    _publish(storage, tmp_path / "a", out, job, overwrite=False)
    with pytest.raises(OutputConflict) as info:
        check_output_ownership(storage, out, other_job, overwrite=False)
    message = info.value.message
    assert "team-a/qwen-sft (uid uid-1111)" in message
    assert out in message
    assert "spec.output.overwrite: true" in message and "spec.output.uri" in message
    assert info.value.exit_code == EXIT_INVALID_INPUT
    with pytest.raises(OutputConflict):
        _publish(storage, tmp_path / "b", out, other_job, overwrite=False)


def test_same_name_new_uid_is_another_job(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/recreated"
    _publish(storage, tmp_path / "a", out, job, overwrite=False)
    with pytest.raises(OutputConflict):
        check_output_ownership(storage, out, JobIdentity(job.namespace, job.name, "uid-new"), False)


def test_same_job_may_republish(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/retried"
    _publish(storage, tmp_path / "a", out, job, overwrite=False)
    check_output_ownership(storage, out, job, overwrite=False)  # the retried pod
    _publish(storage, tmp_path / "b", out, job, overwrite=False)


def test_running_job_claims_output_before_any_manifest(
    storage: Storage, bucket: str, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = f"s3://{bucket}/running"
    check_output_ownership(storage, out, job, overwrite=False)
    assert storage.read_json(f"{out}/OWNER.json")["uid"] == job.uid  # type: ignore[index]
    with pytest.raises(OutputConflict, match="is claimed by job team-a/qwen-sft"):
        check_output_ownership(storage, out, other_job, overwrite=False)


def test_overwrite_takes_over_and_drops_old_checkpoints(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = f"s3://{bucket}/takeover"
    check_output_ownership(storage, out, job, overwrite=False)
    CheckpointStore(storage, out).save(10, make_tree(tmp_path / "ck", {"w.bin": b"w"}))
    _publish(storage, tmp_path / "a", out, job, overwrite=False)

    check_output_ownership(storage, out, other_job, overwrite=True)
    assert CheckpointStore(storage, out).latest_complete() is None  # not resumable by other_job
    assert storage.read_json(f"{out}/MANIFEST.json") is None  # job's manifest is gone too

    # other_job's pod is preempted after its first checkpoint: the retry keeps it.
    CheckpointStore(storage, out).save(3, make_tree(tmp_path / "ck3", {"w.bin": b"v"}))
    check_output_ownership(storage, out, other_job, overwrite=True)
    assert CheckpointStore(storage, out).latest_complete() == 3
    _publish(storage, tmp_path / "b", out, other_job, overwrite=True)
    manifest = storage.read_json(f"{out}/MANIFEST.json")
    assert manifest is not None and manifest["job"]["uid"] == other_job.uid


def test_unclaimed_checkpoints_are_refused(
    storage: Storage, s3: Any, bucket: str, job: JobIdentity
) -> None:
    s3.put_object(Bucket=bucket, Key="orphan/checkpoints/checkpoint-5/w.bin", Body=b"w")
    with pytest.raises(OutputConflict, match="holds checkpoints"):
        check_output_ownership(storage, f"s3://{bucket}/orphan", job, overwrite=False)


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
        check_output_ownership(storage, out, job, overwrite=False)


def test_local_output_ownership(
    storage: Storage, tmp_path: Path, job: JobIdentity, other_job: JobIdentity
) -> None:
    out = str(tmp_path / "out")
    check_output_ownership(storage, out, job, overwrite=False)
    with pytest.raises(OutputConflict):
        check_output_ownership(storage, out, other_job, overwrite=False)

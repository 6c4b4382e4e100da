"""Checkpoints: COMPLETE last, incomplete ones ignored, restore and prune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.errors import StorageError
from finetune_trainer.storage import CheckpointStore, Storage

from tests.unit.storage.conftest import make_tree

pytestmark = pytest.mark.unit

CKPT = {
    "adapter_model.safetensors": b"a" * 2048,
    "optimizer.pt": b"o" * 1024,
    "trainer_state.json": b"{}",
}


def test_save_latest_restore_ignoring_incomplete(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path
) -> None:
    out = f"s3://{bucket}/job"
    store = CheckpointStore(storage, out)
    assert store.latest_complete() is None
    puts: list[str] = []
    storage.client.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: puts.append(params["Key"])
    )
    store.save(10, make_tree(tmp_path / "c10", CKPT))
    assert puts[-1] == "job/checkpoints/checkpoint-10/COMPLETE"
    store.save(20, make_tree(tmp_path / "c20", CKPT))
    # A pod killed while uploading checkpoint 30: files but no COMPLETE.
    s3.put_object(Bucket=bucket, Key="job/checkpoints/checkpoint-30/optimizer.pt", Body=b"half")
    assert store.latest_complete() == 20

    restored = store.restore(20, tmp_path / "restore")
    got = {p.name: p.read_bytes() for p in restored.iterdir()}
    assert got == CKPT
    with pytest.raises(StorageError, match="checkpoint-30 has no COMPLETE"):
        store.restore(30, tmp_path / "r30")


def test_prune_keeps_newest_and_in_flight(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path
) -> None:
    store = CheckpointStore(storage, f"s3://{bucket}/p")
    for step in (10, 20, 30):
        store.save(step, make_tree(tmp_path / f"c{step}", CKPT))
    s3.put_object(Bucket=bucket, Key="p/checkpoints/checkpoint-15/x", Body=b"dead")
    s3.put_object(Bucket=bucket, Key="p/checkpoints/checkpoint-40/x", Body=b"uploading")
    assert sorted(store.prune(keep=2)) == [10, 15]
    assert storage.list_prefixes(f"s3://{bucket}/p/checkpoints") == [
        "checkpoint-20",
        "checkpoint-30",
        "checkpoint-40",
    ]
    assert store.complete_steps() == [20, 30]


def test_local_checkpoints_restore_in_place(storage: Storage, tmp_path: Path) -> None:
    store = CheckpointStore(storage, str(tmp_path / "out"))
    store.save(5, make_tree(tmp_path / "c5", CKPT))
    (tmp_path / "out" / "checkpoints" / "checkpoint-9").mkdir()
    assert store.latest_complete() == 5
    assert store.restore(5, tmp_path / "unused") == tmp_path / "out/checkpoints/checkpoint-5"

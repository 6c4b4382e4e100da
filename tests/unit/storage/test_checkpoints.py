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


# Two nodes' parts of one sharded checkpoint: each node's disk holds its own ranks' files.
NODE_FILES = [
    {
        "trainer_state.json": b"{}",
        "pytorch_model_fsdp_0/.metadata": b"m",
        "pytorch_model_fsdp_0/__0_0.distcp": b"0" * 512,
        "pytorch_model_fsdp_0/__1_0.distcp": b"1" * 512,
        "rng_state_0.pth": b"r0",
        "rng_state_1.pth": b"r1",
    },
    {
        "pytorch_model_fsdp_0/__2_0.distcp": b"2" * 512,
        "pytorch_model_fsdp_0/__3_0.distcp": b"3" * 512,
        "rng_state_2.pth": b"r2",
        "rng_state_3.pth": b"r3",
    },
]


def files_below(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_multi_node_checkpoint_is_whole_only_with_every_nodes_part(
    storage: Storage, bucket: str, tmp_path: Path
) -> None:
    store = CheckpointStore(storage, f"s3://{bucket}/job")
    for node, files in enumerate(NODE_FILES):
        store.save(10, make_tree(tmp_path / f"n{node}-10", files), node=node, nodes=2)
    assert store.latest_complete() == 10

    # Step 20: node 1 was killed before its part was stored; node 0's part alone is not a
    # checkpoint to resume from (its ranks 2 and 3 would find no shard and no RNG state).
    store.save(20, make_tree(tmp_path / "n0-20", NODE_FILES[0]), node=0, nodes=2)
    assert store.latest_complete() == 10
    with pytest.raises(StorageError, match="checkpoint-20 has no COMPLETE"):
        store.restore(20, tmp_path / "r20")

    # The restore, on a node with an empty disk, brings every node's files and no marker.
    restored = store.restore(10, tmp_path / "fresh-node" / "checkpoint-10")
    assert files_below(restored) == {**NODE_FILES[0], **NODE_FILES[1]}

    # Each marker lists its node's files and how many nodes the checkpoint needs.
    marker = storage.read_json(f"s3://{bucket}/job/checkpoints/checkpoint-10/COMPLETE.node-1-of-2")
    assert marker is not None and (marker["node"], marker["nodes"]) == (1, 2)
    assert sorted(f["path"] for f in marker["files"]) == sorted(NODE_FILES[1])

    # Once 30 is whole, 20 (a part, older than the newest whole one) is pruned with 10's
    # spare: markers and files.
    for node, files in enumerate(NODE_FILES):
        store.save(30, make_tree(tmp_path / f"n{node}-30", files), node=node, nodes=2)
    assert store.prune(keep=1) == [10, 20]
    assert storage.list_prefixes(f"s3://{bucket}/job/checkpoints") == ["checkpoint-30"]


def test_node_markers_of_another_node_count_do_not_make_a_checkpoint_whole(
    storage: Storage, tmp_path: Path
) -> None:
    store = CheckpointStore(storage, str(tmp_path / "out"))
    store.save(5, make_tree(tmp_path / "a", CKPT), node=0, nodes=3)
    store.save(5, make_tree(tmp_path / "b", CKPT), node=1, nodes=2)
    store.save(5, make_tree(tmp_path / "c", CKPT), node=2, nodes=3)
    assert store.latest_complete() is None  # 0 and 2 of 3, 1 of 2
    store.save(5, make_tree(tmp_path / "d", CKPT), node=1, nodes=3)
    assert store.latest_complete() == 5
    with pytest.raises(ValueError, match="node 2 is not one of 2"):
        store.save(6, make_tree(tmp_path / "e", CKPT), node=2, nodes=2)

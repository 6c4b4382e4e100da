"""Background checkpoint uploads: training never waits, the newest wins, a staged copy
survives the Trainer's rotation, and a failed upload never stops training."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from finetune_trainer.storage.background import BackgroundUploads, stage_checkpoint

from tests.unit.storage.conftest import make_tree

pytestmark = pytest.mark.unit

FILES = {"adapter_model.safetensors": b"a" * 4096, "optimizer.pt": b"o" * 2048}


def test_submit_returns_at_once_and_wait_blocks_until_uploaded(tmp_path: Path) -> None:
    release = threading.Event()
    seen: list[tuple[int, set[str]]] = []

    def slow_upload(step: int, folder: Path) -> None:
        release.wait(10)
        seen.append((step, {p.name for p in folder.iterdir()}))

    uploads = BackgroundUploads(slow_upload)
    staged = stage_checkpoint(make_tree(tmp_path / "checkpoint-4", FILES), tmp_path / "stage")
    started = time.monotonic()
    uploads.submit(4, staged)
    assert time.monotonic() - started < 1.0  # training goes on while the upload waits
    assert not uploads.wait(timeout=0.2)  # still uploading
    release.set()
    assert uploads.wait(timeout=10)
    assert seen == [(4, set(FILES))] and uploads.newest_uploaded == 4
    assert not staged.exists()  # the staged copy is gone once uploaded


def test_a_waiting_checkpoint_gives_way_to_a_newer_one(tmp_path: Path) -> None:
    busy, release = threading.Event(), threading.Event()
    order: list[int] = []

    def upload(step: int, folder: Path) -> None:
        busy.set()
        release.wait(10)
        order.append(step)

    uploads = BackgroundUploads(upload)
    for step in (4, 8, 12):
        checkpoint = make_tree(tmp_path / f"checkpoint-{step}", FILES)
        uploads.submit(step, stage_checkpoint(checkpoint, tmp_path / "stage"))
        busy.wait(10)  # 4 is uploading; 8 waits, then 12 replaces it
    release.set()
    assert uploads.wait(timeout=10)
    assert order == [4, 12]
    assert not (tmp_path / "stage" / "checkpoint-8").exists()


def test_the_staged_copy_survives_the_trainers_rotation(tmp_path: Path) -> None:
    checkpoint = make_tree(tmp_path / "out" / "checkpoint-4", FILES)
    staged = stage_checkpoint(checkpoint, tmp_path / "out" / ".uploading")
    for f in checkpoint.iterdir():  # what save_total_limit's rotation does
        f.unlink()
    checkpoint.rmdir()
    assert {p.name: p.read_bytes() for p in staged.iterdir()} == FILES


def test_a_failed_upload_is_reported_and_the_next_one_still_runs(tmp_path: Path) -> None:
    def upload(step: int, folder: Path) -> None:
        if step == 4:
            raise ConnectionError("S3 went away")

    uploads = BackgroundUploads(upload)
    uploads.submit(4, stage_checkpoint(make_tree(tmp_path / "checkpoint-4", FILES), tmp_path / "s"))
    assert uploads.wait(timeout=10)
    uploads.submit(8, stage_checkpoint(make_tree(tmp_path / "checkpoint-8", FILES), tmp_path / "s"))
    assert uploads.wait(timeout=10)
    assert uploads.failed == [(4, "ConnectionError: S3 went away")]
    assert uploads.uploaded == [8]

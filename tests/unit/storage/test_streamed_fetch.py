"""The base model fetched with ranged GETs and loaded while it arrives (issue 24 item 3):
the same weights as a load from disk, a complete cache afterwards, and the same clear errors
for a missing shard, a corrupt shard and a download that keeps failing.

The S3 here is bench/s3_dir_server.py (real HTTP, boto3's real client), whose ``on_get`` hook
holds a file back or cuts bodies short.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_api.spec import FineTuneJobSpec, S3Storage
from finetune_trainer import streamed_load, switches
from finetune_trainer.acceleration import DeviceInfo
from finetune_trainer.errors import InvalidInput, StorageError
from finetune_trainer.model import load_base_model, load_config, plan_model
from finetune_trainer.storage import Storage, TransferSettings

from bench.s3_dir_server import DirectoryS3, serving
from bench.shapes import make_config

pytestmark = pytest.mark.unit

MiB = 1024 * 1024
SMALL = TransferSettings(
    threads_per_file=2,
    parallel_files=2,
    part_size=MiB,  # the tiny model's 4 MB shard arrives in 4 ranges
    request_attempts=1,
    file_attempts=2,
    retry_base_delay=0.01,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 in two safetensors shards (bf16), as ``save_pretrained`` writes it."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("bucket")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config("tiny-qwen2"), dtype=torch.bfloat16)
    model.save_pretrained(root / "tiny", max_shard_size="3MB")
    assert len(list((root / "tiny").glob("*.safetensors"))) == 2
    return root / "tiny"


@pytest.fixture
def served_root(checkpoint: Path, tmp_path: Path) -> Path:
    """A fresh copy of the checkpoint to serve (tests may break it)."""
    import shutil

    shutil.copytree(checkpoint, tmp_path / "served" / "tiny")
    return tmp_path / "served"


@pytest.fixture
def server(served_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DirectoryS3]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    with serving(served_root, "models") as s3:
        yield s3


def storage_for(server: DirectoryS3) -> Storage:
    spec = S3Storage(endpoint=server.endpoint_url, region="us-east-1", path_style=True)
    return Storage(spec, transfer=SMALL)


def spec_for(model_dir: Path) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"uri": str(model_dir)},
            "datasets": [{"uri": "train.jsonl"}],
            "training": {"precision": "bf16", "maxSteps": 1},
            "output": {"uri": "/tmp/out"},
        }
    )


def load(model_dir: Path, weights: Any = None) -> Any:
    """The trainer's loader (``load_base_model``) on this CPU, planned as a run plans it."""
    spec = spec_for(model_dir)
    plan = plan_model(model_dir, spec, DeviceInfo.detect())
    return load_base_model(
        model_dir, spec, plan, config=load_config(model_dir, spec), weights=weights
    )


def shard_names(folder: Path) -> list[str]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def test_loaded_while_arriving_equals_a_load_from_disk(
    server: DirectoryS3, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = shard_names(checkpoint)
    loading = threading.Event()

    def hold_tensors(key: str, start: int, end: int) -> int:
        if key.endswith(first) and start > 0:  # its tensors wait until the load has begun
            assert loading.wait(30)
        return 0

    build_lazy = streamed_load.lazy_state_dict

    def spy(*args: Any) -> Any:
        state = build_lazy(*args)
        loading.set()
        return state

    server.on_get = hold_tensors
    monkeypatch.setattr(streamed_load, "lazy_state_dict", spy)
    storage = storage_for(server)
    with switches.override(load_while_downloading=True):  # the default, pinned
        weights = storage.fetch_model("s3://models/tiny", tmp_path / "cache")
        assert weights.arriving  # listed, not yet downloaded
        model = load(weights.result, weights)
    assert loading.is_set()  # the load went through the lazy tensors
    reference = load(checkpoint)
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert model.name_or_path == str(weights.result)
    assert model.generation_config.to_dict() == reference.generation_config.to_dict()
    # The folder is whole and in the cache: a second fetch downloads nothing.
    for path in checkpoint.iterdir():
        assert (weights.result / path.name).read_bytes() == path.read_bytes()
    gets = server.gets
    again = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "cache")
    assert not again.arriving and server.gets == gets


def test_first_shard_is_readable_while_the_second_is_held_back(
    server: DirectoryS3, checkpoint: Path, tmp_path: Path
) -> None:
    first, second = shard_names(checkpoint)
    release = threading.Event()

    def hold_second(key: str, start: int, end: int) -> int:
        if key.endswith(second) and start > 0:  # its header may pass, its tensors wait
            release.wait(30)
        return 0

    server.on_get = hold_second
    weights = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "cache")
    size = (checkpoint / first).stat().st_size
    weights.wait_bytes(first, 0, size)  # returns while the second file is held back
    assert weights.arriving and weights.download_seconds is None
    assert (weights.result / first).read_bytes() == (checkpoint / first).read_bytes()
    release.set()
    assert weights.wait() == weights.result
    assert (weights.result / second).read_bytes() == (checkpoint / second).read_bytes()


def test_the_switch_restores_the_managed_download(
    server: DirectoryS3, checkpoint: Path, tmp_path: Path
) -> None:
    with switches.override(ranged_download=False):
        weights = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "cache")
    assert not weights.arriving
    for path in checkpoint.iterdir():
        assert (weights.result / path.name).read_bytes() == path.read_bytes()


def test_missing_shard_is_named_either_way(
    server: DirectoryS3, served_root: Path, tmp_path: Path
) -> None:
    _, second = shard_names(served_root / "tiny")
    (served_root / "tiny" / second).unlink()
    weights = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "a")
    with pytest.raises(InvalidInput, match=second):
        load(weights.result, weights)
    with switches.override(ranged_download=False):
        before = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "b")
    with pytest.raises(InvalidInput, match="spec.model.uri"):
        load(before.result, before)


def test_corrupt_shard_is_invalid_input_either_way(
    server: DirectoryS3, served_root: Path, tmp_path: Path
) -> None:
    first, _ = shard_names(served_root / "tiny")
    path = served_root / "tiny" / first
    body = bytearray(path.read_bytes())
    body[:8] = (len(body) * 2).to_bytes(8, "little")  # a header longer than the file
    path.write_bytes(bytes(body))
    # The broken shard's first range (its header) passes, its other ranges are held back, so
    # the load starts while the download runs: a tiny model from a local server is otherwise
    # often whole before the load begins, which takes the load-after-download path. The failed
    # load cancels the fetch, which lets them go.
    release = threading.Event()

    def hold_tensors(key: str, start: int, end: int) -> int:
        if key.endswith(first) and start > 0:
            release.wait(30)
        return 0

    server.on_get = hold_tensors
    weights = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "a")
    cancel = weights.cancel

    def release_then_cancel() -> None:
        release.set()
        cancel()

    weights.cancel = release_then_cancel  # type: ignore[method-assign]
    try:
        assert weights.arriving
        with (
            switches.override(load_while_downloading=True),  # the default, pinned
            pytest.raises(InvalidInput, match=f"{first} is not a valid safetensors file"),
        ):
            load(weights.result, weights)
    finally:
        release.set()
    server.on_get = None
    ranged = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "r")
    with pytest.raises(InvalidInput, match="spec.model.uri"):  # the default: load after download
        load(ranged.result, ranged)
    with switches.override(ranged_download=False):
        before = storage_for(server).fetch_model("s3://models/tiny", tmp_path / "b")
    with pytest.raises(InvalidInput, match="spec.model.uri"):
        load(before.result, before)


def test_a_range_that_keeps_failing_fails_the_load_with_the_uri(
    server: DirectoryS3, checkpoint: Path, tmp_path: Path
) -> None:
    first, second = shard_names(checkpoint)

    def cut_first(key: str, start: int, end: int) -> int:
        # Its header (range 0) arrives, the ranges of its tensors come short every time.
        return 1000 if key.endswith(first) and start > 0 else 0

    server.on_get = cut_first
    storage = storage_for(server)
    weights = storage.fetch_model("s3://models/tiny", tmp_path / "cache")
    with pytest.raises(StorageError, match=f"cannot download s3://models/tiny/{first}") as err:
        load(weights.result, weights)
    assert "retried" in str(err.value)
    # Nothing half-downloaded is trusted: the next fetch gets the broken file again, whole.
    server.on_get = None
    again = storage.fetch_model("s3://models/tiny", tmp_path / "cache")
    assert again.pending(first)
    again.wait()
    assert (again.result / first).read_bytes() == (checkpoint / first).read_bytes()
    assert (again.result / second).read_bytes() == (checkpoint / second).read_bytes()


def test_ranged_fetch_from_moto_is_byte_exact(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The same ranged GETs against another S3 implementation (moto: If-Match, Range)."""
    import os

    files = {"config.json": b"{}", "model.safetensors": os.urandom(11 * MiB + 7)}
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"m/{name}", Body=body)
    weights = storage.fetch_model(f"s3://{bucket}/m", tmp_path / "cache")
    assert weights.arriving or weights.download_seconds is not None
    folder = weights.wait()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files

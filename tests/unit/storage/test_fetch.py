"""Fetching inputs from S3 (through the ETag cache), local paths and the hub."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.errors import InvalidInput, StorageError
from finetune_trainer.storage import Storage

from tests.unit.storage.conftest import make_tree

pytestmark = pytest.mark.unit


def test_fetch_single_object(storage: Storage, s3: Any, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="data/train.jsonl", Body=b'{"a": 1}\n')
    path = storage.fetch(f"s3://{bucket}/data/train.jsonl", tmp_path / "cache")
    assert path.name == "train.jsonl"
    assert path.read_bytes() == b'{"a": 1}\n'


def test_fetch_prefix_as_folder(storage: Storage, s3: Any, bucket: str, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"w" * 1000, "tok/vocab.json": b"[]"}
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"models/tiny/{key}", Body=body)
    s3.put_object(Bucket=bucket, Key="models/tiny-other/x", Body=b"not mine")
    folder = storage.fetch(f"s3://{bucket}/models/tiny", tmp_path / "cache")
    got = {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }
    assert got == files


def test_multipart_object_round_trip(storage: Storage, bucket: str, tmp_path: Path) -> None:
    big = os.urandom(11 * 1024 * 1024)  # > threshold: multipart upload, ranged download
    (tmp_path / "big.bin").write_bytes(big)
    entry = storage.upload_file(tmp_path / "big.bin", f"s3://{bucket}/m/big.bin")
    assert entry.size == len(big)
    path = storage.fetch(f"s3://{bucket}/m/big.bin", tmp_path / "cache")
    assert path.read_bytes() == big


def test_second_fetch_is_served_from_cache_without_get(
    storage: Storage,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    count_requests: Callable[[str], list[str]],
) -> None:
    for key in ("m/a.bin", "m/b.bin"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    gets = count_requests("GetObject")
    storage.fetch(f"s3://{bucket}/m", tmp_path / "cache")
    assert sorted(gets) == ["m/a.bin", "m/b.bin"]

    gets.clear()
    # A restarted pod: a brand-new Storage, same cache folder.
    again = Storage(storage.s3_settings, transfer=storage.transfer)
    again_gets: list[str] = []
    again.client.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: again_gets.append(params["Key"])
    )
    folder = again.fetch(f"s3://{bucket}/m", tmp_path / "cache")
    assert again_gets == []
    assert (folder / "a.bin").read_bytes() == b"m/a.bin"


def test_changed_object_is_downloaded_again(
    storage: Storage,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    count_requests: Callable[[str], list[str]],
) -> None:
    s3.put_object(Bucket=bucket, Key="m/a.bin", Body=b"old")
    s3.put_object(Bucket=bucket, Key="m/b.bin", Body=b"same")
    storage.fetch(f"s3://{bucket}/m", tmp_path / "cache")
    s3.put_object(Bucket=bucket, Key="m/a.bin", Body=b"new!")  # new ETag
    s3.delete_object(Bucket=bucket, Key="m/b.bin")
    s3.put_object(Bucket=bucket, Key="m/c.bin", Body=b"added")
    gets = count_requests("GetObject")
    folder = storage.fetch(f"s3://{bucket}/m", tmp_path / "cache")
    assert sorted(gets) == ["m/a.bin", "m/c.bin"]
    assert (folder / "a.bin").read_bytes() == b"new!"
    assert not (folder / "b.bin").exists()


def test_single_object_cache_by_etag(
    storage: Storage,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    count_requests: Callable[[str], list[str]],
) -> None:
    s3.put_object(Bucket=bucket, Key="d.jsonl", Body=b"1")
    gets = count_requests("GetObject")
    storage.fetch(f"s3://{bucket}/d.jsonl", tmp_path / "c")
    storage.fetch(f"s3://{bucket}/d.jsonl", tmp_path / "c")
    assert gets == ["d.jsonl"]
    s3.put_object(Bucket=bucket, Key="d.jsonl", Body=b"2")
    assert storage.fetch(f"s3://{bucket}/d.jsonl", tmp_path / "c").read_bytes() == b"2"
    assert gets == ["d.jsonl", "d.jsonl"]


def test_missing_source_names_the_uri(storage: Storage, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        storage.fetch(f"s3://{bucket}/nope", tmp_path)
    assert info.value.reason == "SourceNotFound"
    assert f"s3://{bucket}/nope" in info.value.message


def test_missing_bucket_is_clear_and_leaks_no_secret(
    storage: Storage, s3_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput) as info:
        storage.fetch("s3://no-such-bucket-ftj/m", tmp_path)
    assert info.value.reason == "BucketNotFound"
    assert "s3://no-such-bucket-ftj" in info.value.message
    for secret in s3_env.values():
        if "secret" in secret:
            assert secret not in repr(info.value)


def test_local_paths_are_returned_in_place(storage: Storage, tmp_path: Path) -> None:
    make_tree(tmp_path / "models" / "tiny", {"config.json": b"{}"})
    cache = tmp_path / "cache"
    assert storage.fetch(f"file://{tmp_path}/models/tiny", cache) == tmp_path / "models" / "tiny"
    assert storage.fetch(str(tmp_path / "models/tiny/config.json"), cache).read_bytes() == b"{}"
    assert not cache.exists()  # no copy
    with pytest.raises(InvalidInput, match="nothing found at"):
        storage.fetch(str(tmp_path / "absent"), cache)


def test_relative_path_uses_manifest_folder(storage: Storage, tmp_path: Path) -> None:
    from finetune_trainer.storage import Location

    make_tree(tmp_path, {"data/train.jsonl": b"x"})
    uri = str(Location.parse("data/train.jsonl", tmp_path))
    assert storage.fetch(uri, tmp_path / "cache") == tmp_path / "data" / "train.jsonl"


def test_hub_unreachable_is_a_clear_storage_error(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StorageError) as info:
        storage.fetch("hf://Qwen/Qwen3-0.6B", tmp_path / "cache", revision="main")
    message = info.value.message
    assert info.value.reason == "HubUnreachable"
    assert "hf://Qwen/Qwen3-0.6B" in message and "revision main" in message
    assert "s3://" in message and "path" in message


def test_download_dir_copies_everything(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="ck/a/b.bin", Body=b"b")
    s3.put_object(Bucket=bucket, Key="ck/c.bin", Body=b"c")
    out = storage.download_dir(f"s3://{bucket}/ck", tmp_path / "restore")
    assert (out / "a" / "b.bin").read_bytes() == b"b" and (out / "c.bin").read_bytes() == b"c"


def test_tokenizer_files_come_first_and_are_not_fetched_again(
    storage: Storage,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    count_requests: Callable[[str], list[str]],
) -> None:
    """The data is checked with the tokenizer before a weight byte moves; the full fetch that
    follows reuses the tokenizer's files and keeps them."""
    tokenizer = {
        "config.json": b"{}",
        "tokenizer.json": b"{}",
        "tokenizer_config.json": b"{}",
        "special_tokens_map.json": b"{}",
        "tokenizer.model": b"sp",
        "chat_template.jinja": b"{{ messages }}",
        "additional_chat_templates/tools.jinja": b"{{ tools }}",
    }
    weights = {
        "model-00001-of-00002.safetensors": b"w" * 100,
        "model.safetensors.index.json": b"{}",
        "original/tokenizer.model": b"not read by AutoTokenizer",
        "tokenizer.safetensors": b"weights, whatever the name",
    }
    for key, body in {**tokenizer, **weights}.items():
        s3.put_object(Bucket=bucket, Key=f"models/m/{key}", Body=body)
    gets = count_requests("GetObject")
    folder = storage.fetch_tokenizer(f"s3://{bucket}/models/m", tmp_path / "cache")
    assert sorted(gets) == sorted(f"models/m/{k}" for k in tokenizer)
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == set(
        tokenizer
    )

    gets.clear()
    assert storage.fetch(f"s3://{bucket}/models/m", tmp_path / "cache") == folder
    assert sorted(gets) == sorted(f"models/m/{k}" for k in weights)
    assert all((folder / k).read_bytes() == v for k, v in {**tokenizer, **weights}.items())

    gets.clear()  # a tokenizer-first fetch on a warm cache leaves the weights in place
    storage.fetch_tokenizer(f"s3://{bucket}/models/m", tmp_path / "cache")
    assert gets == [] and (folder / "model-00001-of-00002.safetensors").is_file()


def test_tokenizer_of_a_local_model_is_read_in_place(storage: Storage, tmp_path: Path) -> None:
    model = make_tree(tmp_path / "model", {"tokenizer.json": b"{}", "model.safetensors": b"w"})
    assert storage.fetch_tokenizer(str(model), tmp_path / "cache") == model
    with pytest.raises(InvalidInput, match="nothing found"):
        storage.fetch_tokenizer(str(tmp_path / "missing"), tmp_path / "cache")

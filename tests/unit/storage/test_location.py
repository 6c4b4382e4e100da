"""Parsing and building URIs."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer.errors import InvalidInput
from finetune_trainer.storage import Location

pytestmark = pytest.mark.unit


def test_s3_uri_round_trips_and_joins() -> None:
    loc = Location.parse("s3://models/qwen/base/")
    assert (loc.scheme, loc.bucket, loc.key) == ("s3", "models", "qwen/base")
    assert str(loc.join("adapter", "a/b.json")) == "s3://models/qwen/base/adapter/a/b.json"
    assert str(Location.parse("s3://models")) == "s3://models"
    assert str(Location.parse("s3://models").join("x")) == "s3://models/x"


def test_relative_plain_path_resolves_against_base_dir(tmp_path: Path) -> None:
    loc = Location.parse("data/train.jsonl", tmp_path)
    assert loc.scheme == "file"
    assert loc.path == tmp_path / "data" / "train.jsonl"
    assert str(loc) == f"file://{tmp_path}/data/train.jsonl"
    assert Location.parse(str(loc)) == loc


def test_file_uri_absolute_and_relative(tmp_path: Path) -> None:
    assert Location.parse(f"file://{tmp_path}/m").path == tmp_path / "m"
    assert Location.parse("file://rel/m", tmp_path).path == tmp_path / "rel" / "m"


def test_hf_uri() -> None:
    loc = Location.parse("hf://Qwen/Qwen3-0.6B")
    assert (loc.scheme, loc.repo_id, loc.key) == ("hf", "Qwen/Qwen3-0.6B", "")
    data = Location.parse("hf://datasets/org/set/train")
    assert (data.repo_type, data.repo_id, data.key) == ("dataset", "org/set", "train")
    assert str(data) == "hf://datasets/org/set/train"


@pytest.mark.parametrize("uri", ["gs://b/k", "s3:///key", "hf://only-org", "s3://b/a/../../x"])
def test_bad_uris_are_refused_with_the_uri_named(uri: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Location.parse(uri)
    assert info.value.reason == "InvalidUri"

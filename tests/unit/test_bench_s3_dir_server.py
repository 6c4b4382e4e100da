"""bench/s3_dir_server.py: boto3's own client lists, heads and downloads from the emulated S3
(multipart ranged downloads included) and gets S3's errors where S3 gives them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.s3_dir_server import DirectoryS3, serving

pytestmark = pytest.mark.unit

MiB = 1024 * 1024


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[DirectoryS3, Any, dict[str, bytes]]]:
    files = {
        "m/config.json": b'{"a": 1}',
        "m/big.bin": os.urandom(7 * MiB + 123),
        "m/sub/x y%.txt": b"spaces and percent",
        "other/z": b"z",
    }
    for key, body in files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(body)
    with serving(tmp_path, "models") as server:
        client = boto3.session.Session(aws_access_key_id="any", aws_secret_access_key="any").client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        yield server, client, files


def test_lists_heads_and_gets_like_s3(served: tuple[DirectoryS3, Any, dict[str, bytes]]) -> None:
    _, s3, files = served
    listed = s3.list_objects_v2(Bucket="models", Prefix="m/")
    assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {
        k: len(v) for k, v in files.items() if k.startswith("m/")
    }
    folders = s3.list_objects_v2(Bucket="models", Prefix="m/", Delimiter="/")
    assert [p["Prefix"] for p in folders["CommonPrefixes"]] == ["m/sub/"]
    assert sorted(o["Key"] for o in folders["Contents"]) == ["m/big.bin", "m/config.json"]
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="models", PaginationConfig={"PageSize": 2}
    )
    assert [o["Key"] for page in pages for o in page["Contents"]] == sorted(files)

    head = s3.head_object(Bucket="models", Key="m/big.bin")
    assert head["ContentLength"] == len(files["m/big.bin"])
    assert head["ETag"] == listed["Contents"][0]["ETag"]
    assert (
        s3.get_object(Bucket="models", Key="m/sub/x y%.txt")["Body"].read()
        == files["m/sub/x y%.txt"]
    )
    part = s3.get_object(Bucket="models", Key="m/big.bin", Range="bytes=100-199")
    assert part["ContentRange"] == f"bytes 100-199/{len(files['m/big.bin'])}"
    assert part["Body"].read() == files["m/big.bin"][100:200]
    tail = s3.get_object(Bucket="models", Key="m/big.bin", Range="bytes=-10")["Body"].read()
    assert tail == files["m/big.bin"][-10:]


def test_multipart_ranged_download_is_byte_exact(
    served: tuple[DirectoryS3, Any, dict[str, bytes]], tmp_path: Path
) -> None:
    server, s3, files = served
    before = server.gets
    config = TransferConfig(multipart_threshold=MiB, multipart_chunksize=MiB, max_concurrency=4)
    s3.download_file("models", "m/big.bin", str(tmp_path / "out.bin"), Config=config)
    assert (tmp_path / "out.bin").read_bytes() == files["m/big.bin"]
    assert server.gets - before == 8  # 7 MiB + 123 bytes in 1 MiB ranges


def test_errors_are_s3s(served: tuple[DirectoryS3, Any, dict[str, bytes]]) -> None:
    _, s3, _ = served
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket="models", Key="m/nope")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as head:
        s3.head_object(Bucket="models", Key="m/nope")
    assert head.value.response["Error"]["Code"] == "404"
    with pytest.raises(ClientError) as bucket:
        s3.list_objects_v2(Bucket="elsewhere")
    assert bucket.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(ClientError) as changed:
        s3.get_object(Bucket="models", Key="m/big.bin", IfMatch='"not-its-etag"')
    assert changed.value.response["Error"]["Code"] == "PreconditionFailed"
    with pytest.raises(ClientError) as escape:
        s3.get_object(Bucket="models", Key="m/../other/z")
    assert escape.value.response["Error"]["Code"] == "NoSuchKey"

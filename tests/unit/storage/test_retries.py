"""Transfers survive transient failures and fail fast (and clearly) on permanent ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from finetune_api.spec import S3Storage
from finetune_api.spec import Storage as StorageSpec
from finetune_trainer.errors import StorageError
from finetune_trainer.storage import Storage

from tests.unit.storage.conftest import FAST

pytestmark = pytest.mark.unit


def test_client_is_configured_from_the_spec(storage: Storage, s3_server: Any) -> None:
    built = Storage.from_spec(
        StorageSpec(
            s3=S3Storage(endpoint=s3_server.endpoint_url, region="eu-west-1", path_style=True)
        )
    )
    config = built.client.meta.config
    assert built.client.meta.endpoint_url == s3_server.endpoint_url
    assert config.region_name == "eu-west-1"
    assert config.s3["addressing_style"] == "path"
    assert config.retries["mode"] == "adaptive"
    assert built.client is built.client  # one client, reused


def test_truncated_download_is_retried(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.put_object(Bucket=bucket, Key="w.bin", Body=b"x" * 1000)
    real = storage.client.download_file
    calls: list[int] = []

    def flaky(bucket_: str, key: str, filename: str, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:  # the connection dropped mid-body, unnoticed by s3transfer
            Path(filename).write_bytes(b"x" * 10)
            return
        real(bucket_, key, filename, **kwargs)

    monkeypatch.setattr(storage.client, "download_file", flaky)
    path = storage.fetch(f"s3://{bucket}/w.bin", tmp_path / "cache")
    assert path.read_bytes() == b"x" * 1000
    assert len(calls) == 2


def test_connection_error_on_upload_is_retried(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f.bin").write_bytes(b"payload")
    real = storage.client.upload_file
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise EndpointConnectionError(endpoint_url="http://s3.test")
        real(*args, **kwargs)

    monkeypatch.setattr(storage.client, "upload_file", flaky)
    storage.upload_file(tmp_path / "f.bin", f"s3://{bucket}/f.bin")
    assert s3.get_object(Bucket=bucket, Key="f.bin")["Body"].read() == b"payload"
    assert len(calls) == 2


def test_unreachable_endpoint_fails_after_retries_with_a_clear_message(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    transfer = dataclasses.replace(FAST, request_attempts=1, file_attempts=2)
    storage = Storage(S3Storage(endpoint="http://127.0.0.1:9", path_style=True), transfer=transfer)
    with pytest.raises(StorageError) as info:
        storage.fetch("s3://models/tiny", tmp_path)
    message = info.value.message
    assert "s3://models/tiny" in message and "spec.storage.s3.endpoint" in message
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in message
    assert s3_env["AWS_ACCESS_KEY_ID"] not in message


def test_permanent_errors_are_not_retried(
    storage: Storage, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = storage.client.head_object
    calls: list[int] = []

    def counted(**kwargs: Any) -> Any:
        calls.append(1)
        return real(**kwargs)

    monkeypatch.setattr(storage.client, "head_object", counted)
    assert not storage.exists(f"s3://{bucket}/absent")
    assert len(calls) == 1

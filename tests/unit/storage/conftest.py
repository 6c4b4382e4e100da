"""Fixtures for the storage tests: one moto S3 server per session, a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_api.spec import S3Storage
from finetune_trainer.storage import JobIdentity, Storage, TransferSettings

from tests.harness.s3 import S3Server

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server over HTTP on a free loopback port, for the whole session."""
    with S3Server() as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A new, empty bucket (unique name: tests never see each other's objects)."""
    name = f"ftj-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials in the environment, as the pod gets them from its Secret."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()


FAST = TransferSettings(
    threads_per_file=4,
    parallel_files=4,
    part_size=5 * MiB,  # S3's (and moto's) minimum part size
    multipart_threshold=5 * MiB,
    request_attempts=3,
    file_attempts=3,
    retry_base_delay=0.01,
)


@pytest.fixture
def storage(s3_server: S3Server, s3_env: dict[str, str]) -> Storage:
    """A Storage for the test server, built the way the trainer builds it, with fast retries."""
    spec = S3Storage(endpoint=s3_server.endpoint_url, region="us-east-1", path_style=True)
    return Storage(spec, transfer=FAST)


@pytest.fixture
def s3(s3_server: S3Server) -> Any:
    """A plain boto3 client, to arrange and inspect objects behind the Storage's back."""
    return s3_server.client()


@pytest.fixture
def count_requests(storage: Storage) -> Callable[[str], list[str]]:
    """Record the keys of every ``operation`` (e.g. GetObject) the Storage's client sends."""

    def install(operation: str) -> list[str]:
        seen: list[str] = []

        def hook(params: dict[str, Any], **_: Any) -> None:
            seen.append(str(params.get("Key")))

        storage.client.meta.events.register(f"provide-client-params.s3.{operation}", hook)
        return seen

    return install


@pytest.fixture
def job() -> JobIdentity:
    """The job under test."""
    return JobIdentity("team-a", "qwen-sft", "uid-1111")


@pytest.fixture
def other_job() -> JobIdentity:
    """A different job."""
    return JobIdentity("team-b", "llama-sft", "uid-2222")


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path → bytes) under ``root``."""
    for relative, body in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return root

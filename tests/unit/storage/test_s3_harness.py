"""The S3 test server itself: the child-process mode and a configurable loopback host."""

from __future__ import annotations

import pytest

from tests.harness.s3 import S3Server

pytestmark = pytest.mark.unit


def test_process_mode_on_another_loopback_address() -> None:
    with S3Server(host="127.0.0.2", process=True) as server:
        assert server.endpoint_url.startswith("http://127.0.0.2:")
        assert server.create_bucket("harness") == "s3://harness"
        server.client().put_object(Bucket="harness", Key="k", Body=b"v")
        server.reset()
        assert server.client().list_buckets()["Buckets"] == []
    server.stop()  # idempotent

"""An S3 server over real HTTP for tests: moto's server on a free loopback port.

Why a server and not moto's in-process mock decorators: the code under test (and, in the e2e
tier, the trainer running as another process) must make real boto3 HTTP requests, with
multipart transfers, retries and connection pools, exactly as against AWS or MinIO.

Two modes:

* in-process (default): ``moto.server.ThreadedMotoServer`` on a thread; starts in ~0.1 s.
* ``process=True``: ``python -m moto.server`` as a child process, for tests that must not
  share the interpreter (GIL, moto's global state) with the server.

Usage::

    with S3Server() as s3:
        s3.create_bucket("models")
        client = s3.client()
        env = s3.env()   # AWS_* variables for a child process (fake test credentials)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

# Fake credentials: moto accepts any; they only have to look like keys.
TEST_ACCESS_KEY_ID = "FTJTESTACCESSKEY0000"
TEST_SECRET_ACCESS_KEY = "ftj-test-secret-key-not-a-real-one-0000000"
TEST_REGION = "us-east-1"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class S3Server:
    """A started moto S3 server; use as a context manager (or call start/stop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, process: bool = False) -> None:
        self.host = host
        self.port = port
        self.process_mode = process
        self._threaded: Any = None
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: Any = None

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> S3Server:
        """Start the server and wait until it answers."""
        if self.process_mode:
            self.port = self.port or _free_port(self.host)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait_ready(timeout=30.0)
        else:
            from moto.server import ThreadedMotoServer

            self._threaded = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
            self._threaded.start()
            self.port = self._threaded.get_host_and_port()[1]
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url} in {timeout}s")

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self._threaded is not None:
            self._threaded.stop()
            self._threaded = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for code that finds credentials the AWS way (a child process, a pod)."""
        return {
            "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": TEST_REGION,
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style, fake credentials)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=TEST_REGION,
            aws_access_key_id=TEST_ACCESS_KEY_ID,
            aws_secret_access_key=TEST_SECRET_ACCESS_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket; returns ``s3://name``."""
        if self._admin is None:
            self._admin = self.client()
        self._admin.create_bucket(Bucket=name)
        return f"s3://{name}"

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

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

``S3Server(record=True)`` (in-process only) also keeps a log of every request it answered,
with the bytes of each response body (:class:`RequestLog`): what a test counts to show that a
process it started never downloaded an object, whichever client that process used.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ServedRequest:
    """One request the server answered: method, path (``/bucket/key``) and body bytes sent."""

    method: str
    path: str
    body_bytes: int


class RequestLog:
    """WSGI middleware in front of moto: records each request and counts the response body's
    bytes as they are written to the socket."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.requests: list[ServedRequest] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = str(environ["REQUEST_METHOD"]), str(environ.get("PATH_INFO", ""))
        body = self.app(environ, start_response)

        def counted() -> Iterator[bytes]:
            sent = 0
            try:
                for chunk in body:
                    sent += len(chunk)
                    yield chunk
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                with self._lock:
                    self.requests.append(ServedRequest(method, path, sent))

        return counted()

    def bytes_served(self, path: str, method: str = "GET") -> int:
        """Body bytes sent for ``method`` requests of ``path`` (``/bucket/key``)."""
        with self._lock:
            return sum(r.body_bytes for r in self.requests if r.method == method and r.path == path)


class _LoggedServer:
    """moto's app behind :class:`RequestLog` on a werkzeug server thread (what
    ``ThreadedMotoServer`` does, with the log in between)."""

    def __init__(self, host: str, port: int) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass  # the log is ours; one stderr line per request is noise

        self.log = RequestLog(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(host, port, self.log, threaded=True, request_handler=Quiet)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever: only once
            self._server.shutdown()
            self._thread.join()


class S3Server:
    """A started moto S3 server; use as a context manager (or call start/stop)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        process: bool = False,
        record: bool = False,
    ) -> None:
        if process and record:
            raise ValueError("record=True needs the in-process server")
        self.host = host
        self.port = port
        self.process_mode = process
        self.record = record
        self._threaded: Any = None
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: Any = None
        self._logged: _LoggedServer | None = None

    @property
    def requests(self) -> RequestLog:
        """The requests answered so far (``record=True`` only)."""
        if self._logged is None:
            raise RuntimeError("S3Server(record=True) keeps a request log; this one does not")
        return self._logged.log

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
        elif self.record:
            self._logged = _LoggedServer(self.host, self.port)
            self.port = self._logged.port
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
        if self._logged is not None:
            self._logged.stop()
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

"""A real MLflow tracking server for tests: ``mlflow server`` from the ``mlflow`` package.

SQLite backend and model registry, artifacts proxied by the server into a local folder
(``--artifacts-destination``), one worker on a free loopback port. The trainer talks to it over
HTTP exactly as to a team's server; the test reads back what arrived with ``MlflowClient``.
:meth:`MlflowServer.stop` kills it mid-run (the outage a run must survive) and
:meth:`MlflowServer.start` brings it back on the same port with the same database.

Usage::

    with MlflowServer(tmp_path) as mlflow:
        env = {"MLFLOW_TRACKING_URI": mlflow.uri}
        client = mlflow.client()
"""

from __future__ import annotations

import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness.processes import ManagedProcess, tail

STARTUP_TIMEOUT_SECONDS = 120.0  # a cold start imports mlflow's server stack: ~10 s on 2 cores


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` with its database and artifacts under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._process: ManagedProcess | None = None
        self._starts = 0

    def start(self) -> MlflowServer:
        """Start (or restart) the server and wait until it answers ``/health``."""
        executable = shutil.which("mlflow")
        if executable is None:
            raise RuntimeError("no mlflow command: pip install -c constraints.txt mlflow")
        self.root.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        argv = [
            executable,
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self._process = ManagedProcess("mlflow", argv, self.root / f"server-{self._starts}.log")
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._process.check_alive()
            if self.healthy():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not up in time:\n{tail(self._process.log_path)}")

    def healthy(self) -> bool:
        """The server answers ``GET /health``."""
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Kill the server (its data stays for a restart)."""
        if self._process is not None:
            self._process.stop(grace=5)
            self._process = None

    def client(self) -> Any:
        """An ``MlflowClient`` of this server."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def log(self) -> str:
        """The current server's log tail (for failure messages)."""
        return tail(self.root / f"server-{self._starts}.log", 60)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

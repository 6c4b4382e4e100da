"""The real operator as a child process, the way the image starts it.

Why a process and not ``kopf.operator()`` in a thread: the tests must exercise the image's
entry point (``python -m finetune_operator``), its environment-variable configuration and its
behaviour when killed with SIGKILL mid-reconcile and started again, none of which an in-process
run can show.

Usage::

    op = OperatorProcess(kubeconfig, env={"FTJ_PROGRESS_POLL_SECONDS": "1"}, log_dir=tmp)
    op.start(); op.wait_ready()
    ...
    op.kill(); op.restart()
    print(op.logs())
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_COMMAND = (sys.executable, "-m", "finetune_operator")
# Fast loops for tests; every variable is documented in finetune_operator.settings.ENV_DOCS.
TEST_ENV = {
    "FTJ_PROGRESS_POLL_SECONDS": "1",
    "FTJ_STATUS_MIN_INTERVAL_SECONDS": "1",
    "FTJ_METRICS_PORT": "0",
    "FTJ_LIVENESS_ENDPOINT": "",
    "FTJ_LOG_LEVEL": "DEBUG",
    "PYTHONUNBUFFERED": "1",
}


class OperatorProcess:
    """Start, SIGKILL and restart the operator; logs go to numbered files in ``log_dir``."""

    def __init__(
        self,
        kubeconfig: Path | str,
        log_dir: Path | str,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = DEFAULT_COMMAND,
    ) -> None:
        self.kubeconfig = str(kubeconfig)
        self.log_dir = Path(log_dir)
        self.env = {**TEST_ENV, **(env or {})}
        self.command = list(command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_paths: list[Path] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> OperatorProcess:
        """Spawn the operator (its own process group, so kill() reaches any children)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        path = self.log_dir / f"operator-{self.runs}.log"
        self.log_paths.append(path)
        env = {**os.environ, **self.env, "KUBECONFIG": self.kubeconfig}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(
                None,
                [
                    str(REPO / "operator"),
                    str(REPO / "trainer-image"),
                    str(REPO),
                    os.environ.get("PYTHONPATH", ""),
                ],
            )
        )
        with open(path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(REPO),
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 60.0, marker: str | None = None) -> None:
        """Wait until the log shows kopf watching (or ``marker``); raise with the log if not."""
        markers = (
            [marker]
            if marker
            else [
                "Starting the watch-stream",
                "watch-stream for",
                "Resuming",
                "Handler",
                "Adding the finalizer",
            ]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"operator exited with {self.proc.returncode}:\n{self.logs()[-5000:]}"
                )
            text = self.logs()
            if any(m in text for m in markers):
                return
            time.sleep(0.2)
        raise TimeoutError(f"operator not ready after {timeout}s:\n{self.logs()[-5000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the operator abruptly (default SIGKILL: no cleanup, as an OOM kill)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (kopf's graceful shutdown), then SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> OperatorProcess:
        """SIGKILL the running operator (if any) and start a fresh one."""
        self.kill()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self, run: int | None = None) -> str:
        """Log of one run (1-based), or of all runs concatenated."""
        paths = self.log_paths if run is None else [self.log_paths[run - 1]]
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

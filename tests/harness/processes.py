"""Child processes for the test harness that never outlive the tests.

Each process gets its own process group (so stopping it also stops anything it spawned), its
output goes to a log file (quoted in errors), and Linux is asked to kill it should the test
run itself die without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO


class ProcessExitedError(RuntimeError):
    """A managed process exited while it was expected to keep running."""


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages that explain themselves."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL the child when pytest dies without cleaning up.

    Covers ``kill -9`` of the test run and crashes, where no finalizer runs. The signal is tied
    to the *thread* that forks, so start processes from the main thread (pytest fixtures do).
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class ManagedProcess:
    """A child process in its own process group, logging to a file, stopped reliably."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            self._log.close()
            raise

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise ProcessExitedError(
                f"{self.name} exited with code {code}; last log lines "
                f"({self.log_path}):\n{tail(self.log_path)}"
            )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if still running after ``grace`` seconds."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=grace)
        self._signal_group(signal.SIGKILL)  # stragglers left in the group, if any
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

"""``ftj run`` deletes its temporary scratch folder when it ends, whatever the outcome.

For a real model the scratch folder (the model cache, local checkpoints, the merged model
before it is published) holds gigabytes, and a folder left behind by every run fills a disk.
What a user observes: after a run that succeeded, failed or was stopped with Ctrl-C, nothing
of it is left in the temporary folder; with ``--keep-work`` the folder stays and ``ftj run``
says where it is. The runs here use their own ``TMPDIR``, so the test sees exactly what one
run leaves there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.trainer.test_trainer_runs import EXIT_INVALID_INPUT, quickstart_manifest

pytestmark = pytest.mark.e2e

SCRATCH_LINE = re.compile(r"\(scratch: (\S+)\)")


def job_file(tmp: Path, **training: object) -> Path:
    """The quickstart, publishing into ``tmp/out``, with ``training`` overrides."""
    manifest = quickstart_manifest(**training)
    manifest["spec"]["output"]["uri"] = str(tmp / "out")
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def run_env(tmp: Path) -> dict[str, str]:
    """This test's own temporary folder for the ``ftj run`` process."""
    temp = tmp / "tmp"
    temp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(temp), "MPLCONFIGDIR": str(tmp / "mpl")}


def scratch_of(stderr: str) -> Path:
    found = SCRATCH_LINE.search(stderr)
    assert found, stderr[-3000:]
    return Path(found.group(1))


def left_in_tmp(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "tmp").iterdir() if p.name.startswith("ftj-run-"))


def test_a_successful_run_leaves_no_work_folder(tmp_path: Path) -> None:
    path = job_file(tmp_path, maxSteps=4, saveSteps=2, evalSteps=2, loggingSteps=2)
    proc = subprocess.run(
        ["ftj", "run", str(path)], env=run_env(tmp_path), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    scratch = scratch_of(proc.stderr)
    assert scratch.parent == (tmp_path / "tmp").resolve()  # the temporary folder was used
    assert (tmp_path / "out" / "MANIFEST.json").is_file()  # the artifacts are published
    assert not scratch.exists() and left_in_tmp(tmp_path) == []


def test_keep_work_keeps_the_folder_of_a_failed_run_and_says_where(tmp_path: Path) -> None:
    """A failed run with ``--keep-work``: the folder stays (for a look inside); without it,
    the same failure leaves nothing."""
    path = job_file(tmp_path, maxSteps=4)
    bad = tmp_path / "broken.json"
    bad.write_text('[{"instruction": "Who are you?", "output": "I am {{name}}."}, {"oops": 1')
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["datasets"][0]["uri"] = str(bad)
    path.write_text(yaml.safe_dump(doc))

    kept = subprocess.run(
        ["ftj", "run", str(path), "--keep-work"], env=run_env(tmp_path), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert kept.returncode == EXIT_INVALID_INPUT, kept.stderr[-4000:]
    scratch = scratch_of(kept.stderr)
    assert f"work files kept in {scratch} (--keep-work)" in kept.stderr
    assert (scratch / "termination-log.json").is_file()  # what the trainer left, to look at
    assert left_in_tmp(tmp_path) == [scratch.name]

    gone = subprocess.run(
        ["ftj", "run", str(path)], env=run_env(tmp_path), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert gone.returncode == EXIT_INVALID_INPUT, gone.stderr[-4000:]
    assert "broken.json" in gone.stderr
    assert "kept in" not in gone.stderr
    assert not scratch_of(gone.stderr).exists()
    assert left_in_tmp(tmp_path) == [scratch.name]  # only the kept one


def test_ctrl_c_in_the_middle_of_training_leaves_no_work_folder(tmp_path: Path) -> None:
    """SIGINT (what Ctrl-C sends) once a local checkpoint is written: exit 130, folder gone."""
    path = job_file(tmp_path, maxSteps=100_000, saveSteps=2, evalSteps=1000, loggingSteps=10)
    proc = subprocess.Popen(
        ["ftj", "run", str(path)], env=run_env(tmp_path), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        scratch: Path | None = None
        while scratch is None or not (scratch / "checkpoints" / "checkpoint-2").is_dir():
            assert proc.poll() is None, "ftj run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no local checkpoint was written"
            if scratch is None and (temps := left_in_tmp(tmp_path)):
                scratch = (tmp_path / "tmp" / temps[0]).resolve()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-4000:]
    assert "interrupted" in stderr
    assert not scratch.exists() and left_in_tmp(tmp_path) == []

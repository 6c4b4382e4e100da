"""``ftj run`` honours ``spec.resources`` as a pod would: N GPUs start N trainer processes.

A spec with ``gpus: 2`` used to train on one device under ``ftj run`` without a word. Now it
starts the trainer under ``torchrun --standalone --nproc-per-node=2`` (the operator's pod
command), and a machine with fewer GPUs, or a multi-node spec, is refused before anything runs,
naming the field and the fix.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.trainer.test_trainer_runs import EXIT_INVALID_INPUT, quickstart_manifest

pytestmark = pytest.mark.e2e


def write_manifest(tmp: Path, resources: dict[str, Any], **training: Any) -> Path:
    manifest = quickstart_manifest(**training)
    manifest["spec"]["resources"] = resources
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ({"gpus": 2}, "spec.resources.gpus: 2, but this machine has 0 CUDA GPU(s)"),
        ({"gpus": 8, "nodes": 2}, "spec.resources.nodes: 2 needs a cluster"),
    ],
)
def test_a_spec_this_machine_cannot_run_is_refused_naming_the_field(
    tmp_path: Path, resources: dict[str, Any], says: str
) -> None:
    path = write_manifest(tmp_path, resources)
    started = time.monotonic()
    proc = subprocess.run(
        ["ftj", "run", str(path), "--workdir", str(tmp_path / "w")],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == EXIT_INVALID_INPUT, proc.stderr[-2000:]
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60  # refused before any model loads


def test_gpus_2_starts_two_trainer_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The torchrun path, on a CPU machine told it has two GPUs (the ranks then train on CPUs
    over gloo, as tests/e2e/test_multinode_cpu.py explains)."""
    from finetune_cli import cmd_run
    from finetune_cli.main import main

    monkeypatch.setattr(cmd_run, "visible_gpus", lambda: 2)
    # ftj run sets the pod's FTJ_* variables in its own process; give them back afterwards.
    for name in ("MANIFEST", "WORKDIR", "PROGRESS_PORT", "PROGRESS_HOST", "TERMINATION_LOG",
                 "OUTPUT_URI"):  # fmt: skip
        monkeypatch.setenv(f"FTJ_{name}", "")
    for name, value in {
        "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[3] / d) for d in ("operator", "trainer-image")]
        ),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    path = write_manifest(tmp_path, {"gpus": 2}, maxSteps=10, saveSteps=10, evalSteps=10)
    out = tmp_path / "out"
    code = main(["run", str(path), "--output", str(out), "--workdir", str(tmp_path / "w")])
    printed = capfd.readouterr()
    assert code == 0, printed.err[-4000:]
    assert "[rank 1]" in printed.err  # the second process trained too
    assert "10/10 (100%)" in printed.err
    assert f"file://{out}/merged" in printed.out  # the summary rank 0 left behind
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

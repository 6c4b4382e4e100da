"""bench.worker's Unsloth rows: named like the other rows, and without a GPU a row reports why
it did not run instead of training through some other path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import worker

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_every_unsloth_row_builds_with_unsloths_recipe() -> None:
    for config in ("unsloth", "unsloth-dropout0", "unsloth-4bit", "unsloth-4bit-dropout0"):
        assert worker.builder(config) is worker.CONFIGS[config]
    assert worker.builder("unsloth-trace") is worker.CONFIGS["unsloth"]


def test_without_a_gpu_the_row_fails_with_the_reason(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the row would run")
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "bench.worker", "--model", "tiny-qwen2", "--config", "unsloth",
           "--ckpt", str(tmp_path / "none"), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["config"] == "unsloth" and "tokens_per_s" not in row
    assert "need a CUDA GPU" in row["error"] and "FTJ_BENCH_UNSLOTH_CPU=1" in row["error"]


def test_environment_suffixes_stack_onto_their_base_config() -> None:
    """Two levers measured together in one row (``default-dropfuse-fp8bwd``) still train the
    default's trainer; an unknown name says which."""
    assert worker.builder("default-dropfuse-fp8bwd") is worker.CONFIGS["default"]
    assert worker.builder("default-dropfuse") is worker.CONFIGS["default"]
    with pytest.raises(KeyError, match="default-nosuchlever"):
        worker.builder("default-nosuchlever")

"""The progress channel: /progress JSON shape, the ETA and percent math, the 4 KiB cap."""

from __future__ import annotations

import json
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from finetune_api.status import Progress
from finetune_trainer.progress import (
    TERMINATION_MESSAGE_LIMIT,
    ProgressReporter,
    ProgressState,
    TokenCounter,
    format_eta,
    format_summary,
    termination_message,
    write_termination_message,
)

pytestmark = pytest.mark.unit

PROGRESS_KEYS = {
    "phase", "step", "totalSteps", "epoch", "percent", "summary", "loss", "evalLoss",
    "learningRate", "tokensPerSecond", "gpuMemoryGib", "etaSeconds", "eta", "updatedAt",
    "resumedFromStep",
}  # fmt: skip


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (200, "3m20s"), (3900, "1h05m"), (86400 + 3 * 3600, "1d03h")],
)
def test_eta_is_short_for_people(seconds: float, text: str) -> None:
    assert format_eta(seconds) == text


def test_summary_shows_step_total_and_percent() -> None:
    assert format_summary(120, 500) == "120/500 (24%)"
    assert format_summary(7, None) == "7"


def test_progress_json_has_exactly_the_status_keys_and_valid_values() -> None:
    state = ProgressState(
        phase="Training", step=120, total_steps=500, epoch=1.23456, loss=1.5, eval_loss=1.7,
        learning_rate=2e-4, tokens_per_second=1234.56, eta_seconds=3900, resumed_from_step=100,
        gpu_memory_gib=71.33,
    )  # fmt: skip
    doc = state.to_json()
    assert set(doc) == PROGRESS_KEYS
    assert doc["percent"] == 24.0
    assert doc["summary"] == "120/500 (24%)"
    assert doc["eta"] == "1h05m"
    # Everything but phase and resumedFromStep is exactly status.progress (camelCase, ranges).
    progress = {k: v for k, v in doc.items() if k not in ("phase", "resumedFromStep")}
    Progress.model_validate(progress)
    # The operator keeps every one of them, the GPU memory included (status, ftj describe).
    from finetune_operator.observe import progress_from

    kept = progress_from(doc)
    assert kept is not None and kept.gpu_memory_gib == 71.33
    assert "finetune_trainer_gpu_memory_gib 71.33" in state.to_prometheus()
    reporter = ProgressReporter(port=None)
    reporter.state.gpu_memory_gib = 19.6
    assert "gpu 19.6GiB" in reporter.progress_line()


def test_unknown_values_are_left_out() -> None:
    doc = ProgressState().to_json()
    assert set(doc) == {"phase", "updatedAt"}


def _callbacks(reporter: ProgressReporter) -> None:
    args: Any = SimpleNamespace()
    control: Any = SimpleNamespace()
    state: Any = SimpleNamespace(global_step=40, max_steps=100, epoch=0.4)
    reporter.on_train_begin(args, state, control)
    state.global_step = 41
    reporter.on_step_end(args, state, control)
    reporter.on_log(args, state, control, logs={"loss": 2.5, "learning_rate": 1e-4})
    reporter.on_log(args, state, control, logs={"eval_loss": 2.7})


def test_eta_follows_the_steps_run_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Resumed at step 100 of 500: the restored steps took no time here. Two-second steps then
    # mean 2 s x the steps left, through the trainer's step-begin and step-end callbacks.
    clock = [1000.0]
    monkeypatch.setattr("finetune_trainer.progress.time.monotonic", lambda: clock[0])
    reporter = ProgressReporter(port=None)
    args: Any = SimpleNamespace()
    control: Any = SimpleNamespace()
    state: Any = SimpleNamespace(global_step=100, max_steps=500, epoch=1.0)
    reporter.on_train_begin(args, state, control)
    for _ in range(5):
        reporter.on_step_begin(args, state, control)
        clock[0] += 2.0
        state.global_step += 1
        reporter.on_step_end(args, state, control)
    assert reporter.snapshot()["etaSeconds"] == 395 * 2
    assert reporter.snapshot()["eta"] == "13m10s"


def test_server_serves_progress_metrics_and_health() -> None:
    reporter = ProgressReporter("127.0.0.1", 0)
    reporter.start()
    try:
        _callbacks(reporter)
        base = f"http://127.0.0.1:{reporter.port}"
        with urllib.request.urlopen(f"{base}/progress", timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            doc = json.load(response)
        assert doc["phase"] == "Training"
        assert (doc["step"], doc["totalSteps"], doc["percent"]) == (41, 100, 41.0)
        assert (doc["loss"], doc["evalLoss"], doc["learningRate"]) == (2.5, 2.7, 1e-4)
        assert set(doc) <= PROGRESS_KEYS
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "finetune_trainer_step 41.0" in text
        assert "finetune_trainer_total_steps 100.0" in text
        assert 'finetune_trainer_phase_info{phase="Training"} 1.0' in text
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.read() == b"ok"
    finally:
        reporter.stop()


def test_progress_line_reads_like_a_progress_bar() -> None:
    reporter = ProgressReporter(port=None)
    _callbacks(reporter)
    line = reporter.progress_line(width=10)
    assert line.startswith("[####......] 41/100 (41%) loss 2.5000 eval 2.7000 lr 1.00e-04")


def test_token_counter_counts_real_tokens_only() -> None:
    def padded(features: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "input_ids": torch.zeros(2, 5, dtype=torch.long),
            "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        }

    def packed(features: list[dict[str, Any]]) -> dict[str, Any]:
        return {"input_ids": torch.zeros(1, 7, dtype=torch.long)}

    counter = TokenCounter(padded)
    counter([])
    assert counter.tokens == 8
    counter = TokenCounter(packed)
    counter([])
    assert counter.tokens == 7


def test_termination_message_fits_4kib_and_keeps_reason_and_artifacts() -> None:
    artifacts = {"adapter": "s3://b/out/adapter", "manifest": "s3://b/out/MANIFEST.json"}
    progress = ProgressState(phase="Failed", step=3, total_steps=10, resumed_from_step=2).to_json()
    text = termination_message(
        "Failed",
        progress=progress,
        reason="InvalidInput",
        message="x" * 20_000,
        artifacts=artifacts,
    )
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    doc = json.loads(text)
    assert doc["reason"] == "InvalidInput"
    assert doc["artifacts"] == artifacts
    assert doc["resumedFromStep"] == 2
    assert doc["message"].startswith("xxx") and doc["message"].endswith("…")


def test_termination_message_with_multibyte_text_still_fits() -> None:
    text = termination_message("Failed", progress={}, reason="X", message="é数" * 5000)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    json.loads(text)


def test_termination_log_skipped_where_not_writable(tmp_path: Any) -> None:
    assert not write_termination_message(tmp_path / "missing-dir" / "log", "{}")
    assert write_termination_message(tmp_path / "log", "{}")

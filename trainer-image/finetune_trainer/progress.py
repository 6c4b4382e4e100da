"""Progress reporting: what the operator polls, what a person reads in the log, the final word.

The trainer pod serves its progress instead of pushing it (see ``docs/internals.md``): the pod
needs no credentials, and the operator sets the polling rate. Three outputs share one
:class:`ProgressState`:

* ``GET /progress`` (JSON, keys of ``status.progress`` plus ``phase``; with an ``ETag``, and a
  long poll when asked: ``If-None-Match`` + ``Prefer: wait=N`` answer on the next change or
  with 304 after N seconds, so the operator learns of a step at once without polling often),
  ``GET /metrics`` (Prometheus text) and ``GET /healthz`` from a small threaded HTTP server;
* a progress-bar line in the log every ``loggingSteps``;
* the termination message (at most 4 KiB) the kubelet copies into the pod status.

Only rank 0 reports: the other ranks of a multi-GPU run get a reporter whose server is off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from finetune_api.contract import TERMINATION_MESSAGE_LIMIT, TRAINER_PHASES, prefer_wait
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.step_pace import StepPace

log = logging.getLogger("finetune_trainer")


def is_main_process() -> bool:
    """Rank 0 of the whole run (torchrun sets ``RANK``; a single process has none)."""
    return int(os.environ.get("RANK", "0")) == 0


def format_eta(seconds: float) -> str:
    """A short duration for people: ``45s``, ``3m20s``, ``1h05m``, ``2d03h``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_summary(step: int, total: int | None) -> str:
    """``120/500 (24%)``; just the step when the total is not known yet."""
    if not total:
        return f"{step}"
    return f"{step}/{total} ({int(100 * step / total)}%)"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProgressState:
    """The numbers behind ``/progress``; ``None`` means unknown (the key is left out)."""

    phase: str = "Initializing"
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    gpu_memory_gib: float | None = None
    eta_seconds: int | None = None
    resumed_from_step: int | None = None
    # The latest re-plan after an out-of-memory error (oom_recovery.Replan.to_json) and how
    # many there were: the operator's MemoryReplanned condition and Event.
    memory_replan: dict[str, Any] | None = None
    # Why this run removed the checkpoints in its output and started from step 0 (another
    # recipe than the earlier job of the same name): the operator's Resumed=False condition.
    started_fresh: str | None = None
    # Experiment tracking's state ({ok, reason, message}, tracking/): the Tracking condition.
    tracking: dict[str, Any] | None = None
    updated_at: str = field(default_factory=_now)

    @property
    def percent(self) -> float | None:
        """``step / totalSteps`` in percent, one decimal."""
        if self.step is None or not self.total_steps:
            return None
        return round(min(100.0, 100.0 * self.step / self.total_steps), 1)

    def to_json(self) -> dict[str, Any]:
        """The ``/progress`` document: exactly the keys of ``status.progress`` plus ``phase``."""
        doc: dict[str, Any] = {
            "phase": self.phase,
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": None if self.epoch is None else round(self.epoch, 4),
            "percent": self.percent,
            "summary": None if self.step is None else format_summary(self.step, self.total_steps),
            "loss": self.loss,
            "evalLoss": self.eval_loss,
            "learningRate": self.learning_rate,
            "tokensPerSecond": (
                None if self.tokens_per_second is None else round(self.tokens_per_second, 1)
            ),
            "gpuMemoryGib": self.gpu_memory_gib,
            "etaSeconds": self.eta_seconds,
            "eta": None if self.eta_seconds is None else format_eta(self.eta_seconds),
            "updatedAt": self.updated_at,
            "resumedFromStep": self.resumed_from_step,
            "memoryReplan": self.memory_replan,
            "startedFresh": self.started_fresh,
            "tracking": self.tracking,
        }
        return {k: v for k, v in doc.items() if v is not None}

    def to_prometheus(self) -> str:
        """The same numbers as Prometheus text exposition (``finetune_trainer_*``)."""
        gauges = {
            "step": ("Optimizer steps done.", self.step),
            "total_steps": ("Optimizer steps planned.", self.total_steps),
            "epoch": ("Fractional epoch.", self.epoch),
            "progress_percent": ("step / total_steps in percent.", self.percent),
            "loss": ("Latest training loss.", self.loss),
            "eval_loss": ("Latest validation loss.", self.eval_loss),
            "learning_rate": ("Current learning rate.", self.learning_rate),
            "tokens_per_second": ("Real (non-padding) tokens per second.", self.tokens_per_second),
            "gpu_memory_gib": ("Peak GPU memory allocated on this rank, GiB.", self.gpu_memory_gib),
            "eta_seconds": ("Estimated seconds until training ends.", self.eta_seconds),
            "resumed_from_step": ("Step restored from a checkpoint.", self.resumed_from_step),
        }
        lines: list[str] = []
        for name, (help_text, value) in gauges.items():
            if value is None:
                continue
            lines += [
                f"# HELP finetune_trainer_{name} {help_text}",
                f"# TYPE finetune_trainer_{name} gauge",
                f"finetune_trainer_{name} {float(value)!r}",
            ]
        lines += ["# HELP finetune_trainer_phase_info Current phase (value 1)."]
        lines += ["# TYPE finetune_trainer_phase_info gauge"]
        lines += [f'finetune_trainer_phase_info{{phase="{self.phase}"}} 1.0']
        return "\n".join(lines) + "\n"


class TokenCounter:
    """Counts the real tokens handed to the model, wrapping the data collator.

    Counting where batches are built works the same for packed rows (no padding at all) and
    padded batches (the attention mask says which tokens are real), without depending on
    which metrics a TRL version happens to log.
    """

    def __init__(self, collator: Any) -> None:
        self._collator = collator
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self._collator(features)
        mask = batch.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())
        else:
            self.tokens += int(batch["input_ids"].numel())
        return batch


class ProgressReporter(TrainerCallback):
    """Keeps :class:`ProgressState` current from the trainer's callbacks and serves it.

    ``port=None`` (or not rank 0) means no server; the log lines and the state still work, so
    ``ftj run`` and tests see the same numbers the operator would.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int | None = None,
        tokens: TokenCounter | None = None,
        world_size: int = 1,
    ) -> None:
        self.state = ProgressState()
        self.tokens = tokens
        self._world_size = world_size
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        # Guards the state; its waiters are long polls of /progress (notified on every change).
        self._lock = threading.Condition()
        self._pace = StepPace()
        self._rate_mark: tuple[float, int] | None = None

    # -- server ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving (rank 0 only, and only with a port)."""
        if self._port is None or not is_main_process():
            return
        reporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?")[0]
                if path == "/progress":
                    body, etag = reporter.next_document(
                        self.headers.get("If-None-Match"), prefer_wait(self.headers.get("Prefer"))
                    )
                    if body is None:  # unchanged for the whole wait
                        self.send_response(304)
                        self.send_header("ETag", etag)
                        self.end_headers()
                        return
                    self.send_response(200)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                elif path == "/metrics":
                    body = reporter.prometheus().encode()
                    kind = "text/plain; version=0.0.4"
                elif path == "/healthz":
                    body, kind = b"ok", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # one GET every few seconds is not worth a log line

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        log.info("progress served on http://%s:%d/progress", self._host, self.port)

    @property
    def port(self) -> int | None:
        """The bound port (useful when started with port 0 in tests)."""
        return self._server.server_address[1] if self._server else None

    def stop(self) -> None:
        """Stop the server (the state stays readable)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- state ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The current ``/progress`` document."""
        with self._lock:
            return self.state.to_json()

    @contextmanager
    def _update(self) -> Iterator[ProgressState]:
        """Change the state under the lock, then wake the long polls waiting for a change."""
        with self._lock:
            yield self.state
            self._lock.notify_all()

    def next_document(self, etag: str | None, wait: float) -> tuple[bytes | None, str]:
        """The ``/progress`` body and its ETag, as soon as the ETag differs from ``etag``;
        ``(None, etag)`` when it still matches after ``wait`` seconds (HTTP 304)."""
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                body = json.dumps(self.state.to_json()).encode()
                current = f'"{hashlib.blake2b(body, digest_size=8).hexdigest()}"'
                left = deadline - time.monotonic()
                if current != etag:
                    return body, current
                if left <= 0:
                    return None, current
                self._lock.wait(left)

    def prometheus(self) -> str:
        """The current ``/metrics`` text."""
        with self._lock:
            return self.state.to_prometheus()

    def set_phase(self, phase: str) -> None:
        """Move to another phase of the run (``Merging``, ``Uploading``...)."""
        assert phase in TRAINER_PHASES, phase
        with self._update():
            self.state.phase = phase
            self.state.updated_at = _now()
        log.info("phase: %s", phase)

    def set_resumed_from(self, step: int | None) -> None:
        """Record the checkpoint step this run continues from."""
        with self._update():
            self.state.resumed_from_step = step

    def set_started_fresh(self, why: str | None) -> None:
        """Record that the output's earlier checkpoints were removed, and why (None: they
        were not)."""
        with self._update():
            self.state.started_fresh = why
            self.state.updated_at = _now()

    def set_tracking(self, report: dict[str, Any]) -> None:
        """Record experiment tracking's state (``{ok, reason, message}``)."""
        with self._update():
            if report != self.state.tracking:
                self.state.tracking = report
                self.state.updated_at = _now()

    def add_replan(self, replan: Any) -> None:
        """Record a re-plan after an out-of-memory error (``oom_recovery.Replan``)."""
        with self._update():
            count = (self.state.memory_replan or {}).get("count", 0) + 1
            self.state.memory_replan = {**replan.to_json(), "count": count}
            self.state.updated_at = _now()

    # -- trainer callbacks ----------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        with self._update():
            self.state.phase = "Training"
            self.state.total_steps = state.max_steps
            self.state.step = state.global_step
            self.state.updated_at = _now()
        # On resume the trainer restores global_step before this callback: the pace (ETA)
        # counts only the steps run from here.
        self._pace = StepPace()

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._pace.step_begin(time.monotonic())

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        now = time.monotonic()
        self._pace.step_end(now)
        with self._update():
            s = self.state
            s.step, s.total_steps, s.epoch = state.global_step, state.max_steps, state.epoch
            s.eta_seconds = self._pace.eta_seconds(state.global_step, state.max_steps)
            if self.tokens is not None:
                if self._rate_mark is not None and now > self._rate_mark[0]:
                    new_tokens = (self.tokens.tokens - self._rate_mark[1]) * self._world_size
                    s.tokens_per_second = new_tokens / (now - self._rate_mark[0])
                if self._rate_mark is None or now - self._rate_mark[0] > 5.0:
                    self._rate_mark = (now, self.tokens.tokens)
            s.gpu_memory_gib = peak_gpu_memory_gib()
            s.updated_at = _now()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        logs = logs or {}
        with self._update():
            if "loss" in logs:
                self.state.loss = round(float(logs["loss"]), 6)
            if "eval_loss" in logs:
                self.state.eval_loss = round(float(logs["eval_loss"]), 6)
            if "learning_rate" in logs:
                self.state.learning_rate = float(logs["learning_rate"])
        if "loss" in logs and is_main_process():
            log.info(self.progress_line())

    def progress_line(self, width: int = 24) -> str:
        """``[#######.........] 120/500 (24%) loss 1.234 lr 2e-04 1.2k tok/s eta 3m20s``."""
        s = self.state
        done = 0 if not s.total_steps or s.step is None else int(width * s.step / s.total_steps)
        parts = [
            f"[{'#' * done}{'.' * (width - done)}]",
            format_summary(s.step or 0, s.total_steps),
        ]
        if s.loss is not None:
            parts.append(f"loss {s.loss:.4f}")
        if s.eval_loss is not None:
            parts.append(f"eval {s.eval_loss:.4f}")
        if s.learning_rate is not None:
            parts.append(f"lr {s.learning_rate:.2e}")
        if s.tokens_per_second is not None:
            parts.append(f"{s.tokens_per_second:,.0f} tok/s")
        if s.gpu_memory_gib is not None:
            parts.append(f"gpu {s.gpu_memory_gib:.1f}GiB")
        if s.eta_seconds is not None:
            parts.append(f"eta {format_eta(s.eta_seconds)}")
        return " ".join(parts)


def peak_gpu_memory_gib() -> float | None:
    """Peak memory this process's CUDA allocator has handed out, in GiB (``None`` on CPUs):
    what ``resources.gpuMemoryBudget`` and the acceleration plan's estimate are compared with."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def termination_message(
    phase: str,
    *,
    progress: dict[str, Any],
    reason: str | None = None,
    message: str | None = None,
    artifacts: dict[str, str] | None = None,
) -> str:
    """The final summary JSON, cut to fit the kubelet's 4 KiB limit.

    The message is what gets shortened (it is the only unbounded part); the reason, the
    artifact URIs and the progress numbers are what the operator maps into status, so they
    are kept whole.
    """
    doc: dict[str, Any] = {"phase": phase}
    if reason:
        doc["reason"] = reason
    if message is not None:
        doc["message"] = message
    doc["progress"] = progress
    if artifacts:
        doc["artifacts"] = artifacts
    if progress.get("resumedFromStep") is not None:
        doc["resumedFromStep"] = progress["resumedFromStep"]

    text = json.dumps(doc, ensure_ascii=False)
    while len(text.encode()) > TERMINATION_MESSAGE_LIMIT and doc.get("message"):
        excess = len(text.encode()) - TERMINATION_MESSAGE_LIMIT
        keep = max(0, len(doc["message"]) - excess - 16)
        doc["message"] = doc["message"][:keep] + "…"
        if keep == 0:
            doc["message"] = ""
        text = json.dumps(doc, ensure_ascii=False)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:  # absurdly long URIs: drop detail
        doc.pop("progress", None)
        text = json.dumps(doc, ensure_ascii=False)[:TERMINATION_MESSAGE_LIMIT]
    return text


def write_termination_message(path: str | Path | None, text: str) -> bool:
    """Write the summary where the kubelet reads it; skip quietly where that is not writable.

    Outside Kubernetes ``/dev/termination-log`` usually does not exist, and failing the run
    over a missing status file would be absurd.
    """
    if not path or not is_main_process():
        return False
    try:
        Path(path).write_text(text)
    except OSError as err:
        log.debug("termination message not written to %s: %s", path, err)
        return False
    return True

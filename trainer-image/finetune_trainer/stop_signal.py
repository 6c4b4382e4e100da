"""SIGTERM costs seconds: finish the current optimizer step, save and upload a checkpoint, exit.

Kubernetes sends SIGTERM when a pod is preempted, evicted, drained or deleted, or its Job is
suspended, and SIGKILL ``terminationGracePeriodSeconds`` later (the renderer sizes that
period from the job's expected save time: ``finetune_operator.render.termination_grace_seconds``).
Without this, everything since the last ``saveSteps`` checkpoint was lost.

* **In training** the handler only takes note; at the end of the step in progress
  :class:`StopOnSignal` asks the Trainer to save a checkpoint and stop. ``run_job`` then waits
  for the upload and raises :class:`~finetune_trainer.errors.Stopped` (exit 143, which the
  Job's podFailurePolicy ignores), and the next pod resumes from that checkpoint.
* **Outside training** (downloading, merging, publishing) there is no step to finish and no
  newer state to keep: the handler raises ``Stopped`` at once.
* **Several ranks** may see the signal at different steps; they agree on the stop with one
  all-reduce of a flag per step (only when ``WORLD_SIZE`` > 1), so none waits forever in a
  collective the others left.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.errors import Stopped

log = logging.getLogger("finetune_trainer")


class StopOnSignal(TrainerCallback):
    """The SIGTERM handler and the Trainer callback that turns it into save-and-stop."""

    def __init__(self) -> None:
        self.requested_at: float | None = None  # time.monotonic() of the signal
        self.stopped_at_step: int | None = None  # the step whose checkpoint was saved
        self._training = False
        self._world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._before_exit: list[Callable[[], object]] = []

    @contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        """Handle SIGTERM inside the ``with`` block (main thread only: Python's rule; elsewhere
        the signal keeps its handler), and give the previous handler back after it."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def before_exit(self, wait: Callable[[], object]) -> None:
        """Run ``wait`` (an upload's) before a stop outside training ends the process."""
        self._before_exit.append(wait)

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.requested_at is None
        self.requested_at = self.requested_at or time.monotonic()
        if self._training:
            if first:
                log.warning("SIGTERM: finishing this step, then saving a checkpoint")
            return
        for wait in self._before_exit:
            wait()
        raise Stopped("stopped by SIGTERM outside training: nothing newer to save")

    def seconds_since_signal(self) -> float:
        return 0.0 if self.requested_at is None else time.monotonic() - self.requested_at

    # -- trainer callbacks ----------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._training = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._training = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not self._stop_everywhere():
            return
        control.should_save = True
        control.should_training_stop = True
        self.stopped_at_step = state.global_step
        log.warning(
            "SIGTERM: step %d done %.1f s after the signal; saving its checkpoint",
            state.global_step,
            self.seconds_since_signal(),
        )

    def _stop_everywhere(self) -> bool:
        """Whether any rank got the signal (every rank calls this once per step)."""
        if self._world_size <= 1:
            return self.requested
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return self.requested
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        flag = torch.tensor([1 if self.requested else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not self.requested:
            self.requested_at = time.monotonic()  # another rank's signal
        return bool(flag.item())


def stop_after_upload(
    stop: StopOnSignal, wait_for_upload: Callable[[], bool], output: str
) -> NoReturn:
    """End a run that SIGTERM stopped: wait for its checkpoint's upload, then raise
    :class:`Stopped` saying where the next pod resumes from."""
    uploaded = wait_for_upload()
    step = stop.stopped_at_step
    where = (
        f"its checkpoint is in {output}/checkpoints"
        if uploaded
        else "its checkpoint upload did not finish"
    )
    raise Stopped(
        f"stopped by SIGTERM after step {step} ({stop.seconds_since_signal():.1f} s after the "
        f"signal): {where}; the next pod resumes from it"
    )

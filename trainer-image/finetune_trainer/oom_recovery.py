"""Out of GPU memory mid-run: re-plan for less memory and go on, in the same pod.

Before, a CUDA out-of-memory error exited as a retryable failure: the pod restarted up to
``backoffLimit`` times, downloaded the model again each time and ran out of memory again with
the same plan. Now :func:`train_with_replans`:

1. keeps the work done: the adapter and optimizer state of the last whole optimizer step are
   still in memory, so they are saved as a checkpoint (and uploaded, in the background);
2. asks the planner for a plan that needs less memory (acceleration/replan.py: a lower budget
   on GPUs, half the micro-step on CPUs; the examples per optimizer step stay the same);
3. reports the re-plan (a log line; ``/progress`` and the termination message carry it, and
   the operator turns it into the ``MemoryReplanned`` condition and an Event);
4. builds the model again to the new plan (from the local copy: nothing is downloaded again)
   and resumes from that checkpoint.

At most ``MAX_REPLANS`` times. When no smaller plan is left, or the run has several ranks
(one rank can't re-plan alone while the others wait in a collective), the job fails at once
with :class:`~finetune_trainer.errors.OutOfMemory` (exit 42: never retried blindly) and the
planner's advice.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.acceleration import AccelerationPlan
from finetune_trainer.acceleration.replan import (
    MemoryLimits,
    is_smaller,
    limits_after_oom,
    no_fit_advice,
)
from finetune_trainer.errors import OutOfMemory
from finetune_trainer.train import (
    PreparedTraining,
    TrainResult,
    local_checkpoint_steps,
    run_training,
)

log = logging.getLogger("finetune_trainer")

MAX_REPLANS = 3


@dataclass(frozen=True)
class Replan:
    """One re-plan: where it happened, the plans before and after, and the error."""

    step: int
    before: AccelerationPlan
    after: AccelerationPlan
    error: str

    def describe(self) -> str:
        """One line for the log, the status condition and the Event."""
        return (
            f"out of memory at step {self.step}; re-planned from "
            f"[{self.before.describe()}] to [{self.after.describe()}]"
        )

    def to_json(self) -> dict[str, Any]:
        """What ``/progress`` and the termination message carry (``replans``)."""
        return {
            "step": self.step,
            "before": self.before.describe(),
            "after": self.after.describe(),
            "error": self.error[:300],
        }


def is_out_of_memory(err: BaseException) -> bool:
    """torch's ``OutOfMemoryError``, or the plain RuntimeError that some kernels (bitsandbytes,
    triton) raise with CUDA's words."""
    if type(err).__name__ == "OutOfMemoryError":
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def save_last_whole_step(trainer: Any) -> None:
    """Checkpoint the last whole optimizer step still in memory, unless one exists already.

    The error struck in a micro-step of the next step: its half-accumulated gradients are
    dropped (that step is redone), the adapter and optimizer state are those of
    ``global_step``. ``on_save`` hands the checkpoint to the uploader, as a scheduled save would.
    """
    state, args = trainer.state, trainer.args
    if state.global_step == 0 or state.global_step in local_checkpoint_steps(Path(args.output_dir)):
        return
    trainer.model.zero_grad(set_to_none=True)
    _release_memory()
    trainer._save_checkpoint(trainer.model, trial=None)  # what a scheduled save calls
    trainer.control = trainer.callback_handler.on_save(args, state, trainer.control)
    log.info("saved the last whole step (%d) before re-planning", state.global_step)


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_with_replans(
    prepared: PreparedTraining,
    *,
    resume_dir: Path | None,
    resumed_step: int | None,
    replan: Callable[[MemoryLimits], AccelerationPlan],
    rebuild: Callable[[AccelerationPlan], PreparedTraining],
    on_replan: Callable[[Replan], None],
    checkpoints_dir: Path,
) -> TrainResult:
    """Train ``prepared`` to the end, re-planning after out-of-memory errors.

    ``replan``: the plan under narrower limits (``model.plan_model``); ``rebuild``: the
    training set up again to a plan (``prepare_training(plan=...)``); ``on_replan``: told
    about each re-plan before the model is rebuilt. A rebuild replaces the model, plan and
    trainer of ``prepared`` in place, so the caller must hold no other reference to the old
    model or trainer (their GPU memory could not be given back).
    """
    replans = 0
    while True:
        try:
            return run_training(
                prepared.trainer, resume_dir, resumed_step, sharded=prepared.plan.fsdp
            )
        except BaseException as err:
            if not is_out_of_memory(err):
                raise
            error = f"{type(err).__name__}: {err}"
        # Past the except block: the traceback's frames (and the activations they hold) are gone.
        failed = prepared.plan
        step = prepared.trainer.state.global_step
        log.error("out of memory at step %d: %s", step, error.splitlines()[0])
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise OutOfMemory(
                f"the GPU ran out of memory at step {step} on a run of several ranks, which "
                f"can't re-plan in place. {no_fit_advice(failed, None)}; or set "
                "spec.resources.gpuMemoryBudget lower"
            )
        limits = limits_after_oom(failed)
        new = replan(limits) if limits is not None else None
        if new is None or not is_smaller(new, failed) or replans >= MAX_REPLANS:
            tried = f" after {replans} re-plan(s)" if replans else ""
            raise OutOfMemory(
                f"the GPU ran out of memory at step {step}{tried} ({error.splitlines()[0][:200]}) "
                f"and no smaller plan is left: {no_fit_advice(failed, new)}"
            )
        replans += 1
        save_last_whole_step(prepared.trainer)
        event = Replan(step=step, before=failed, after=new, error=error)
        log.warning("%s", event.describe())
        on_replan(event)
        prepared.model = prepared.trainer = None  # the old model's memory goes back first
        _release_memory()
        rebuilt = rebuild(new)
        prepared.model, prepared.plan, prepared.trainer = (
            rebuilt.model,
            rebuilt.plan,
            rebuilt.trainer,
        )
        del rebuilt
        steps = local_checkpoint_steps(checkpoints_dir)
        if steps:
            resumed_step = steps[-1]
            resume_dir = checkpoints_dir / f"checkpoint-{resumed_step}"

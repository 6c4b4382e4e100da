"""After an out-of-memory error: the limits of a plan for less memory, and whether the plan
made under them is really smaller.

The planner (plan.py) stays the one owner of every decision; a re-plan only narrows what it
may choose (:class:`MemoryLimits`) and plans again:

* **On a GPU** the memory budget drops to the least of the budget the failed plan had,
  ``MEMORY_SHARE`` of what the card really holds (a ``gpuMemoryBudget`` larger than the card is
  the commonest cause), and ``OOM_SHRINK`` of the failed plan's own estimate (the estimate was
  short by at least that much). The search then picks a smaller micro-step, more recomputed
  layers or streamed weights, exactly as it would for a smaller card.
* **On a CPU** there is no memory model (tests inject the error where the CUDA allocator
  raises it): the micro-step halves.

Either way the examples per optimizer step stay the same, so the run continues from its
checkpoint with the same maths. A plan that is not smaller than the failed one (nothing left
to give up) is refused, and the caller fails the job with :func:`no_fit_advice`.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_trainer.acceleration.cost import MEMORY_SHARE, GiB
from finetune_trainer.acceleration.plan import AccelerationPlan

# The new budget is at most this share of the failed plan's estimate.
OOM_SHRINK = 0.85


@dataclass(frozen=True)
class MemoryLimits:
    """What a re-plan may use: a memory budget in bytes and a cap on the examples per
    micro-step (None: as the spec, the switches and the card say)."""

    memory_budget_bytes: int | None = None
    micro_cap: int | None = None


def limits_after_oom(failed: AccelerationPlan) -> MemoryLimits | None:
    """The limits for the next plan after ``failed`` ran out of memory; None when there is
    nothing left to narrow (a CPU plan already at one example per micro-step)."""
    device = failed.device
    if device.cuda:
        bounds = (
            failed.memory_budget_bytes,
            int(device.total_memory_bytes * MEMORY_SHARE),
            int(failed.estimated_peak_bytes * OOM_SHRINK),
        )
        return MemoryLimits(memory_budget_bytes=min(b for b in bounds if b > 0))
    if failed.per_device_batch_size <= 1:
        return None
    return MemoryLimits(micro_cap=failed.per_device_batch_size // 2)


def _footprint(plan: AccelerationPlan) -> tuple[int, int, int]:
    return plan.per_device_batch_size, plan.checkpointed_layers, plan.streamed_layers


def is_smaller(new: AccelerationPlan, failed: AccelerationPlan) -> bool:
    """Whether ``new`` is predicted to fit and gives something up against ``failed``: a
    smaller micro-step, more recomputed or more streamed layers (on GPUs, an estimate under
    its own budget)."""
    if new.device.cuda and new.estimated_peak_bytes > new.memory_budget_bytes:
        return False
    micro, recomputed, streamed = _footprint(new)
    old_micro, old_recomputed, old_streamed = _footprint(failed)
    gave_up = micro < old_micro or recomputed > old_recomputed or streamed > old_streamed
    return gave_up and _footprint(new) != _footprint(failed)


def no_fit_advice(failed: AccelerationPlan, smallest: AccelerationPlan | None) -> str:
    """What to change when no plan fits: the fields to lower and the GPU that would fit.

    ``smallest``: the plan made under the tightest limits (its estimate is what one example
    per micro-step with every layer recomputed needs), when there is one."""
    fields = (
        "lower spec.training.cutoffLength or spec.training.batchSize, set "
        "spec.training.gradientCheckpointing: always, or use spec.method.type: qlora"
    )
    if not failed.device.cuda:
        return f"no smaller plan is left: {fields}"
    need = (smallest or failed).estimated_peak_bytes
    card = failed.device.total_memory_bytes
    return (
        f"no plan fits this GPU ({card / GiB:.0f} GiB): the smallest needs about "
        f"{need / GiB:.1f} GiB, so a GPU with at least {need / MEMORY_SHARE / GiB:.0f} GiB "
        f"would fit it as it is; or {fields}"
    )

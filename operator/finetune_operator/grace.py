"""How long a trainer pod gets between SIGTERM and SIGKILL (``terminationGracePeriodSeconds``).

On SIGTERM (preemption, eviction, drain, a suspended Job) the trainer finishes the optimizer
step in progress, saves a checkpoint and uploads it (``finetune_trainer.stop_signal``). The
grace period must cover that, or the work since the last scheduled checkpoint is lost; and it
should not be much longer, or a drained node waits for nothing. Kubernetes' default, 30 s, is
too short for a large model's step plus its upload.

The operator can't read the model's config (the trainer downloads it), so the checkpoint is
sized for an 8B-class model (Llama-3-8B: 32 layers, hidden 4096, MLP 14336), which LoRA adapts
with ~2.6M parameters per unit of ``r`` when all seven linear kinds are targeted:

    grace = STEP_ALLOWANCE + adapter bytes x 3 (weights and Adam's two moments, fp32)
            / CHECKPOINT_BYTES_PER_SECOND, clamped to [GRACE_FLOOR, GRACE_CEILING]

r=16 on all linear layers: 42M parameters, 0.5 GB, 10 s of upload: 70 s, so the floor: 90 s.
Larger models or slow object storage: set ``spec.resources.terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import math

from finetune_api import FineTuneJob

GRACE_FLOOR_SECONDS = 90  # a step, a small upload, the exit: never less
GRACE_CEILING_SECONDS = 900
# One optimizer step of a large model, with its gradient accumulation, started just before
# the signal.
STEP_ALLOWANCE_SECONDS = 60
# What one pod uploads to object storage, conservatively (multipart S3 from one pod: 50-500 MB/s).
CHECKPOINT_BYTES_PER_SECOND = 50e6
# LoRA parameters per unit of r, per targeted linear kind, of an 8B-class model:
# q, o: 32 x 8192; k, v: 32 x 5120; gate, up, down: 32 x 18432.
_PARAMS_PER_R = {
    "q_proj": 32 * 8192,
    "o_proj": 32 * 8192,
    "k_proj": 32 * 5120,
    "v_proj": 32 * 5120,
    "gate_proj": 32 * 18432,
    "up_proj": 32 * 18432,
    "down_proj": 32 * 18432,
}
_ALL_LINEAR = sum(_PARAMS_PER_R.values())
_CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weight + Adam's exp_avg and exp_avg_sq


def adapter_params_estimate(job: FineTuneJob) -> int:
    """The adapter's parameter count on an 8B-class model (unknown module names count as an
    average linear)."""
    lora = job.spec.method.lora
    targets = list(lora.target_modules)
    if targets == ["all-linear"]:
        per_r = _ALL_LINEAR
    else:
        average = _ALL_LINEAR // len(_PARAMS_PER_R)
        per_r = sum(_PARAMS_PER_R.get(name, average) for name in targets)
    return lora.r * per_r


def termination_grace_seconds(job: FineTuneJob) -> int:
    """``terminationGracePeriodSeconds`` of the trainer pods: the spec's, else the estimate."""
    given = job.spec.resources.termination_grace_period_seconds
    if given is not None:
        return given
    upload = (
        adapter_params_estimate(job) * _CHECKPOINT_BYTES_PER_PARAM / CHECKPOINT_BYTES_PER_SECOND
    )
    wanted = math.ceil(STEP_ALLOWANCE_SECONDS + upload)
    return max(GRACE_FLOOR_SECONDS, min(GRACE_CEILING_SECONDS, wanted))

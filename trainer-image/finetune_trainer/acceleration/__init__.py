"""How a training run is made fast: the acceleration plan, and the kernels that carry it out.

The plan (plan.py) is a pure function of the spec's ``training``/``method`` sections, the
model's shape and the device (device.py): precision and optimizer, which attention kernel,
whether fused kernels (Liger) are on, whether and how many decoder layers recompute their
activations (gradient checkpointing), how many tokens go into one micro-step, whether weights
are sharded, streamed or loaded through host memory. Its parts: choices.py (what needs no
memory estimate), cost.py (memory and time), search.py (the micro-step search), reasons.py
(why, in the user's words). It imports nothing heavy, so it is planned and unit-tested on
CPUs. ``apply_acceleration`` (apply.py) then changes a loaded model accordingly, with the
kernel modules, which need torch and are imported by their own names: lora_fused,
float8_base, nf4_base, recompute, weight_streaming, varlen_attention, triton_kernels,
sharding.

Why these choices (measurements in ``bench/NOTES.md``):

* Padding-free packing + document-masked attention. Packed rows carry ``position_ids`` that
  restart at every example. The ``ftj_varlen`` attention turns those into cumulative sequence
  lengths and calls PyTorch's own FlashAttention-2 varlen kernels (varlen_attention.py), so
  attention costs what each example costs alone and never crosses example borders, with no
  dense (T x T) mask and no extra package.
* Fused kernels: Liger's RMSNorm, SwiGLU and RoPE (fewer saved activations, fewer launches)
  where liger-kernel is installed; the LM head + cross-entropy is already chunked by TRL's fused
  LM head, so the (tokens x vocab) logits never exist.
* Micro-step size and gradient checkpointing ``auto``, chosen together: for each micro-step
  size, the fewest recomputed decoder layers that fit the memory budget (none on a large card),
  then the size with the least predicted step time. Recomputation costs a third more matrix
  work per checkpointed layer; a micro-step too small to keep the GPU busier than the host
  (~10 ms of launches and Python per layer) runs at the host's pace. On an 80 GB card the 7B's
  step runs as two micro-steps without recomputation rather than one with 8 layers recomputed.
  Gradient accumulation is folded into the micro-step where that is fastest; the tokens per
  optimizer step (and so the maths) stay the same.
* QLoRA 8-bit: ``prepare_model_for_kbit_training`` leaves the residual stream in fp32, and
  bitsandbytes' int8 matmul computes its input gradient in its input's dtype, so without help
  the backward pass runs fp32 GEMMs (no tensor cores). The 8-bit base layers take their input
  in the training dtype instead (as ``Linear4bit``'s ``compute_dtype`` does for 4 bits) and give
  their output back in the caller's dtype (``int8_half_compute``).
* QLoRA 4-bit in bf16 (``nf4_base.py``): the unquantized weights stay in bf16 instead of
  peft's fp32 recipe, and the LoRA layers take the fused forward below, each 4-bit weight
  dequantized per GEMM (1.81x on an 8B under a 24 GB card's plan, bench/NOTES.md step 34).
* Fused LoRA linears (``lora_fused.py``): peft's forward keeps a dropped-out copy of the input
  and a mask per adapted linear for the backward; the fused one redraws the mask from a seed,
  and a llama-style MLP recomputes ``silu(gate) * up`` instead of keeping it, so activations
  take ~40% of peft's memory and fewer layers need recomputing.
* Sharded weights (``shard_ranks > 1``): a bf16/fp16 model whose weights, adapter state and
  one example's activations do not fit one GPU trains under FSDP2 when the pod has several
  GPUs: each rank keeps ``1/N`` of the frozen weights and of the adapter's optimizer state and
  all-gathers one decoder layer at a time. A model that fits stays under DDP, which moves only
  the adapter's gradients (docs/multi-gpu.md).
* Frozen weights streamed from host memory (``streamed_layers``, weight_streaming.py): under a
  memory budget, on one GPU or on each rank under DDP (never under FSDP), the 16-bit weights of
  some recomputed layers stay in pinned host memory and are copied in one layer ahead of use.
  The planner picks micro-step, recomputed and streamed layers together; a copy costs only
  what the GPU's work does not hide (the 7B under 18 GiB: 8.0k -> 11.9k tok/s, bench/NOTES.md
  step 31).
* ``torch.compile`` of the decoder layers (``torch_compile``, ``FTJ_TORCH_COMPILE=1``): off by
  default. It runs and trains like eager, but measured no faster (the host still launches every
  GEMM) with ~13 GiB more on a 1.5B at 15k tokens, memory the planner does not model
  (bench/NOTES.md step 27).
"""

from __future__ import annotations

from finetune_trainer.acceleration.apply import apply_acceleration, apply_gradient_checkpointing
from finetune_trainer.acceleration.choices import Precision, choose_optimizer, resolve_precision
from finetune_trainer.acceleration.cost import MEMORY_SHARE, GiB, estimate_memory_bytes
from finetune_trainer.acceleration.device import DeviceInfo, check_quantization, local_rank
from finetune_trainer.acceleration.plan import (
    AccelerationPlan,
    loads_through_host,
    memory_budget_bytes,
    plan_acceleration,
    plan_for_model,
)
from finetune_trainer.acceleration.shape import ModelShape

__all__ = [
    "MEMORY_SHARE",
    "AccelerationPlan",
    "DeviceInfo",
    "GiB",
    "ModelShape",
    "Precision",
    "apply_acceleration",
    "apply_gradient_checkpointing",
    "check_quantization",
    "choose_optimizer",
    "estimate_memory_bytes",
    "loads_through_host",
    "local_rank",
    "memory_budget_bytes",
    "plan_acceleration",
    "plan_for_model",
    "resolve_precision",
]

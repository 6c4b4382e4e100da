"""QLoRA 4-bit (bitsandbytes NF4) base layers under the fused LoRA forward (lora_fused.py).

peft's QLoRA recipe, ``prepare_model_for_kbit_training``, casts every weight that is not
quantized (embeddings, norms, the LM head) to fp32. The residual stream, every norm and the LM
head's GEMMs then run in fp32, off the tensor cores: on an 8B the LM head alone is 525M
parameters multiplied twice per token. bitsandbytes casts each 4-bit linear's input down to its
compute dtype and its output back up, and peft's LoRA forward keeps a dropped-out copy of each
input for the backward pass.

With a bf16 compute dtype the trainer keeps those weights in bf16 instead, as its 16-bit LoRA
does (``uses_fused_forward``), and the fused LoRA forward dequantizes each 4-bit weight to bf16
just before its GEMM, forward and again for the input gradient. That is the same
dequantize-then-GEMM that bitsandbytes itself runs for inputs of more than a few rows on recent
GPUs, so the base computes the same numbers. fp16 keeps peft's recipe: fp16 norms and
embeddings can overflow where fp32 ones do not. ``FTJ_FUSED_NF4=0`` (a bench ablation, read by
the planner) keeps it for bf16 too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the planner (choices.py) imports this module without torch
    import torch


def uses_fused_forward(weight_bits: int, dtype: str) -> bool:
    """Whether a bitsandbytes base of ``weight_bits`` trained in ``dtype`` (the plan's name:
    ``bfloat16``...) takes the fused forward and keeps its unquantized weights in 16 bits."""
    return weight_bits == 4 and dtype == "bfloat16"


def is_nf4_linear(module: Any) -> bool:
    """A bitsandbytes ``Linear4bit`` holding quantized weights (a ``Params4bit`` with its
    quantization state)."""
    return (
        type(module).__name__ == "Linear4bit"
        and type(module).__module__.startswith("bitsandbytes")
        and getattr(module.weight, "quant_state", None) is not None
    )


def quant_state(module: Any) -> Any | None:
    """A base layer's 4-bit quantization state, or ``None`` for any other layer."""
    return module.weight.quant_state if is_nf4_linear(module) else None


def compute_dtype(module: Any) -> torch.dtype:
    """The dtype a 4-bit linear computes in: its configured compute dtype, else the dtype its
    weights were quantized from."""
    configured: torch.dtype | None = getattr(module, "compute_dtype", None)
    dtype: torch.dtype = module.weight.quant_state.dtype  # bitsandbytes is untyped
    return configured if configured is not None else dtype


def dequantized(weight: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight in ``dtype``: a transient, freed after the GEMM that reads it."""
    import bitsandbytes.functional as bnb_functional

    dense = bnb_functional.dequantize_4bit(weight.view(-1, 1), state)
    return dense if dense.dtype == dtype else dense.to(dtype)

"""Activation checkpointing that does not redo work the backward pass never reads.

A checkpointed decoder layer runs its forward twice: once keeping nothing but its input, and
again in the backward pass to rebuild the tensors its backward needs. torch stops that second
run as soon as the last of those tensors is rebuilt (non-reentrant checkpointing's "early
stop"). In a llama-style layer the last one is saved by the MLP's down projection: ``gate`` and
``up`` (its input, for the LoRA weight gradient) and the rank-r bottleneck. The projection's own
output, the result of the layer's widest GEMM (on Qwen2.5-7B 29% of the layer's matrix work),
only feeds the residual sum that the stop cuts off. So while recomputing, the fused
``SwiGLUDownFunction`` saves what it always saves and skips that GEMM: a recomputed layer costs
a forward pass minus its down projection, not a whole forward pass.

Only for model types whose decoder layers add the MLP's output straight into the residual sum
(``MODEL_TYPES``): a layer that normalises the MLP's output first (OLMo-2's
post-feedforward norm) keeps that output for the norm's backward, and must see the real one.
With ``FTJ_RECOMPUTE_SKIP=0`` (a bench ablation) a recomputed layer redoes everything.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

from finetune_trainer import switches

# Model types (as configs name them) whose decoder layers end in ``residual + mlp(x)``, checked
# against transformers' llama, qwen2, qwen3 and mistral code.
MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})

_state = threading.local()


def recomputing() -> bool:
    """Whether the running forward is a checkpoint's recomputation (in this thread: autograd
    runs a CUDA backward, recomputation included, on its own device thread)."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def _recomputation() -> Iterator[None]:
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def _contexts() -> tuple[contextlib.AbstractContextManager[None], Any]:
    """``checkpoint``'s ``context_fn``: nothing around the first forward, the flag around the
    recomputation."""
    return contextlib.nullcontext(), _recomputation()


def checkpoint_function() -> Callable[..., Any]:
    """The function a decoder layer's ``_gradient_checkpointing_func`` calls: torch's
    non-reentrant checkpoint, telling the layer when it is recomputing."""
    import torch.utils.checkpoint as cp

    return functools.partial(cp.checkpoint, use_reentrant=False, context_fn=_contexts)


def mark_mlp_output_unused_when_recomputed(model: Any, layers: list[Any]) -> int:
    """Flag the MLP of each of ``layers`` (the decoder layers of ``model``, a transformers
    model) when the model's type adds the MLP's output straight into the residual sum; returns
    how many were flagged. A fused MLP (lora_fused.py) then skips its down projection's GEMM
    while its layer is being recomputed."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", ""))
    if not (switches.active().recompute_skip and skips_down_projection(model_type)):
        return 0
    mlps = [layer.mlp for layer in layers if getattr(layer, "mlp", None) is not None]
    for mlp in mlps:
        mlp._ftj_output_unused_when_recomputed = True
    return len(mlps)


def skips_down_projection(model_type: str) -> bool:
    """Whether a recomputed layer of this model type skips its down projection (the planner's
    view of ``mark_mlp_output_unused_when_recomputed``; ``FTJ_RECOMPUTE_SKIP=0`` turns both
    off)."""
    return model_type in MODEL_TYPES

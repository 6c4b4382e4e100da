"""Applying an acceleration plan (plan.py) to a loaded model: the attention kernel,
Liger's fused kernels, the 8-bit compute cast, torch.compile of the decoder layers and the
choice of which layers recompute their activations. Imports torch, transformers and, if
present, liger-kernel lazily, so the planner stays importable on a CPU-only install.
"""

from __future__ import annotations

import typing
from typing import Any

from finetune_trainer import switches
from finetune_trainer.acceleration import recompute
from finetune_trainer.acceleration.varlen_attention import (
    VARLEN_ATTENTION,
    refuse_padding_masks,
    register_varlen_attention,
)

if typing.TYPE_CHECKING:
    from finetune_trainer.acceleration.plan import AccelerationPlan


def apply_acceleration(model: Any, plan: AccelerationPlan) -> list[str]:
    """Change a loaded model (before PEFT wrapping) as the plan says; returns what was done.

    Call it after loading and before ``get_peft_model``/the trainer: Liger patches the model's
    modules in place, and the attention implementation is read at every forward.
    """
    done: list[str] = []
    _expandable_segments()
    if plan.attn_implementation == VARLEN_ATTENTION:
        register_varlen_attention(compiled=plan.torch_compile)
        _set_attn_implementation(model, VARLEN_ATTENTION)
        model.register_forward_pre_hook(refuse_padding_masks, with_kwargs=True)
        done.append("attention: ftj_varlen")
    if plan.liger:
        applied = _apply_liger(model)
        done.append("liger: " + (applied or "not applied"))
    if plan.int8_half_compute:
        count = cast_int8_linear_inputs(model, plan.dtype)
        done.append(f"int8 linears computing in {plan.dtype}: {count}")
    if plan.torch_compile:
        count = compile_decoder_layers(model, plan.checkpointed_layers)
        done.append(
            f"torch.compile: {count} decoder layers "
            f"({plan.checkpointed_layers} recomputed layers stay eager)"
        )
    return done


def cast_int8_linear_inputs(model: Any, dtype: str) -> int:
    """Make bitsandbytes' 8-bit linears take their input in ``dtype`` and return the caller's.

    ``Linear8bitLt`` has no compute dtype: its int8 forward quantizes from any float input, but
    its input gradient is ``grad_output @ dequantized W`` in the input's dtype, an fp32 GEMM
    when prepare_model_for_kbit_training has left the activations in fp32. Wrapping the
    instance's ``forward`` (peft keeps it as the LoRA layer's ``base_layer``) moves that GEMM
    to tensor cores; the forward already quantizes through fp16, so nothing is lost there.
    Returns how many modules were wrapped.
    """
    import torch

    target = getattr(torch, dtype)
    count = 0
    for module in model.modules():
        if type(module).__name__ != "Linear8bitLt" or getattr(module, "_ftj_cast", False):
            continue
        inner = module.forward

        def forward(x: Any, *args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            if x.dtype == target:
                return _inner(x, *args, **kwargs)
            return _inner(x.to(target), *args, **kwargs).to(x.dtype)

        module.forward = forward
        module._ftj_cast = True
        count += 1
    return count


def compile_decoder_layers(model: Any, recomputed: int = 0) -> int:
    """``torch.compile`` each decoder layer in place (lazily: compiled at its first call, after
    peft has put its LoRA layers in). Layers share one graph; shapes are dynamic from the
    start because packed rows change length every step. Returns how many layers.

    The first ``recomputed`` layers (those the plan recomputes) stay eager. Since transformers
    5.25 a layer's checkpoint call sits inside its own ``forward``, so compiling a recomputed
    layer puts the recomputation's side effects inside the graph; Dynamo refuses them ("HOP:
    unsafe side effect") and ran such layers eagerly anyway, behind a graph break, drawing
    generator masks where the compiled path draws hashed ones. Leaving them eager on purpose
    keeps that explicit, with no graph break and no silent change of dropout scheme.
    """
    import torch._dynamo
    import torch._inductor.config

    # The fused LoRA forward draws each dropout seed as a host scalar (``.item()`` of a CPU
    # tensor, no device sync); captured, it is an input of the graph, not a graph break. With
    # torch's own random ops kept, the seeds are the ones eager draws: a compiled run
    # reproduces from the same ``torch.manual_seed``.
    torch._dynamo.config.capture_scalar_outputs = True
    torch._inductor.config.fallback_random = True
    # The kernels consult the switches as they run: read them now, not inside a traced graph.
    switches.active()
    layers = _decoder_layers(model)[recomputed:]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def apply_gradient_checkpointing(model: Any, plan: AccelerationPlan) -> None:
    """Checkpoint the first ``plan.checkpointed_layers`` decoder layers (after the model is
    wrapped and ``gradient_checkpointing_enable`` ran, or on its own). Their recomputation
    skips the MLP's last GEMM where its output is not read (recompute.py)."""
    if not plan.gradient_checkpointing:
        return
    base = model
    for _ in range(4):  # PeftModel -> LoraModel -> PreTrainedModel
        if hasattr(base, "get_base_model"):
            base = base.get_base_model()
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()
    layers = _decoder_layers(base)
    recompute.mark_mlp_output_unused_when_recomputed(base, layers)
    func = recompute.checkpoint_function()
    for index, layer in enumerate(layers):
        on = index < plan.checkpointed_layers
        layer.gradient_checkpointing = on
        if on:
            layer._gradient_checkpointing_func = func


def _expandable_segments() -> None:
    """Packed rows change length every step; expandable segments stop the caching allocator
    from fragmenting into many odd-sized blocks (several GiB of reserved-but-unused memory)."""
    import contextlib
    import os

    import torch

    configured = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + os.environ.get(
        "PYTORCH_ALLOC_CONF", ""
    )
    if torch.cuda.is_available() and "expandable_segments" not in configured:
        # An allocator that can't switch after start keeps its setting.
        with contextlib.suppress(Exception):
            torch.cuda.memory._set_allocator_settings("expandable_segments:True")


def _decoder_layers(model: Any) -> list[Any]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _set_attn_implementation(model: Any, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter(name)
            return
        except Exception:  # older transformers reject unknown names: set it directly
            pass
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name


def _apply_liger(model: Any) -> str | None:
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except Exception:
        return None
    try:
        _apply_liger_kernel_to_instance(
            model=model,
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    except Exception as exc:  # a liger release that doesn't know this transformers version
        return f"failed ({type(exc).__name__}: {exc})"
    return "rope, rms_norm, swiglu"

"""Tiny random Qwen2 models with a LoRA adapter on every linear: the fixtures of the LoRA
kernel tests (fused forward, Float8 base), on CPU and on the GPU.

The adapter's B matrices start at zero in peft (the adapter says nothing yet); here they are
drawn, so that gradients and outputs of the adapted path are exercised from the first step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

# CPU tests: two layers of width 64. GPU tests: four layers of width 512 (bf16 kernels engage).
SMALL = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 101}  # fmt: skip
GPU_SIZED = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip


def tiny_qwen2(shape: dict[str, int], device: str = "cpu", dtype: Any = None) -> Any:
    """A random-init Qwen2 causal LM of ``shape`` (seeded: the same weights on every call)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape))
    return model.to(device, dtype) if dtype is not None else model.to(device)


def with_lora(
    base: Any, r: int, dropout: float, b_std: float, init_seed: int = 1, **extra: Any
) -> Any:
    """A copy of ``base`` under a fresh all-linear LoRA (alpha = 2r), B drawn with ``b_std``;
    seeded (``init_seed``), so two calls give the same adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(init_seed)  # lora_A's initialisation draws from the global generator
    model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules="all-linear", **extra
        ),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=b_std)
    return model


def loss_and_grads(model: Any, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """One training-mode forward and backward on ``ids`` (as labels too): the loss and a copy
    of every parameter's gradient, by name."""
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def bf16_loss_and_grads(model: Any, ids: torch.Tensor) -> tuple[float, dict[str, Any]]:
    """One training-mode forward and backward under bf16 autocast on ``ids``' device, as the
    trainer runs it: the loss and every gradient in fp32, by name."""
    model.train()
    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def assert_same_training(model: Any, reference: Any, run: Any, count: int) -> None:
    """``run(model)`` (a loss, or losses, and gradients by name) gives ``run(reference)``'s
    loss and ``count`` gradients to fp32 rounding, from the same seeds: two ways of computing
    the same training on CPUs."""
    import pytest

    torch.manual_seed(5)
    want_loss, want = run(reference)
    torch.manual_seed(5)
    got_loss, got = run(model)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert set(got) == set(want) and len(got) == count
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], rtol=1e-5, atol=1e-7, msg=name)


def assert_trains_like(
    model: Any, reference: Any, ids: torch.Tensor, *, loss_rel: float, grads: int
) -> float:
    """``model``'s loss and every LoRA gradient equal ``reference``'s on ``ids`` (the fused and
    Float8 paths against peft's own forward); returns ``model``'s loss."""
    import pytest

    ref_loss, ref_grads = loss_and_grads(reference, ids)
    loss, got = loss_and_grads(model, ids)
    assert loss == pytest.approx(ref_loss, rel=loss_rel)
    assert set(got) == set(ref_grads) and len(got) == grads
    for name, grad in got.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    return loss


COMPILED_DROPOUT = 0.1


def fused_model(device: str = "cpu", checkpointing: bool = False) -> Any:
    """The SMALL model under a LoRA with dropout and the fused forward (optionally with every
    layer recomputed)."""
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

    model = with_lora(tiny_qwen2(SMALL, device), 4, COMPILED_DROPOUT, 0.1)
    fuse_lora_linears(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # As the planner recomputes: the first layers only (here one), the rest stored.
        from finetune_trainer.acceleration.apply import _decoder_layers

        for layer in _decoder_layers(model)[RECOMPUTED_LAYERS:]:
            layer.gradient_checkpointing = False
    return model


RECOMPUTED_LAYERS = 1  # with checkpointing: layer 0 recomputed, layer 1 stored


def compiled_against_eager(monkeypatch: Any, device: str, checkpointing: bool) -> None:
    """Decoder layers under torch.compile give the same loss and every LoRA gradient as the
    eager fused forward drawing the compiled path's masks (hashed on CPUs, the Triton
    operator's on GPUs), from the same dropout seeds."""
    import pytest
    import torch._dynamo
    from finetune_trainer.acceleration import lora_fused
    from finetune_trainer.acceleration.apply import compile_decoder_layers

    torch._dynamo.reset()
    torch.manual_seed(7)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 24), device=device)
    reference = fused_model(device, checkpointing)
    model = fused_model(device, checkpointing)
    recomputed = RECOMPUTED_LAYERS if checkpointing else 0
    compiled = compile_decoder_layers(model, recomputed)
    assert compiled == SMALL["num_hidden_layers"] - recomputed
    # Eager draws the compiled path's (hashed) masks, in the reference and in the layers the
    # compiled model leaves eager (the recomputed ones).
    monkeypatch.setattr(lora_fused, "_HASHED_DROPOUT", True)
    torch.manual_seed(8)  # the same dropout seeds, drawn in the same order, for both
    ref_loss, ref_grads = loss_and_grads(reference, ids)
    torch.manual_seed(8)
    loss, grads = loss_and_grads(model, ids)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert set(grads) == set(ref_grads) and len(grads) == 28
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)

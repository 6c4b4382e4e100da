"""bitsandbytes 4-bit bases under the fused LoRA forward, on CPU (bitsandbytes runs NF4 there
too): the same loss and LoRA gradients as peft's own 4-bit forward, and the planner's view."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.harness.tiny_lora import SMALL, bf16_loss_and_grads, tiny_qwen2, with_lora

pytestmark = pytest.mark.unit


def _quantized_base() -> Any:
    """A tiny Qwen2 whose decoder linears are bitsandbytes NF4 ``Linear4bit``s computing in
    bf16, marked the way transformers marks a model it loaded in 4 bits (peft reads it)."""
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_qwen2(SMALL, "cpu", torch.bfloat16)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                quantized = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=child.bias is not None,
                    compute_dtype=torch.bfloat16, quant_type="nf4",
                )  # fmt: skip
                quantized.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, quant_type="nf4"
                )
                if child.bias is not None:
                    quantized.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, quantized.to("cpu"))  # .to quantizes
    model.is_loaded_in_4bit = True
    return model


@pytest.mark.parametrize("recomputed", [0, 2], ids=["stored", "recomputed"])
def test_4bit_linears_take_the_fused_forward_and_train_like_peft(recomputed: int) -> None:
    from finetune_trainer.acceleration import nf4_base
    from finetune_trainer.acceleration.apply import apply_gradient_checkpointing
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

    base = _quantized_base()
    reference, fused = with_lora(base, 8, 0.0, 0.02), with_lora(base, 8, 0.0, 0.02)
    q_proj = fused.base_model.model.model.layers[0].self_attn.q_proj
    assert nf4_base.is_nf4_linear(q_proj.base_layer)
    assert fuse_lora_linears(fused) == 14  # all seven linears of both layers
    # Recomputed layers skip the down projection's GEMM (recompute.py): its output's shape
    # comes from the quantization state, not from the packed 4-bit weight.
    plan = SimpleNamespace(gradient_checkpointing=recomputed > 0, checkpointed_layers=recomputed)
    apply_gradient_checkpointing(fused, plan)  # type: ignore[arg-type]
    ids = torch.randint(0, SMALL["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(3))
    want_loss, want = bf16_loss_and_grads(reference, ids)
    got_loss, got = bf16_loss_and_grads(fused, ids)
    assert got_loss == pytest.approx(want_loss, rel=1e-4)
    assert set(got) == set(want) and len(got) == 28
    for name, grad in got.items():
        rel = (grad - want[name]).norm() / want[name].norm()
        assert rel < 3e-2, (name, float(rel))  # bf16 rounding of the same products


def test_a_4bit_gemm_reads_the_dequantized_weight() -> None:
    from finetune_trainer.acceleration import nf4_base

    pytest.importorskip("bitsandbytes")
    linear = _quantized_base().model.layers[0].mlp.up_proj
    dense = nf4_base.dequantized(linear.weight, nf4_base.quant_state(linear), torch.bfloat16)
    assert dense.shape == (linear.out_features, linear.in_features)
    assert dense.dtype == torch.bfloat16
    x = torch.randn(5, linear.in_features, dtype=torch.bfloat16)
    torch.testing.assert_close(linear(x), x @ dense.t(), rtol=2e-2, atol=2e-2)
    assert nf4_base.compute_dtype(linear) == torch.bfloat16
    assert nf4_base.quant_state(torch.nn.Linear(4, 4)) is None


def test_a_skipped_4bit_gemm_still_has_the_layers_output_shape() -> None:
    # While a layer is recomputed its down projection's GEMM is skipped (recompute.py) and an
    # uninitialised output of the layer's shape stands in: (tokens, out_features), not the
    # packed 4-bit weight's first dimension (out * in / 2), which on an 8B asked for 785 GiB.
    from finetune_trainer.acceleration import lora_fused, nf4_base

    pytest.importorskip("bitsandbytes")
    down = _quantized_base().model.layers[0].mlp.down_proj
    rows = torch.randn(7, down.in_features, dtype=torch.bfloat16)
    a = torch.randn(4, down.in_features)
    b = torch.randn(down.out_features, 4)
    args = (down.weight, None, nf4_base.quant_state(down), None, a, b, 2.0, 0.0, 0, False)
    skipped, _ = lora_fused._lora_forward(rows, *args, output_needed=False)
    computed, _ = lora_fused._lora_forward(rows, *args, output_needed=True)
    assert skipped.shape == computed.shape == (7, down.out_features)

"""Recomputed decoder layers skip the down projection nothing reads, and train the same (CPU)."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
from finetune_trainer.acceleration import recompute
from finetune_trainer.acceleration.apply import apply_gradient_checkpointing
from finetune_trainer.acceleration.lora_fused import fuse_lora_linears
from torch.utils.flop_counter import FlopCounterMode

from tests.harness.tiny_lora import SMALL, loss_and_grads, with_lora
from tests.rounding import assert_identical_step, same_seeds

pytestmark = pytest.mark.unit

LAYERS = SMALL["num_hidden_layers"]
TOKENS = 24


def _tiny(model_type: str) -> Any:
    """A random-init causal LM of ``model_type`` at the SMALL shape (seeded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **SMALL, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config)


def _fused(base: Any, recomputed: bool) -> Any:
    """``base`` under a LoRA with dropout and the fused forward; ``recomputed``: every layer
    checkpointed as the trainer does it."""
    model = with_lora(base, 4, 0.1, 0.1)
    fuse_lora_linears(model)
    if recomputed:
        plan = types.SimpleNamespace(gradient_checkpointing=True, checkpointed_layers=LAYERS)
        apply_gradient_checkpointing(model, plan)  # type: ignore[arg-type]
    return model


def _same_training(model_type: str) -> int:
    """Every layer recomputed gives the loss and all LoRA gradients of every layer stored, from
    the same dropout seeds; returns how many MLPs were flagged to skip their projection."""
    base = _tiny(model_type)
    ids = torch.randint(0, SMALL["vocab_size"], (1, TOKENS))
    stored, recomputed = _fused(base, False), _fused(base, True)
    got, want = same_seeds(lambda m: loss_and_grads(m, ids), recomputed, stored)
    assert len(got[1]) == 14 * LAYERS
    assert_identical_step(got, want)  # the recomputation reruns the forward's own kernels
    return sum(
        bool(getattr(m, "_ftj_output_unused_when_recomputed", False)) for m in recomputed.modules()
    )


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "llama", "mistral"])
def test_recomputed_layers_that_skip_the_down_projection_train_like_stored_ones(
    model_type: str,
) -> None:
    assert _same_training(model_type) == LAYERS
    assert recompute.skips_down_projection(model_type)


def test_a_layer_that_normalises_the_mlp_output_recomputes_it_in_full() -> None:
    """OLMo-2 keeps its MLP's output for the post-feedforward norm's backward: skipping the
    GEMM there would hand that norm uninitialised memory."""
    assert _same_training("olmo2") == 0
    assert not recompute.skips_down_projection("olmo2")


def _backward_flops(model: Any, ids: torch.Tensor) -> int:
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    return counter.get_total_flops()


def test_recomputation_leaves_out_exactly_the_down_projection_gemm() -> None:
    """The backward (which runs the recomputation) of a model whose layers skip the projection
    does 2 x tokens x hidden x intermediate fewer FLOPs per layer than the full recomputation,
    and nothing else changes."""
    base = _tiny("qwen2")
    ids = torch.randint(0, SMALL["vocab_size"], (1, TOKENS))
    skipping, full = _fused(base, True), _fused(base, True)
    for module in full.modules():
        module.__dict__.pop("_ftj_output_unused_when_recomputed", None)
    torch.manual_seed(5)
    saved = _backward_flops(full, ids) - _backward_flops(skipping, ids)
    gemm = 2 * TOKENS * SMALL["hidden_size"] * SMALL["intermediate_size"]
    assert saved == LAYERS * gemm


def test_the_flag_is_set_only_during_recomputation() -> None:
    seen: list[bool] = []

    def layer(x: torch.Tensor) -> torch.Tensor:
        seen.append(recompute.recomputing())
        return x.sin()

    x = torch.randn(2, 4, requires_grad=True)
    recompute.checkpoint_function()(layer, x).sum().backward()
    assert seen == [False, True]
    assert not recompute.recomputing()

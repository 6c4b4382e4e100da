"""Decoder layers under torch.compile train like the eager fused LoRA forward (tiny Qwen2).

On CPUs the compiled path draws dropout masks from a counter hash (``hashed_keep``): a
generator object cannot enter a graph. These tests pin what a user relies on when
``FTJ_TORCH_COMPILE=1``: no graph break at every linear with dropout on, no recompilation
when packed rows change length, the same loss and LoRA gradients as eager (with and without
activation checkpointing on the first layer, which stays eager and must redraw the forward's
masks in its recomputation), and masks
that drop about ``p`` of the elements. tests/gpu/test_compiled_layers_gpu.py runs the parity
check with Inductor's Triton code.

The parity check draws the same masks on both sides, so compiled and eager differ only in how
they round: Inductor fuses elementwise work and may sum in another order, in another number
of threads. Its tolerances are those rounding allows (tests/rounding.py), nothing looser.
A layer that does not compile at all runs eagerly and draws torch's generator masks instead of
the hashed ones, a different dropout, far outside those tolerances: the check also asserts
that nothing broke the graph.
"""

from __future__ import annotations

import pytest
import torch
from finetune_trainer.acceleration.apply import compile_decoder_layers
from finetune_trainer.acceleration.lora_fused import hashed_keep

from tests.harness.tiny_lora import (
    COMPILED_DROPOUT,
    RECOMPUTED_LAYERS,
    SMALL,
    fused_model,
    loss_and_grads,
)
from tests.rounding import assert_same_step, training_step_bounds

pytestmark = pytest.mark.unit

P = COMPILED_DROPOUT
TOKENS = 24
# Two float32 computations of SMALL's step: 22 sums in sequence to the loss, 45 to a gradient,
# the longest of 160 terms (the down projection): loss 3.3e-5, gradients 6.8e-5 apart at most.
BOUNDS = training_step_bounds(SMALL, TOKENS)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "recomputed"])
def test_compiled_layers_match_eager_loss_and_gradients(
    monkeypatch: pytest.MonkeyPatch, checkpointing: bool
) -> None:
    """The compiled layers give eager's loss and every LoRA gradient, to float32 rounding,
    eager drawing the compiled path's (hashed) masks from the same dropout seeds."""
    import torch._dynamo
    from finetune_trainer.acceleration import lora_fused
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(7)
    ids = torch.randint(0, SMALL["vocab_size"], (1, TOKENS))
    reference = fused_model("cpu", checkpointing)
    model = fused_model("cpu", checkpointing)
    recomputed = RECOMPUTED_LAYERS if checkpointing else 0
    assert compile_decoder_layers(model, recomputed) == SMALL["num_hidden_layers"] - recomputed
    # Eager draws the compiled path's (hashed) masks: in the reference, and in the recomputed
    # layer the compiled model leaves eager (compile_decoder_layers says why).
    monkeypatch.setattr(lora_fused, "_HASHED_DROPOUT", True)
    torch.manual_seed(8)  # the same dropout seeds, drawn in the same order, for both
    ref_loss, ref_grads = loss_and_grads(reference, ids)
    counters.clear()
    torch.manual_seed(8)
    loss, grads = loss_and_grads(model, ids)
    assert not counters["graph_break"], dict(counters["graph_break"])  # every layer compiled
    assert len(grads) == 28  # A and B of 7 projections x 2 layers
    assert_same_step((loss, grads), (ref_loss, ref_grads), BOUNDS)


def test_no_graph_breaks_and_no_recompiles_once_lengths_vary() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = fused_model()
    compile_decoder_layers(model)
    model.train()

    def step(length: int) -> int:
        ids = torch.randint(0, SMALL["vocab_size"], (1, length))
        model(input_ids=ids, labels=ids).loss.backward()
        return int(counters["stats"]["unique_graphs"])

    # The first two lengths compile (the first layer's input needs no gradient, the second's
    # does; the second length makes the token count dynamic); later lengths reuse the graphs.
    settled = [step(16), step(23)][-1]
    assert [step(40), step(57), step(9)] == [settled] * 3
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def test_hashed_masks_drop_p_and_are_a_function_of_seed_and_position() -> None:
    x = torch.ones(512, 384)
    mask = hashed_keep(x, P, 11)
    assert abs(1.0 - float(mask.mean()) - P) < 0.005
    assert torch.equal(mask, hashed_keep(x, P, 11))
    other = hashed_keep(x, P, 12)
    agree = float((mask == other).float().mean())
    assert agree == pytest.approx(P * P + (1 - P) * (1 - P), abs=0.01)  # independent draws
    assert torch.equal(hashed_keep(x.view(-1), P, 11).view(512, 384), mask)

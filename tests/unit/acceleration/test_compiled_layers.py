"""Decoder layers under torch.compile train like the eager fused LoRA forward (tiny Qwen2).

On CPUs the compiled path draws dropout masks from a counter hash (``hashed_keep``): a
generator object cannot enter a graph. These tests pin what a user relies on when
``FTJ_TORCH_COMPILE=1``: no graph break at every linear with dropout on, no recompilation
when packed rows change length, the same loss and LoRA gradients as eager (with and without
activation checkpointing, whose recomputation must redraw the forward's masks), and masks
that drop about ``p`` of the elements. tests/gpu/test_compiled_layers_gpu.py runs the parity
check with Inductor's Triton code.
"""

from __future__ import annotations

import pytest
import torch
from finetune_trainer.acceleration.apply import compile_decoder_layers
from finetune_trainer.acceleration.lora_fused import hashed_keep

from tests.harness.tiny_lora import COMPILED_DROPOUT, SMALL, compiled_against_eager, fused_model

pytestmark = pytest.mark.unit

P = COMPILED_DROPOUT


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "recomputed"])
def test_compiled_layers_match_eager_loss_and_gradients(
    monkeypatch: pytest.MonkeyPatch, checkpointing: bool
) -> None:
    compiled_against_eager(monkeypatch, "cpu", checkpointing)


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

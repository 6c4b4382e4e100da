"""Decoder layers under torch.compile train like the eager fused LoRA forward (tiny Qwen2).

The compiled path draws dropout masks from a counter hash (``hashed_keep``): a generator object
cannot enter a graph. These tests pin what a user relies on when ``FTJ_TORCH_COMPILE=1``: one
graph per layer call with dropout on (no breaks at every linear), no recompilation when packed
rows change length, the same loss and LoRA gradients as eager (with and without activation
checkpointing, whose recomputation must redraw the forward's masks), and masks that drop
about ``p`` of the elements. The same file runs on the GPU (``tests/gpu``) with Inductor's
Triton code.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from finetune_trainer import lora_fused
from finetune_trainer.acceleration import compile_decoder_layers
from finetune_trainer.lora_fused import fuse_lora_linears, hashed_keep

from tests.harness.tiny_lora import SMALL, loss_and_grads, tiny_qwen2, with_lora

pytestmark = pytest.mark.unit

P = 0.1


def fused_model(device: str = "cpu", checkpointing: bool = False) -> Any:
    model = with_lora(tiny_qwen2(SMALL, device), 4, P, 0.1)
    fuse_lora_linears(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def compiled_against_eager(
    monkeypatch: pytest.MonkeyPatch, device: str, checkpointing: bool
) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(7)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 24), device=device)
    reference = fused_model(device, checkpointing)
    model = fused_model(device, checkpointing)
    assert compile_decoder_layers(model) == SMALL["num_hidden_layers"]
    monkeypatch.setattr(lora_fused, "_HASHED_DROPOUT", True)  # eager: the compiled path's masks
    torch.manual_seed(8)  # the same dropout seeds, drawn in the same order, for both
    ref_loss, ref_grads = loss_and_grads(reference, ids)
    monkeypatch.setattr(lora_fused, "_HASHED_DROPOUT", False)
    torch.manual_seed(8)
    loss, grads = loss_and_grads(model, ids)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert set(grads) == set(ref_grads) and len(grads) == 28
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


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

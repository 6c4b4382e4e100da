"""Batches: padding-free packing must not let examples see each other; padding is masked."""

from __future__ import annotations

import pytest
import torch
from finetune_trainer.data import make_collator
from transformers import Qwen3Config, Qwen3ForCausalLM

from tests.fixtures_tokenizer import make_test_tokenizer
from tests.rounding import logits_bound, relative_error, training_step_bounds

pytestmark = pytest.mark.unit

A = {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [-100, -100, -100, 8, 9, 10, 11]}
B = {"input_ids": [20, 21, 22, 23, 24], "labels": [-100, -100, 22, 23, 24]}


def _tiny_qwen3() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    model = Qwen3ForCausalLM._from_config(config, attn_implementation="sdpa")
    return model.eval()


def test_packed_row_gives_each_example_the_logits_it_has_alone() -> None:
    model = _tiny_qwen3()
    assert model.config.use_cache  # the default that breaks packing unless the batch says so
    batch = make_collator(make_test_tokenizer(), packing=True)([A, B])
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone_a = model(input_ids=torch.tensor([A["input_ids"]])).logits
        alone_b = model(input_ids=torch.tensor([B["input_ids"]])).logits
    n = len(A["input_ids"])
    # The same sums over other shapes (kernels block and order them differently): float32
    # rounding apart, no more (tests/rounding.py). Seeing the other example would not be.
    bound = logits_bound(model.config.to_dict(), tokens=packed.shape[1])
    assert relative_error(packed[0, n:], alone_b[0]) <= bound
    assert relative_error(packed[0, :n], alone_a[0]) <= bound


def test_packed_loss_equals_the_loss_of_the_examples_alone() -> None:
    model = _tiny_qwen3()
    batch = make_collator(make_test_tokenizer(), packing=True)([A, B])
    with torch.no_grad():
        packed_logits = model(**batch).logits
        # Sum of per-token losses of each example run alone == packed loss sum.
        total = 0.0
        for ex in (A, B):
            out = model(
                input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])
            )
            total += out.loss.item() * sum(1 for x in ex["labels"][1:] if x != -100)
        packed = model(**batch)
    count = int((batch["labels"][0, 1:] != -100).sum())
    assert packed_logits.shape[1] == 12
    rel = training_step_bounds(model.config.to_dict(), tokens=packed_logits.shape[1]).loss
    assert packed.loss.item() * count == pytest.approx(total, rel=rel)


def test_packed_batch_layout() -> None:
    batch = make_collator(make_test_tokenizer(), packing=True, pad_to_multiple_of=8)([A, B])
    assert batch["input_ids"].shape == (1, 16)
    assert batch["position_ids"][0].tolist() == [*range(7), *range(5), 0, 0, 0, 0]
    labels = batch["labels"][0].tolist()
    assert labels[7] == -100  # B's first token is never predicted from A
    assert labels[:12] == [-100, -100, -100, 8, 9, 10, 11, -100, -100, 22, 23, 24]
    assert labels[12:] == [-100] * 4
    assert "attention_mask" not in batch
    assert batch["use_cache"] is False
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 12, 16]


def test_padded_batch_pads_right_and_masks_padding() -> None:
    tokenizer = make_test_tokenizer()
    batch = make_collator(tokenizer, packing=False)([A, B])
    assert batch["input_ids"].shape == (2, 7)
    assert batch["input_ids"][1].tolist() == [20, 21, 22, 23, 24] + [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert batch["labels"][1].tolist() == [-100, -100, 22, 23, 24, -100, -100]
    assert make_collator(tokenizer, packing=False, pad_to_multiple_of=4)([A, B])[
        "input_ids"
    ].shape == (2, 8)

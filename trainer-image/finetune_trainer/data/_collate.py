"""Batches for the trainer: padded rows, or one packed row with no cross-example attention.

Packing flattens a batch into a single row, ``position_ids`` restarting at 0 for each example
and no ``attention_mask``. Transformers (5.x) derives a block-diagonal causal mask from such
position ids for sdpa/eager attention (``masking_utils.find_packed_sequence_indices``) and
uses varlen kernels for flash attention, but only when no KV cache is passed to the model: a
model called with its config's ``use_cache=True`` builds an empty cache and then silently
attends across examples. The packed batch therefore carries ``use_cache=False`` itself, so
``model(**batch)`` is correct in any loop, not only inside Trainer/SFTTrainer (which also
disable the cache). ``cu_seq_lens_*``/``max_length_*`` save flash attention from deriving
the boundaries on the GPU in every layer; other attention implementations ignore them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from finetune_trainer.data._tokenize import IGNORE_INDEX

Batch = dict[str, Any]  # tensors, plus use_cache=False for packed batches


def _round_up(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple


def _pad_id(tokenizer: Any) -> int:
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return 0


def make_collator(
    tokenizer: Any, packing: bool, pad_to_multiple_of: int | None = None
) -> Callable[[list[dict[str, Any]]], Batch]:
    """A collator for examples with ``input_ids`` and ``labels`` (as :func:`prepare_data` makes).

    ``packing=True``: one row, ``position_ids`` per example, ``labels`` -100 at each example's
    first token (nothing is predicted across a border), ``use_cache=False``.
    ``packing=False``: right padding to the longest example, ``attention_mask``, labels -100
    on padding.
    """
    pad_id = _pad_id(tokenizer)

    def packed(features: Sequence[dict[str, Any]]) -> Batch:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        starts = [0]
        for feature in features:
            n = len(feature["input_ids"])
            ids.extend(feature["input_ids"])
            example_labels = list(feature["labels"])
            example_labels[0] = IGNORE_INDEX
            labels.extend(example_labels)
            positions.extend(range(n))
            starts.append(starts[-1] + n)
        total = _round_up(len(ids), pad_to_multiple_of)
        extra = total - len(ids)
        if extra:
            # Padding is its own tiny "sequence" (positions restart at 0) and is never a label.
            ids.extend([pad_id] * extra)
            labels.extend([IGNORE_INDEX] * extra)
            positions.extend([0] * extra)
            starts.append(total)
        cu = torch.tensor(starts, dtype=torch.int32)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": int(cu.diff().max()),
            "max_length_k": int(cu.diff().max()),
            "use_cache": False,
        }

    def padded(features: Sequence[dict[str, Any]]) -> Batch:
        width = _round_up(max(len(f["input_ids"]) for f in features), pad_to_multiple_of)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return packed if packing else padded

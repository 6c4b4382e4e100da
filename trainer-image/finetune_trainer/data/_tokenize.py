"""Segments → ``input_ids`` and ``labels``, in batches, with truncation at the cutoff.

Each segment is tokenized on its own, so a label boundary is always a token boundary: the
labelled tokens decode to exactly the assistant answers plus their end tokens. That is also
how the model meets the text at generation time (the prompt is tokenized, then the answer is
generated token by token), so training and inference see the same token boundaries.
All segments of all examples go to the fast tokenizer in large batches: 10k short examples
take a second or two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_trainer.data._types import Segment

IGNORE_INDEX = -100
_BATCH = 4096


@dataclass(frozen=True)
class Tokenized:
    """One tokenized example (after truncation)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    prompt_tokens: int  # untrained tokens before the first trained one (before truncation)
    length: int = 0  # tokens before truncation


def tokenize(
    examples: Sequence[Sequence[Segment]], tokenizer: Any, cutoff_length: int
) -> list[Tokenized]:
    """Tokenize every example's segments, label trained ones, truncate at ``cutoff_length``."""
    texts = [s.text for segments in examples for s in segments]
    ids: list[list[int]] = []
    for start in range(0, len(texts), _BATCH):
        batch = texts[start : start + _BATCH]
        ids.extend(tokenizer(batch, add_special_tokens=False)["input_ids"])
    out: list[Tokenized] = []
    k = 0
    for segments in examples:
        input_ids: list[int] = []
        labels: list[int] = []
        prompt_tokens = -1
        for segment in segments:
            piece = ids[k]
            k += 1
            if segment.trained and prompt_tokens < 0:
                prompt_tokens = len(input_ids)
            input_ids.extend(piece)
            labels.extend(piece if segment.trained else [IGNORE_INDEX] * len(piece))
        truncated = len(input_ids) > cutoff_length
        out.append(
            Tokenized(
                input_ids[:cutoff_length],
                labels[:cutoff_length],
                truncated,
                prompt_tokens if prompt_tokens >= 0 else len(input_ids),
                len(input_ids),
            )
        )
    return out


def has_answer(example: Tokenized) -> bool:
    """Whether any trained token is left (else the example teaches nothing)."""
    return any(label != IGNORE_INDEX for label in example.labels)

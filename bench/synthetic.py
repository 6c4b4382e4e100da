"""Synthetic, CoT-like training data and a tiny offline tokenizer.

Lengths are log-normal with a median of 650 tokens, clipped to [32, 2048] (max = cutoff):
the long-tailed spread of reasoning data, where padding wastes the most.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

MEDIAN_TOKENS = 650
SIGMA = 0.6
MAX_TOKENS = 2048
MIN_TOKENS = 32
PAD_ID = 0
EOS_ID = 1
FIRST_TOKEN_ID = 3  # ids below are special; random content never collides with padding


def example_lengths(count: int, seed: int = 0) -> list[int]:
    """``count`` example lengths from the log-normal spread."""
    rng = random.Random(seed)
    mu = math.log(MEDIAN_TOKENS)
    return [
        max(MIN_TOKENS, min(MAX_TOKENS, int(rng.lognormvariate(mu, SIGMA)))) for _ in range(count)
    ]


def even_lengths(count: int, jitter: int = 0) -> list[int]:
    """``count`` lengths at the spread's mean: all equal (every step packs the same number of
    tokens) or, with ``jitter``, spread over +-jitter tokens (the count changes every step
    while the attention work stays that of equal lengths). Rows ``-samelen`` and
    ``-samelen-jitter`` compare the two (bench/NOTES.md step 33)."""
    mean = round(sum(example_lengths(4096)) / 4096)
    return [mean + (i * 37 % (2 * jitter + 1)) - jitter if jitter else mean for i in range(count)]


def examples(
    count: int, vocab_size: int, seed: int = 0, lengths: list[int] | None = None
) -> list[dict[str, list[int]]]:
    """Pre-tokenized examples (input_ids ending in EOS); labels = input_ids (text-style loss).
    ``lengths``: theirs, instead of the log-normal spread's."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths or example_lengths(count, seed):
        ids = torch.randint(FIRST_TOKEN_ID, min(vocab_size, 32000), (length,), generator=gen)
        ids[-1] = EOS_ID
        rows.append({"input_ids": ids.tolist()})
    return rows


def save_tokenizer(path: Path) -> None:
    """A minimal fast tokenizer (pad=0, eos=1, unk=2): trainers only need its special ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(str(path))


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))

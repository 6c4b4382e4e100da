"""Plain data passed between the pipeline's stages and handed to the trainer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import datasets

# One chat message after normalization: {"role": system|user|assistant|tool, "content": str}.
Message = dict[str, str]


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text and whether the model is trained to produce it."""

    text: str
    trained: bool


@dataclass(frozen=True)
class Example:
    """One normalized example: a conversation, or raw text (``format: text``).

    ``origin`` says where it came from (``file, line 3``) so later problems can name it.
    """

    dataset: int
    origin: str
    messages: tuple[Message, ...] | None = None
    text: str | None = None


@dataclass(frozen=True)
class TestPrompt:
    """A held-out prompt for sample generations: what to feed the model and what we expect."""

    prompt: str  # rendered with the chat template, ending with the generation prompt
    expected: str  # the reference answer (the last assistant turn, reasoning per the template)
    messages: tuple[Message, ...] = ()  # the conversation up to (not including) that answer


@dataclass(frozen=True)
class DataStats:
    """Counts that go into metrics.json and the job's status summary."""

    examples: Mapping[str, int]  # per dataset (its URI), after numSamples
    train: int
    validation: int
    test: int
    truncated: int  # examples cut at training.cutoffLength (all splits)
    dropped: int  # examples with no answer token left after truncation (all splits)
    train_tokens: int
    assistant_tokens: int  # trained tokens in the training split
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. numSamples above the dataset size
    # Tokens per example before truncation, all splits: min, median, p95, max (what to set
    # cutoffLength from; ftj validate --data prints them).
    token_lengths: Mapping[str, int] = field(default_factory=dict)


@dataclass
class PreparedData:
    """Tokenized splits ready for the trainer, plus prompts for sample generations."""

    train: datasets.Dataset
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    test_prompts: list[TestPrompt]
    stats: DataStats

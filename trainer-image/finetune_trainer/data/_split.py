"""Seeded sampling and train/validation/test splits.

Everything uses :class:`random.Random` with the job's seed, so a restarted pod (or ``ftj run``
on a laptop) prepares exactly the same splits: resuming from a checkpoint relies on that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def sample(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of up to ``limit`` examples out of ``count``, after a seeded shuffle."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order if limit is None else order[:limit]


@dataclass(frozen=True)
class Split:
    """Index lists into the mixed example list."""

    train: list[int]
    validation: list[int]
    test: list[int]


def split(count: int, validation: float, test: float, seed: int) -> Split:
    """Shuffle ``count`` examples with ``seed`` and hold out the given fractions.

    A non-zero fraction always holds out at least one example (as long as one is left to
    train on), so ``validationSplit: 0.1`` on 5 examples still evaluates.
    """
    order = list(range(count))
    random.Random(seed).shuffle(order)

    def size(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, round(count * fraction))

    n_test = size(test)
    n_val = size(validation)
    while n_test + n_val >= count and (n_test or n_val):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return Split(
        train=order[n_test + n_val :],
        validation=order[n_test : n_test + n_val],
        test=order[:n_test],
    )

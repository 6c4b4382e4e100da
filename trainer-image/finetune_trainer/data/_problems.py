"""Collecting data problems so that one failed run reports all of them, not just the first.

A user fixing a dataset wants the whole list. The pipeline records each problem with where it
is (file, line or item, column) and what to do, keeps going, and raises one
:class:`~finetune_trainer.errors.InvalidInput` before anything is tokenized. It stops reading
at :data:`MAX_PROBLEMS` so a file that is wrong everywhere fails in seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune_trainer.errors import InvalidInput

MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located precisely enough to fix it."""

    where: str  # e.g. "data/train.jsonl, line 7, column 'output'"
    what: str  # what is wrong
    fix: str  # what to do about it

    def __str__(self) -> str:
        return f"{self.where}: {self.what}. Fix: {self.fix}"


class TooManyProblems(Exception):
    """Raised inside the log when it is full, to stop reading early. Never escapes the pipeline."""


@dataclass
class ProblemLog:
    """Problems found so far; :meth:`raise_if_any` turns them into one ``InvalidInput``."""

    problems: list[Problem] = field(default_factory=list)
    limit: int = MAX_PROBLEMS

    def add(self, where: str, what: str, fix: str) -> None:
        """Record a problem; raise :class:`TooManyProblems` once the limit is reached."""
        self.problems.append(Problem(where, what, fix))
        if len(self.problems) >= self.limit:
            raise TooManyProblems

    def __bool__(self) -> bool:
        return bool(self.problems)

    def raise_if_any(self) -> None:
        """Raise one ``InvalidInput`` listing every recorded problem (no-op when clean)."""
        if not self.problems:
            return
        count = len(self.problems)
        head = (
            f"the training data has {count} problem(s)"
            if count < self.limit
            else f"the training data has at least {count} problems (stopped reading at {count})"
        )
        lines = "\n".join(f"  - {p}" for p in self.problems)
        raise InvalidInput(f"{head}:\n{lines}")


def locate(file: str, position: str | None = None, column: str | None = None) -> str:
    """Human-readable place of a problem: ``file, line 3, column 'output'``."""
    parts = [file]
    if position:
        parts.append(position)
    if column:
        parts.append(f"column {column!r}")
    return ", ".join(parts)

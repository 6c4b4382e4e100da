"""How long the remaining optimizer steps will take: the ETA in status, logs and ``ftj run``.

A run's whole average pace lags when the pace changes: a GPU that throttles, a host whose
cores another process takes, a first step that paid for CUDA start-up and compilation. After
100 one-second steps, ten 40-second steps still average under 5 s, and an ETA built on that
says minutes when hours are left. So each step's time is split in two:

* **work**, from the trainer's ``on_step_begin`` to its ``on_step_end`` (forward, backward,
  optimizer): its pace is taken over the recent past only (the steps that ended in the last
  ``window_s`` seconds, at least ``min_steps`` of them), and the first step (warm-up) counts
  only until another exists;
* **between steps**, from one step's end to the next one's begin (logging, evaluation,
  checkpoint saves, fetching the next batches): evaluation and saving come every N steps, so a
  recent window would swing between missing them and over-counting them; this part is
  averaged over the whole run instead.

Only steps run in this process count: steps restored from a checkpoint took no time here.
"""

from __future__ import annotations

import math
from collections import deque


class StepPace:
    """Seconds per optimizer step, from the trainer's step-begin and step-end times."""

    def __init__(self, window_s: float = 60.0, min_steps: int = 3) -> None:
        self._window_s = window_s
        self._min_steps = min_steps
        self._recent: deque[tuple[float, float]] = deque()  # (end time, work seconds)
        self._begin: float | None = None
        self._last_end: float | None = None
        self._between_total = 0.0
        self._between_count = 0
        self._first_work: float | None = None

    def step_begin(self, now: float) -> None:
        """A step starts; the time since the previous step's end is between-steps time."""
        self._begin = now
        if self._last_end is not None:
            self._between_total += now - self._last_end
            self._between_count += 1

    def step_end(self, now: float) -> None:
        """A step ends (one ``step_begin`` before it, or the step is ignored)."""
        if self._begin is None:
            return
        work = now - self._begin
        self._begin = None
        self._last_end = now
        if self._first_work is None:
            self._first_work = work  # warm-up: kept apart until a second step exists
            return
        self._recent.append((now, work))
        while len(self._recent) > self._min_steps and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()

    def seconds_per_step(self) -> float | None:
        """Expected seconds for one more step; ``None`` before any step has ended here."""
        if self._recent:
            work = sum(seconds for _, seconds in self._recent) / len(self._recent)
        elif self._first_work is not None:
            work = self._first_work
        else:
            return None
        between = self._between_total / self._between_count if self._between_count else 0.0
        return work + between

    def eta_seconds(self, step: int, total: int) -> int | None:
        """Seconds until step ``total``, at step ``step``; ``0`` when done, ``None`` unknown."""
        if total <= step:
            return 0
        pace = self.seconds_per_step()
        return None if pace is None else int(math.ceil((total - step) * pace))

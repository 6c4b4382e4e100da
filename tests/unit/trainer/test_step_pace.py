"""The ETA's pace: it follows a run whose speed changes, amortises evaluation and saving, and
lets the first step's warm-up go."""

from __future__ import annotations

import pytest
from finetune_trainer.step_pace import StepPace

pytestmark = pytest.mark.unit


def _run(pace: StepPace, start: float, works: list[float], between: float = 0.0) -> float:
    """Feed steps of the given work seconds, ``between`` seconds apart; returns the end time."""
    now = start
    for work in works:
        pace.step_begin(now)
        now += work
        pace.step_end(now)
        now += between
    return now - between


def test_nothing_known_before_a_step_ends_and_zero_when_done() -> None:
    pace = StepPace()
    assert pace.eta_seconds(0, 100) is None
    pace.step_begin(10.0)
    assert pace.eta_seconds(0, 100) is None
    pace.step_end(12.0)
    assert pace.eta_seconds(1, 100) == 99 * 2
    assert pace.eta_seconds(100, 100) == 0


def test_a_slowdown_shows_in_the_eta_within_the_window() -> None:
    # 100 one-second steps, then ten 40-second ones (another process took the cores): the
    # whole run's average (1,500 s / 110 = 13.6 s) would say 20 min for 90 steps left; the
    # recent pace says 90 x 40 s.
    pace = StepPace(window_s=60.0)
    _run(pace, 0.0, [1.0] * 100 + [40.0] * 10)
    assert pace.eta_seconds(110, 200) == 90 * 40


def test_a_speedup_shows_too_and_slow_steps_age_out() -> None:
    pace = StepPace(window_s=60.0)
    _run(pace, 0.0, [10.0] * 20 + [1.0] * 120)
    assert pace.eta_seconds(140, 200) == 60


def test_few_slow_steps_still_average_at_least_min_steps() -> None:
    # Steps longer than the window: the pace is the mean of the last min_steps, not the last
    # step alone.
    pace = StepPace(window_s=60.0, min_steps=3)
    _run(pace, 0.0, [5.0, 100.0, 200.0, 300.0])
    assert pace.seconds_per_step() == pytest.approx(200.0)


def test_the_first_steps_warm_up_stops_counting_once_another_step_ends() -> None:
    pace = StepPace()
    _run(pace, 0.0, [90.0])  # CUDA start-up and compilation
    assert pace.seconds_per_step() == pytest.approx(90.0)
    _run(pace, 100.0, [2.0, 2.0])
    assert pace.seconds_per_step() == pytest.approx(2.0 + 5.0)  # work + mean gap (10 s, 0 s)


def test_evaluation_and_saves_between_steps_are_spread_over_the_whole_run() -> None:
    # Two-second steps; every 10th step is followed by a 30 s evaluation. A recent window over
    # whole intervals would swing between 2 s and 5+ s a step; this stays at 2 + 30/10 = 5 s
    # once a few evaluations have happened, whichever step it is asked at.
    pace = StepPace(window_s=60.0)
    now = 0.0
    etas = []
    for step in range(1, 101):
        pace.step_begin(now)
        now += 2.0
        pace.step_end(now)
        if step > 40:
            etas.append(pace.eta_seconds(step, 200) / (200 - step))
        now += 30.0 if step % 10 == 0 else 0.0
    assert min(etas) == pytest.approx(max(etas), rel=0.2)
    assert pace.seconds_per_step() == pytest.approx(2.0 + 9 * 30.0 / 99)


def test_an_end_without_a_begin_is_ignored() -> None:
    pace = StepPace()
    pace.step_end(5.0)
    assert pace.seconds_per_step() is None

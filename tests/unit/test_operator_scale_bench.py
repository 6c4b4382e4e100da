"""The operator-scale bench's lag accounting (bench/operator_scale.py), without a cluster.

Why: the bench's headline numbers are lag percentiles; a step that never shows up must count
(as a lower bound), not vanish, or a stuck operator would look fast.
"""

from __future__ import annotations

from bench.operator_scale import ProgressServer, StepClock, percentile, step_lags


def test_pods_step_at_staggered_times_and_report_when_the_step_began() -> None:
    clock = StepClock(t0=1000.0, period=10.0, pods=4)
    assert [clock.offset(i) for i in range(4)] == [0.0, 2.5, 5.0, 7.5]
    assert clock.step_at(1, 1000.0 + 2.5 + 29.9) == 2
    assert clock.step_at(1, 1000.0 + 2.5 + 30.0) == 3
    served = ProgressServer(["127.77.0.2", "127.77.0.3"], clock).progress(1, 1035.0)
    assert served["step"] == 3 and served["phase"] == "Training"
    assert served["updatedAt"] == "1970-01-01T00:17:12.500000Z"  # 1032.5 s: step 3 began


def test_lag_runs_from_a_step_start_until_the_status_shows_it_or_a_later_step() -> None:
    clock = StepClock(t0=0.0, period=10.0, pods=1)
    # The status showed step 1 at 11.5 s, skipped step 2 and showed step 3 at 31.0 s.
    history = [(11.5, 1), (31.0, 3)]
    lags = step_lags(history, 0, clock, start=5.0, end=45.0)
    # Steps 1..4 began in the window at 10, 20, 30, 40; step 4 was never shown: end - 40.
    assert lags == [1.5, 11.0, 1.0, 5.0]


def test_percentile_is_a_nearest_rank_of_the_samples() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 0.50) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0

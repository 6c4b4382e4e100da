"""The operator-scale bench's lag accounting (bench/operator_scale.py), without a cluster.

Why: the bench's headline numbers are lag percentiles; a step that never shows up must count
(as a lower bound), not vanish, or a stuck operator would look fast.
"""

from __future__ import annotations

from bench.operator_scale import (
    ProgressServer,
    StatusWatch,
    StepClock,
    lag_parts,
    lag_timeline,
    percentile,
    step_lags,
    step_lags_by_start,
)


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


def test_lag_parts_split_a_step_at_its_write_to_the_gateway() -> None:
    clock = StepClock(t0=0.0, period=10.0, pods=1)
    history = [(11.5, 1), (31.0, 3)]
    # Step 1: PATCH arrived at 11.0, answered at 11.2, the watch saw it at 11.5. Step 3's write
    # (30.4-30.9) also showed step 2, which gets the same write; step 4 was never shown.
    writes = [(11.0, 11.2), (30.4, 30.9)]
    parts = lag_parts(history, writes, 0, clock, start=5.0, end=45.0)
    rounded = [tuple(round(x, 3) for x in p) for p in parts]
    assert rounded == [(1.0, 0.2, 0.3), (10.4, 0.5, 0.1), (0.4, 0.5, 0.1)]
    # The parts of each step add up to its lag.
    assert [round(sum(p), 3) for p in parts] == step_lags(history, 0, clock, 5.0, 45.0)[:3]


def test_a_status_one_step_behind_has_not_caught_up() -> None:
    """The settle gate: a job whose status is a whole step behind is still draining the
    creation backlog, and must not open the measured window (session 17's gate let it)."""
    clock = StepClock(t0=0.0, period=10.0, pods=2)
    watch = StatusWatch(apiserver=None, namespace="ns")
    watch.seen = {"a": [(30.2, 3)], "b": [(26.0, 2)]}  # at 36.0: a shows 3, b (step 3 from 35) 2
    ips = {"a": "ip-a", "b": "ip-b"}
    index = {"ip-a": 0, "ip-b": 1}
    assert watch.caught_up(ips, index, clock, now=36.0, within=2.0) == 2  # b's step 3 is 1 s old
    assert watch.caught_up(ips, index, clock, now=38.0, within=2.0) == 1  # now 3 s old: behind
    watch.seen["b"].append((38.1, 3))
    assert watch.caught_up(ips, index, clock, now=38.2, within=2.0) == 2


def test_the_lag_timeline_shows_a_backlog_draining() -> None:
    clock = StepClock(t0=0.0, period=10.0, pods=1)
    # Shown late at first (steps 1, 2 at 19 and 27 s), then at once; step 5 never.
    history = [(19.0, 1), (27.0, 2), (30.1, 3), (40.1, 4)]
    samples = step_lags_by_start(history, 0, clock, start=5.0, end=55.0)
    assert [round(lag, 3) for _, lag in samples] == [9.0, 7.0, 0.1, 0.1, 5.0]
    assert [began for began, _ in samples] == [10.0, 20.0, 30.0, 40.0, 50.0]
    timeline = lag_timeline(samples, since=10.0, bucket=20.0)
    assert timeline == [
        {"t": 0.0, "steps": 2, "p90_s": 9.0, "max_s": 9.0},
        {"t": 20.0, "steps": 2, "p90_s": 0.1, "max_s": 0.1},
        {"t": 40.0, "steps": 1, "p90_s": 5.0, "max_s": 5.0},
    ]

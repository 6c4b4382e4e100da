"""The operator's progress poller: every unfinished job read once per interval,
spread over it, finished and deleted jobs left alone, one failing job not stopping the rest."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from finetune_operator import poller

pytestmark = pytest.mark.unit


def entry(phase: str | None, deleting: bool = False) -> list[dict[str, Any]]:
    meta = {"deletionTimestamp": "2026-12-07T00:00:00Z"} if deleting else {}
    return [{"metadata": meta, "status": {"phase": phase} if phase else {}}]


def test_only_unfinished_jobs_that_are_not_being_deleted_are_polled() -> None:
    index = {
        ("ml", "new"): entry(None),
        ("ml", "training"): entry("Training"),
        ("ml", "done"): entry("Succeeded"),
        ("ml", "failed"): entry("Failed"),
        ("ml", "deleting"): entry("Training", deleting=True),
        ("ml", "gone"): [],
    }
    assert poller.unfinished(index) == [("ml", "new"), ("ml", "training")]


def test_a_round_spreads_the_polls_over_the_interval_and_survives_a_failing_job() -> None:
    keys = [("ml", f"job-{i}") for i in range(10)]
    started: dict[tuple[str, str], float] = {}
    interval = 0.5

    async def poll(key: tuple[str, str]) -> None:
        started[key] = asyncio.get_running_loop().time()
        if key == keys[3]:
            raise RuntimeError("a broken job")

    async def one_round() -> float:
        begin = asyncio.get_running_loop().time()
        rounds = poller.Poller(poll, interval)
        await rounds.round(keys)
        await rounds.idle()
        return begin

    begin = asyncio.run(one_round())
    assert set(started) == set(keys)  # the failure of job-3 did not stop the others
    offsets = [started[k] - begin for k in keys]
    assert offsets == sorted(offsets)
    # Evenly spaced: job i starts no earlier than its slot i * interval / n (a late loop can
    # only push a start later), and the last one starts in the second half of the interval.
    for i, offset in enumerate(offsets):
        assert offset >= i * interval / len(keys) - 1e-3
    assert offsets[-1] >= interval / 2


def test_a_slow_job_neither_delays_the_others_nor_piles_up_polls() -> None:
    slow, fast = ("ml", "slow"), ("ml", "fast")
    calls: list[tuple[str, str]] = []
    release = asyncio.Event()

    async def poll(key: tuple[str, str]) -> None:
        calls.append(key)
        if key == slow:
            await release.wait()  # e.g. its status write waits for a busy API server

    async def three_rounds() -> None:
        rounds = poller.Poller(poll, 0.02)
        for _ in range(3):
            await rounds.round([slow, fast])  # returns without waiting for the slow poll
        release.set()
        await rounds.idle()

    asyncio.run(three_rounds())
    assert calls.count(fast) == 3
    assert calls.count(slow) == 1  # still running in rounds 2 and 3: not started again


def test_the_poller_picks_up_jobs_created_after_it_started() -> None:
    index: dict[tuple[str, str], list[dict[str, Any]]] = {("ml", "first"): entry("Training")}
    polled: list[tuple[str, str]] = []

    async def poll(key: tuple[str, str]) -> None:
        polled.append(key)
        if len(polled) == 1:
            index[("ml", "second")] = entry(None)

    async def run_briefly() -> None:
        task = asyncio.create_task(poller.Poller(poll, 0.05).forever(lambda: index))
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(run_briefly())
    assert ("ml", "second") in polled
    assert polled.count(("ml", "first")) >= 2  # polled again every interval


def test_a_standby_replica_polls_nothing_and_cancels_its_polls_in_flight() -> None:
    """Peering: while ``standby()`` says another replica is active, no poll starts and a long
    poll still open from the active time is cancelled; when it turns active again, polls
    resume on the next round."""
    key = ("ml", "job")
    polls: list[str] = []
    cancelled = asyncio.Event()
    answers = iter([False, True, True, False])
    state = {"standby": False}

    async def poll(_: tuple[str, str]) -> None:
        polls.append("standby" if state["standby"] else "active")
        try:
            await asyncio.sleep(3600)  # a long poll that nothing answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def standby() -> bool:
        state["standby"] = next(answers, False)
        return state["standby"]

    async def run() -> None:
        rounds = poller.Poller(poll, 0.05)
        task = asyncio.create_task(rounds.forever(lambda: {key: entry("Training")}, standby))
        await asyncio.wait_for(cancelled.wait(), 5)  # round 2 (standby) cancelled round 1's
        while len(polls) < 2:  # round 4 (active again) polls anew
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert polls == ["active", "active"]  # none started while standby

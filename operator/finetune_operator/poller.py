"""One task reads every unfinished FineTuneJob's progress, instead of one kopf timer per job.

Why: a kopf timer per FineTuneJob costs, per job, an asyncio task, kopf's per-call handler
machinery every interval, and a live copy of the whole object that kopf keeps for as long as
the timer runs (https://kopf.readthedocs.io/en/stable/timers/). At a thousand running jobs that
was the largest part of the operator's memory and a quarter of its CPU
(``bench/operator_scale.py``). This poller walks kopf's FineTuneJob index once per
``FTJ_PROGRESS_POLL_SECONDS`` and spreads the jobs evenly over the interval, so the GETs and
the status writes they cause arrive at a steady rate instead of in bursts, with at most one poll
per job in flight.

Each poll is a long poll (``contract.PROGRESS_MAX_WAIT``): it sends the ETag of the progress
already held and the trainer answers when its progress changes, or after ``LONG_POLL_SECONDS``
with 304 Not Modified. A new step therefore reaches the status as soon as the trainer has it,
not up to a poll interval later, and a job whose step did not change costs one request per
``LONG_POLL_SECONDS`` instead of one per interval. The rounds still matter: after an answer,
the job's next poll starts in its next slot (within ``FTJ_PROGRESS_POLL_SECONDS``), which
bounds the reads of a trainer whose progress changes many times a second; and an older trainer
that ignores the headers answers at once, which makes this the plain poll it was before.

Who owns the schedule: this poller, in every operator. With kopf peering (``FTJ_PEERING``, the
chart's default) it asks :mod:`finetune_operator.standby` before each round whether a peer is
the active replica, the question kopf asks before running its own handlers, and a standby
replica polls nothing (its polls still in flight are cancelled). The 1,000-job figures in
bench/NOTES.md are of this poller, with and without peering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from finetune_api.status import TERMINAL_PHASES

from finetune_operator.inventory import Key

LOGGER = logging.getLogger("finetune_operator.poller")
# How long the trainer may hold a poll while nothing changes; also how often the status of a
# job whose progress stands still is recomputed (the resync a timer gave).
LONG_POLL_SECONDS = 30.0

Poll = Callable[[Key], Awaitable[None]]
Standby = Callable[[], Awaitable[bool]]


def unfinished(entries: Mapping[Key, Iterable[Mapping[str, Any]]]) -> list[Key]:
    """Keys of the FineTuneJobs to poll: not finished and not being deleted (pure).

    ``entries`` is kopf's FineTuneJob index (key → the entries of that key), in the order the
    index holds them, so each job keeps its place in the round and is read once per interval.
    """
    keys: list[Key] = []
    for key, store in entries.items():
        entry = next(iter(store), None)
        if entry is None:
            continue
        if (entry.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if (entry.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        keys.append(key)
    return keys


class Poller:
    """Starts ``poll(key)`` for every key once per round, evenly spaced over the interval.

    A round does not wait for its polls: a slow status write (the API server is busy) must not
    delay the next job's read, or every job would be read less often than the interval says.
    Instead a job whose previous poll is still running is skipped until it has finished, so
    there is at most one poll per job in flight and a slow server can't pile them up.
    """

    def __init__(self, poll: Poll, interval: float) -> None:
        self.poll = poll
        self.interval = interval
        self.running: dict[Key, asyncio.Task[None]] = {}

    async def _guarded(self, key: Key) -> None:
        try:
            await self.poll(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged with its traceback; the others go on
            LOGGER.exception("progress poll of %s/%s failed", *key)
        finally:
            self.running.pop(key, None)

    async def round(self, keys: list[Key]) -> None:
        """Start the polls of ``keys``, the i-th at ``i * interval / len(keys)`` seconds from
        now; return after the last start. One failing poll is logged and the others go on."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        gap = self.interval / max(len(keys), 1)
        for i, key in enumerate(keys):
            delay = start + i * gap - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if key not in self.running:
                self.running[key] = asyncio.create_task(self._guarded(key))

    async def idle(self) -> None:
        """Wait until no poll is running (the tests' way to let a round finish)."""
        while self.running:
            await asyncio.wait(list(self.running.values()))

    def cancel_running(self) -> None:
        """Cancel the polls in flight (shutdown; a replica that became standby)."""
        for task in list(self.running.values()):
            task.cancel()

    async def forever(
        self,
        index: Callable[[], Mapping[Key, Iterable[Mapping[str, Any]]]],
        standby: Standby | None = None,
    ) -> None:
        """A round per interval over ``index()`` (kopf's FineTuneJob index as it is now: jobs
        created since the last round join the next, deleted and finished ones leave it), until
        cancelled at shutdown, which cancels the polls still running. A round for which
        ``standby()`` answers True (peering: another replica is active) polls nothing."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                start = loop.time()
                try:
                    if standby is not None and await standby():
                        self.cancel_running()
                    else:
                        await self.round(unfinished(index()))
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the poller must outlive any one bad round
                    LOGGER.exception("progress poll round failed")
                await asyncio.sleep(max(0.0, start + self.interval - loop.time()))
        finally:
            self.cancel_running()

"""In-memory state of a running operator process, shared by the handlers through kopf's memo.

Nothing here is needed for correctness after a restart: the status is recomputed from the
cluster, and a lost progress reading is replaced by the next poll. It only serves to avoid
writes (the last status this process wrote, for the rate limit) and races (one lock per
FineTuneJob, so two handlers never compute and write the same status concurrently).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from finetune_operator.inventory import Key
from finetune_operator.kube import KubeClient
from finetune_operator.settings import OperatorSettings

# FineTuneJobs whose objects are rendered and created at the same time. When many are created
# at once (or the operator starts with many unfinished), kopf calls the create/resume handler
# for all of them together; each holds its parsed spec and rendered objects until its API calls
# finish, so without a bound the burst, not the steady state, sets the process's memory.
CONCURRENT_CREATES = 16
# Progress-only status writes in flight at once: fewer than the client's connections
# (kube.MAX_CONNECTIONS), so that when the API server is the bottleneck, creating a new job's
# objects and writing phase changes never queue behind a thousand jobs' progress numbers.
CONCURRENT_PROGRESS_WRITES = 28


@dataclass(frozen=True)
class WrittenStatus:
    """A status this process wrote, and when (``time.monotonic()``)."""

    status: dict[str, Any]
    at: float


@dataclass(frozen=True)
class ProgressReading:
    """The latest ``/progress`` answer of one job, the pod that gave it and its ETag (sent
    back on the next poll, which then waits for a change: ``progress.fetch_progress``)."""

    pod_uid: str
    data: dict[str, Any]
    etag: str | None = None


@dataclass
class Runtime:
    """Clients and per-job memory of this operator process (mutable by design)."""

    settings: OperatorSettings
    api: KubeClient
    session: aiohttp.ClientSession
    written: dict[Key, WrittenStatus] = field(default_factory=dict)
    progress: dict[Key, ProgressReading] = field(default_factory=dict)
    phases: dict[Key, str | None] = field(default_factory=dict)
    # When a progress change held back by the rate limit may be written (time.monotonic()):
    # the job's next long poll returns by then, so the change is not left waiting a whole wait.
    held_back: dict[Key, float] = field(default_factory=dict)
    # The Job this process created (or found) for a FineTuneJob, as ``projections.job_entry``,
    # until the Job watch shows it. In that gap a status computed from the watches alone would
    # say "creating the Kubernetes Job" right after "waiting for pods of Job ..." (a reason
    # going backwards in `kubectl get ftj`, and a wasted write; bench/NOTES.md, session 18).
    unseen_jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    creating: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CONCURRENT_CREATES)
    )
    progress_writes: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CONCURRENT_PROGRESS_WRITES)
    )

    def lock(self, key: Key) -> asyncio.Lock:
        """The lock serializing status computations of one FineTuneJob."""
        return self._locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        """Drop everything about a deleted FineTuneJob."""
        for table in (
            self.written,
            self.progress,
            self.phases,
            self.held_back,
            self.unseen_jobs,
            self._locks,
        ):
            table.pop(key, None)

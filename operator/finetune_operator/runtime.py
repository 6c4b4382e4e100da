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


@dataclass(frozen=True)
class WrittenStatus:
    """A status this process wrote, and when (``time.monotonic()``)."""

    status: dict[str, Any]
    at: float


@dataclass(frozen=True)
class ProgressReading:
    """The latest ``/progress`` answer of one job, and the pod that gave it."""

    pod_uid: str
    data: dict[str, Any]


@dataclass
class Runtime:
    """Clients and per-job memory of this operator process (mutable by design)."""

    settings: OperatorSettings
    api: KubeClient
    session: aiohttp.ClientSession
    written: dict[Key, WrittenStatus] = field(default_factory=dict)
    progress: dict[Key, ProgressReading] = field(default_factory=dict)
    phases: dict[Key, str | None] = field(default_factory=dict)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)

    def lock(self, key: Key) -> asyncio.Lock:
        """The lock serializing status computations of one FineTuneJob."""
        return self._locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        """Drop everything about a deleted FineTuneJob."""
        for table in (self.written, self.progress, self.phases, self._locks):
            table.pop(key, None)

"""Is this replica kopf's standby? The progress poller asks before each round.

Why: with kopf peering (``FTJ_PEERING``, the chart's default) every replica but one must stay
idle. kopf pauses only what it runs itself (its watches, handlers and timers); the progress
poller (:mod:`finetune_operator.poller`) is the operator's own task, so it has to ask the same
question kopf asks, from the same data: kopf keeps each replica's heartbeat in the status of its
peering object (``ClusterKopfPeering`` cluster-wide, a ``KopfPeering`` in each watched
namespace), as ``{identity: {priority, lifetime, lastseen}}``
(https://kopf.readthedocs.io/en/stable/peering/).

kopf's rule, which :func:`outranked` repeats: a replica pauses while a live peer (``lastseen``
+ ``lifetime`` not yet past) has a higher priority, or another live peer has the same priority
(then all of them pause). A peering object that is missing pauses it too (peering is mandatory
here). The identity-free form used here counts our own heartbeat among the same-priority
entries: a tie needs two of them. Priorities differ by construction (a hash of the pod name,
:func:`finetune_operator.settings.default_priority`), so a tie is a misconfiguration either way.

The poller reads the peering object(s) once per round (one GET per object, every
``FTJ_PROGRESS_POLL_SECONDS``); kopf reacts to the watch stream. So for up to one round after a
replica starts or a peer dies, both replicas can poll. That window is harmless: a poll only
recomputes the status from the observed objects, and two writers write the same status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_operator.errors import ApiError, NotFound
from finetune_operator.kube import KubeClient

LOGGER = logging.getLogger("finetune_operator.standby")
PEERING_API = "kopf.dev/v1"


def live_priorities(peers: Mapping[str, Any], now: datetime) -> list[int]:
    """The priorities of the peers whose heartbeat has not expired at ``now`` (pure).

    An entry kopf could not have written (not a mapping, no parseable ``lastseen``) is skipped,
    as kopf's own ``Peer`` would fail on it rather than count it.
    """
    priorities: list[int] = []
    for info in peers.values():
        if not isinstance(info, Mapping):
            continue
        try:
            lastseen = datetime.fromisoformat(str(info["lastseen"]))
            lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
            priority = int(info.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=timezone.utc)
        if lastseen + lifetime > now:
            priorities.append(priority)
    return priorities


def outranked(peers: Mapping[str, Any], priority: int, now: datetime) -> bool:
    """True when kopf pauses a replica of ``priority`` given a peering object's ``status``
    (pure): a live peer with a higher priority, or two live heartbeats with ours (a tie)."""
    live = live_priorities(peers, now)
    return any(p > priority for p in live) or sum(p == priority for p in live) >= 2


class PeeringCheck:
    """Reads the peering object(s) of this operator and answers :meth:`standby`."""

    def __init__(
        self, api: KubeClient, name: str, namespaces: Iterable[str], priority: int
    ) -> None:
        self.api = api
        self.name = name
        # Cluster-wide: the one ClusterKopfPeering; namespaced: a KopfPeering per namespace.
        self.scopes: list[str | None] = list(namespaces) or [None]
        self.priority = priority
        self.was_standby: bool | None = None

    async def _outranked_in(self, namespace: str | None, now: datetime) -> bool:
        kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
        try:
            peering = await self.api.get(PEERING_API, kind, namespace, self.name)
        except NotFound:
            return True  # kopf keeps a mandatory peering paused until it sees the object
        return outranked(peering.get("status") or {}, self.priority, now)

    async def standby(self) -> bool:
        """Whether to leave the polls to another replica now. On an API error the previous
        answer stands (standby before the first answer): an unreadable peering object is not a
        reason for two replicas to act."""
        now = datetime.now(timezone.utc)
        try:
            answer = False
            for namespace in self.scopes:
                if await self._outranked_in(namespace, now):
                    answer = True
                    break
        except ApiError as err:
            LOGGER.warning("peering %s unreadable, polling state unchanged: %s", self.name, err)
            return True if self.was_standby is None else self.was_standby
        if answer != self.was_standby:
            LOGGER.info(
                "progress polling %s (peering %s, priority %d)",
                "paused: another replica is active" if answer else "active",
                self.name,
                self.priority,
            )
        self.was_standby = answer
        return answer

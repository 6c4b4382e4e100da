"""kopf peering's pause rule, as the progress poller applies it: the poller is the operator's
own task, so a standby replica must find out from kopf's peering object itself."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from finetune_operator import standby
from finetune_operator.errors import ApiError, NotFound

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def heartbeat(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, Any]:
    """One replica's entry as kopf writes it (kopf/_core/engines/peering.py, Peer.as_dict)."""
    seen = (NOW - timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


def test_a_live_peer_with_a_higher_priority_makes_this_replica_standby() -> None:
    peers = {"op-a": heartbeat(100, 5), "op-b": heartbeat(200, 5)}
    assert standby.outranked(peers, 100, NOW)
    assert not standby.outranked(peers, 200, NOW)  # op-b is the active one


def test_an_expired_heartbeat_does_not_count() -> None:
    peers = {"op-a": heartbeat(100, 5), "op-b": heartbeat(200, 61)}  # op-b died a second ago
    assert not standby.outranked(peers, 100, NOW)


def test_a_tie_pauses_every_replica_of_that_priority_as_kopf_does() -> None:
    peers = {"op-a": heartbeat(100, 5), "op-b": heartbeat(100, 1)}
    assert standby.outranked(peers, 100, NOW)
    # Our own heartbeat alone is no tie.
    assert not standby.outranked({"op-a": heartbeat(100, 5)}, 100, NOW)


def test_entries_kopf_could_not_have_written_are_ignored() -> None:
    peers = {"op-a": heartbeat(100, 5), "junk": {"priority": 999}, "none": None}
    assert not standby.outranked(peers, 100, NOW)
    # kopf writes an aware timestamp; a naive one is read as UTC rather than dropped.
    naive = {"op-b": {"priority": 200, "lifetime": 60, "lastseen": "2026-12-07T11:59:50"}}
    assert standby.outranked(naive, 100, NOW)


class FakeApi:
    """Answers GETs of peering objects from a dict; records the paths' parts."""

    def __init__(self, objects: dict[tuple[str, str | None], Any]) -> None:
        self.objects = objects
        self.gets: list[tuple[str, str | None, str]] = []

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Any:
        self.gets.append((kind, namespace, name))
        found = self.objects.get((kind, namespace))
        if isinstance(found, Exception):
            raise found
        if found is None:
            raise NotFound(404, "not found")
        return found


def live(priority: int) -> dict[str, Any]:
    seen = datetime.now(timezone.utc).isoformat()
    return {"priority": priority, "lifetime": 60, "lastseen": seen}


def test_the_check_reads_the_cluster_peering_or_one_per_watched_namespace() -> None:
    cluster = FakeApi({("ClusterKopfPeering", None): {"status": {"me": live(5)}}})
    check = standby.PeeringCheck(cluster, "ftj", (), 5)  # type: ignore[arg-type]
    assert asyncio.run(check.standby()) is False
    assert cluster.gets == [("ClusterKopfPeering", None, "ftj")]

    # Namespaced: outranked in any one watched namespace is enough (kopf pauses the whole
    # operator on any of its peering objects).
    per_ns = FakeApi(
        {
            ("KopfPeering", "ml"): {"status": {"me": live(5)}},
            ("KopfPeering", "research"): {"status": {"me": live(5), "other": live(9)}},
        }
    )
    check = standby.PeeringCheck(per_ns, "ftj", ("ml", "research"), 5)  # type: ignore[arg-type]
    assert asyncio.run(check.standby()) is True


def test_a_missing_peering_object_means_standby_and_an_api_error_keeps_the_last_answer() -> None:
    missing = FakeApi({})
    assert asyncio.run(
        standby.PeeringCheck(missing, "ftj", (), 5).standby()  # type: ignore[arg-type]
    )

    api = FakeApi({("ClusterKopfPeering", None): ApiError(500, "etcd timeout")})
    check = standby.PeeringCheck(api, "ftj", (), 5)  # type: ignore[arg-type]
    assert asyncio.run(check.standby()) is True  # nothing known yet: do not act
    api.objects[("ClusterKopfPeering", None)] = {"status": {"me": live(5)}}
    assert asyncio.run(check.standby()) is False
    api.objects[("ClusterKopfPeering", None)] = ApiError(500, "etcd timeout")
    assert asyncio.run(check.standby()) is False  # the last answer stands

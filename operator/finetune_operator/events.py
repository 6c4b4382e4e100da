"""Kubernetes Events on a FineTuneJob, posted through the operator's own API client.

Why not ``kopf.event``: kopf posts from a queue that exists only inside its own per-object
handler tasks, and the progress poller (:mod:`finetune_operator.poller`) runs outside them; one
poster for every event keeps the events of both paths alike (``kubectl describe ftj`` shows them
"From finetune-operator"). An event that can't be posted is logged and dropped: the status
carries the same facts, and a status write must never fail because of an event.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import kopf

from finetune_operator.errors import ApiError
from finetune_operator.kube import FIELD_MANAGER, KubeClient
from finetune_operator.observe import Event


def event_object(ftj: Mapping[str, Any], event: Event, now: datetime) -> dict[str, Any]:
    """The core/v1 Event about ``ftj`` (pure)."""
    meta = ftj["metadata"]
    stamp = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": ftj["apiVersion"],
            "kind": ftj["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message,  # clipped where built (observe.EVENT_MESSAGE_LIMIT)
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "reportingInstance": os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or "",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_event(
    api: KubeClient, ftj: Mapping[str, Any], event: Event, logger: kopf.Logger
) -> None:
    """Post ``event`` on ``ftj``; a failure is a warning in the log, never an error."""
    try:
        await api.create(event_object(ftj, event, datetime.now(timezone.utc)))
    except ApiError as err:
        logger.warning(f"could not post event {event.reason}: {err}")

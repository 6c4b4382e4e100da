"""The operator process: kopf handlers plus startup configuration. ``kopf run -m`` loads this.

Two ways to start it, same behaviour (everything comes from ``FTJ_*`` environment variables,
see :mod:`finetune_operator.settings`):

* ``python -m finetune_operator`` — the container's entry point: JSON logs, liveness endpoint,
  namespaces and peering applied from the environment;
* ``kopf run -m finetune_operator.main --all-namespaces --log-format=json
  --liveness=http://0.0.0.0:8081/healthz`` — the same handlers under kopf's CLI; the startup
  handler still applies peering, storage and watch settings from the environment.

**Two replicas never both act.** With ``FTJ_PEERING`` set, kopf peering is mandatory: every
replica announces itself in a ``KopfPeering`` (namespaced) or ``ClusterKopfPeering``
(cluster-wide) object and pauses all handling while a live peer with a higher priority exists
(https://kopf.readthedocs.io/en/stable/peering/). Each replica's priority is derived from its
pod name (``POD_NAME``/``HOSTNAME`` hash, overridable with ``FTJ_PEERING_PRIORITY``) so that
priorities differ; on a tie kopf pauses *both* (it never lets both run). Peering is not a strict
lease: for a few seconds after a replica starts, before it has seen its peers, two replicas can
overlap. That window is harmless by construction: objects are created by deterministic name
(a second create gets 409 AlreadyExists, so there is never a second Job) and the status is a
pure function of the observed objects, so two writers write the same status. The progress
poller is the operator's own task, not kopf's: it reads the same peering object before each round
and polls nothing on a standby replica (:mod:`finetune_operator.standby`).
Without ``FTJ_PEERING`` the operator runs standalone and the chart must run one replica.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Coroutine
from typing import Any

import aiohttp
import kopf

from finetune_operator import (
    credentials,
    handlers,
    inventory,
    memory,
    metrics,
    naming,
    poller,
    standby,
)
from finetune_operator.handlers import JOBS, PODS, SETTINGS
from finetune_operator.kube import KubeClient
from finetune_operator.runtime import Runtime

ANNOTATION_PREFIX = "finetune.dev"
FINALIZER = "finetune.dev/finalizer"
# Server-side watch timeout: the API server ends each watch after this long and kopf re-opens
# it, so a watch silently stuck behind a broken load balancer can't outlive it.
WATCH_SERVER_TIMEOUT = 300
WATCH_CLIENT_TIMEOUT = 330

__all__ = ["handlers", "configure", "close", "login"]


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials: the same as the operator's own client (:mod:`.credentials`)."""
    return credentials.connection_info()


class RoutineSuccesses(logging.Filter):
    """Drops kopf's "succeeded" line of the handlers that run on every poll and every event.

    At a thousand running jobs they are ~500 lines per second that say nothing (a failure is
    still logged, and so is every phase change); with ``FTJ_LOG_LEVEL=DEBUG`` they are kept.
    """

    ROUTINE = frozenset(
        {
            "Handler 'ftj_event' succeeded.",
            "Handler 'dependent_changed' succeeded.",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a routine success."""
        return record.levelno != logging.INFO or record.getMessage() not in self.ROUTINE


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Apply the FTJ_* settings to kopf, build the clients every handler shares and start the
    progress poller (``kwargs`` holds kopf's indices by name)."""
    ours = SETTINGS
    # kopf's own bookkeeping goes into annotations with our prefix: the CRD's structural schema
    # would prune unknown status fields such as status.kopf.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.getLevelName(ours.event_level)
    settings.posting.reporting_component = "finetune-operator"
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    # Watch only our Jobs and pods, filtered by the API server, not all of the cluster's.
    settings.watching.label_selectors[JOBS] = naming.JOB_LABEL
    settings.watching.label_selectors[PODS] = naming.JOB_LABEL
    # No runtime scanning of CRDs and namespaces: the resources we serve are known at startup
    # (the chart installs the CRDs before the operator) and the namespaces are either all or a
    # fixed list, so kopf needs no list/watch on customresourcedefinitions or namespaces, which
    # the chart does not grant (a namespaced install has no cluster-scoped permission at all).
    # https://kopf.readthedocs.io/en/stable/configuration/#resource-scanning
    settings.scanning.disabled = True
    if ours.peering:
        settings.peering.name = ours.peering
        settings.peering.mandatory = True
        settings.peering.standalone = False
        settings.peering.priority = ours.peering_priority
    else:
        settings.peering.standalone = True
    if ours.log_level != "DEBUG":
        logging.getLogger("kopf.objects").addFilter(RoutineSuccesses())
    metrics.serve(ours.metrics_port)
    # No cap on the progress connections: at most one long poll per running job is open
    # (poller.Poller), and aiohttp's default cap of 100 would queue the rest behind them.
    raise_open_files_limit()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    memo.runtime = Runtime(settings=ours, api=KubeClient(), session=session)
    memo.trimming = asyncio.create_task(memory.return_free_memory_forever())
    memo.polling = asyncio.create_task(_poll_forever(memo.runtime, kwargs, settings))


def _poll_forever(
    rt: Runtime, indices: dict[str, Any], settings: kopf.OperatorSettings
) -> Coroutine[Any, Any, None]:
    """The progress poller over kopf's live indices; with peering it asks before each round
    whether this replica is the active one."""

    async def poll(key: inventory.Key) -> None:
        entry = next(iter(indices["ftj_index"].get(key) or ()), None)
        if entry is not None:
            logger = kopf.LocalObjectLogger(body=kopf.Body(entry), settings=settings)
            await handlers.poll_job(rt, key, indices, logger, poller.LONG_POLL_SECONDS)

    check = None
    if SETTINGS.peering:
        check = standby.PeeringCheck(
            rt.api, SETTINGS.peering, SETTINGS.watch_namespaces, SETTINGS.peering_priority
        ).standby
    every = poller.Poller(poll, SETTINGS.progress_poll_seconds)
    return every.forever(lambda: indices["ftj_index"], check)


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: a connection per running job's
    long poll must not meet a soft limit of 1,024 that the container's hard limit allows past."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Close the HTTP clients."""
    for name in ("trimming", "polling"):
        task = getattr(memo, name, None)
        if isinstance(task, asyncio.Task):
            task.cancel()
    rt = getattr(memo, "runtime", None)
    if isinstance(rt, Runtime):
        await rt.session.close()
        await rt.api.close()


def main() -> None:
    """``python -m finetune_operator``: run kopf with everything taken from the environment."""
    ours = SETTINGS
    kopf.configure(
        verbose=ours.log_level == "DEBUG",
        quiet=ours.log_level in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.JSON,
        log_refkey="object",
    )
    kopf.run(
        clusterwide=not ours.watch_namespaces,
        namespaces=list(ours.watch_namespaces),
        liveness_endpoint=ours.liveness_endpoint,
        standalone=not ours.peering,
        peering_name=ours.peering,
        priority=ours.peering_priority if ours.peering else None,
    )

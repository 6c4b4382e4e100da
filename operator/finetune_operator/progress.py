"""Reading live training progress: the operator polls ``GET /progress`` of the rank-0 pod.

Why polling the pod, and not the trainer pushing to the API server:

* **No credentials in the trainer pod.** A push would need a ServiceAccount token allowed to
  patch FineTuneJob status (or a per-job secret to mint and rotate); with polling the pod runs
  with ``automountServiceAccountToken: false`` and can't touch the cluster at all
  (https://kubernetes.io/docs/tasks/configure-pod-container/configure-service-account/#opt-out-of-api-credential-automounting).
* **The operator sets the rate.** Each running job has at most one GET open, a long poll the
  trainer answers when its progress changes (or with 304 after 30 s: ``poller.py``), started
  at most once per ``FTJ_PROGRESS_POLL_SECONDS``; requests time out after the wait plus
  ``FTJ_PROGRESS_TIMEOUT_SECONDS``. So a job costs about one small GET per step (at most one
  per interval) and a step shows in the status as soon as its write goes out. Writes: at most
  one status PATCH per job per ``FTJ_STATUS_MIN_INTERVAL_SECONDS`` for progress-only changes,
  sent concurrently over a few keep-alive connections (:mod:`finetune_operator.kube`) with only
  what moved. Pushing from 1,000 pods would put the same writes on the API server with no
  central rate limit. ``bench/operator_scale.py`` measures lag, memory and API rate at 1,000
  jobs.
* **Nothing is lost when a GET fails.** The next poll reads the newest numbers; the final summary
  travels in the pod's termination message, which the kubelet stores in the pod status
  (https://kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure/).

Trade-off: the operator must reach pod IPs on port 8080 (a NetworkPolicy must allow it), and
holds one open connection per running job. ``kubectl get ftj`` lags a step by the status rate
limit at most (default 10 s), within the 30 s the architecture asks for; a replica that just
took over from another under peering starts its polls within one poll interval.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from finetune_api import contract

from finetune_operator import metrics, naming


@dataclass(frozen=True)
class ProgressTarget:
    """The pod whose ``/progress`` is read: rank 0's newest running pod."""

    pod_uid: str
    pod_name: str
    url: str


def progress_target(pods: Sequence[Mapping[str, Any]]) -> ProgressTarget | None:
    """The rank-0 trainer pod that is running now, or None (pure).

    Only rank 0 serves progress (``docs/internals.md``). In an Indexed Job rank 0 is the pod
    with completion index 0; a replacement pod after a preemption is newer, so the newest wins.
    """
    candidates: list[Mapping[str, Any]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        index = (meta.get("annotations") or {}).get(naming.COMPLETION_INDEX_ANNOTATION)
        if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        if index not in (None, "0") or not status.get("podIP"):
            continue
        candidates.append(pod)
    if not candidates:
        return None
    pod = max(candidates, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp")))
    ip = str(pod["status"]["podIP"])
    host = f"[{ip}]" if ":" in ip else ip  # IPv6 pod IPs need brackets in a URL
    return ProgressTarget(
        pod_uid=str(pod["metadata"].get("uid") or ""),
        pod_name=str(pod["metadata"].get("name") or ""),
        url=f"http://{host}:{contract.PROGRESS_PORT}{contract.PROGRESS_PATH}",
    )


@dataclass(frozen=True)
class ProgressAnswer:
    """What one GET of ``/progress`` told: the document and its ETag (``data`` None: unchanged
    since the ETag that was sent, HTTP 304)."""

    data: dict[str, Any] | None
    etag: str | None


async def fetch_progress(
    session: aiohttp.ClientSession,
    target: ProgressTarget,
    timeout: float,
    etag: str | None = None,
    wait: float = 0.0,
) -> ProgressAnswer | None:
    """GET the trainer's progress JSON; None when it can't be read right now.

    With ``etag`` (the one of the document already held) and ``wait`` > 0 this is a long poll:
    the trainer answers when its progress changes, or with 304 after ``wait`` seconds
    (``contract.PROGRESS_MAX_WAIT``); ``timeout`` then counts from the end of the wait. An older
    trainer ignores the headers and answers at once. Failures are expected (the server starts
    after the pod is Running; the pod may be ending) and are not errors: the next poll tries
    again.
    """
    headers = {}
    if etag and wait > 0:
        headers = {"If-None-Match": etag, "Prefer": f"wait={wait:g}"}
    outcome = "error"
    try:
        async with session.get(
            target.url, headers=headers, timeout=aiohttp.ClientTimeout(total=wait + timeout)
        ) as response:
            if response.status == 304:
                outcome = "unchanged"
                return ProgressAnswer(None, response.headers.get("ETag") or etag)
            if response.status != 200:
                return None
            data = json.loads(await response.text())
            tag = response.headers.get("ETag")
            if isinstance(data, dict):
                outcome = "changed"
                return ProgressAnswer(data, tag)
            return None
    except asyncio.TimeoutError:
        outcome = "timeout"
        return None
    except (aiohttp.ClientError, ValueError, UnicodeDecodeError):
        return None
    finally:
        metrics.record_progress_poll(outcome)

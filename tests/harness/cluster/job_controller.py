"""Plays the ``batch/v1`` Job controller for the Jobs in the gateway's store.

Why: the operator reads a Job's status and conditions to decide a FineTuneJob's phase and
reason, so the controller's decisions are reproduced with upstream's reasons
(https://kubernetes.io/docs/concepts/workloads/controllers/job/): ``parallelism`` and
``completions`` (``Indexed`` too), ``backoffLimit`` (with a short, configurable backoff),
``backoffLimitPerIndex`` and ``maxFailedIndexes`` (``status.failedIndexes``, reason
``MaxFailedIndexesExceeded``),
``podFailurePolicy`` (``FailJob``, ``Ignore``, ``Count`` on exit codes and pod conditions),
``activeDeadlineSeconds`` and ``suspend`` (pods stopped; condition ``Suspended``), and the
status fields ``active/ready/succeeded/failed``, ``startTime``, ``completionTime`` and the
``Complete`` / ``Failed`` (+ ``FailureTarget``/``SuccessCriteriaMet``) conditions. Pods a
controller stops (suspend, deadline, a finished Job) are not failures; an active pod deleted
from under the Job is (job tracking). Pods are made from the template
(:mod:`~tests.harness.cluster.pod_template`) and run by the
:class:`~tests.harness.cluster.kubelet.Kubelet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from tests.harness.cluster.conditions import has_condition, parse_time, set_job_condition
from tests.harness.cluster.kubelet import Kubelet
from tests.harness.cluster.pod_template import pod_from_template
from tests.harness.kube_api import ApiError, ObjectStore, now_iso

log = logging.getLogger("ftj.simulator")

JOBS = ObjectStore.resource("batch", "v1", "jobs")
PODS = ObjectStore.resource("", "v1", "pods")


class JobController:
    """Reconciles Jobs marked dirty (by events or pod ends), and all of them every
    ``sweep_seconds`` (0.5 s: deadlines and backoff expiry; a bench of a thousand Jobs with
    neither raises it, since each sweep reconciles every Job).

    ``kubelet`` is attached before :meth:`run` (the two know each other: the controller gives
    it pods to run, it reports their failures and ends back).
    """

    def __init__(self, store: ObjectStore, backoff_seconds: float) -> None:
        self.store = store
        self.backoff_seconds = backoff_seconds
        self.sweep_seconds = 0.5
        self.kubelet: Kubelet  # set by the simulator
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._failures: dict[str, list[float]] = {}  # job uid -> loop times of pod failures
        self._lost: dict[str, int] = {}  # job uid -> active pods deleted from under it

    def reset_wake(self) -> None:
        """A fresh wake-up event (on the loop that will run :meth:`run`)."""
        self._wake = asyncio.Event()

    def mark(self, namespace: str, name: str) -> None:
        """Reconcile the Job ``namespace/name`` soon."""
        self._dirty.add((namespace, name))
        self._wake.set()

    # -- what the kubelet reports (PodOwner) --------------------------------------------------

    def pod_failed(self, job_uid: str, lost: bool) -> None:
        """Record a failure for the backoff delay; a pod deleted while active also counts
        against ``backoffLimit``."""
        self._failures.setdefault(job_uid, []).append(asyncio.get_running_loop().time())
        if lost:
            self._lost[job_uid] = self._lost.get(job_uid, 0) + 1

    def pod_finished(self, namespace: str, job_name: str) -> None:
        """A pod ended: reconcile its Job."""
        self.mark(namespace, job_name)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile dirty Jobs; every ``sweep_seconds`` look at all (deadlines, backoff)."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + self.sweep_seconds
                self._dirty.update(self.store.keys(JOBS))
            dirty, self._dirty = self._dirty, set()
            for namespace, name in sorted(dirty):
                try:
                    await self._reconcile(namespace, name)
                except ApiError as err:  # raced with a delete: next event fixes it
                    log.debug("reconcile %s/%s: %s", namespace, name, err.message)
                except Exception:
                    log.exception("reconcile %s/%s failed", namespace, name)

    # -- one Job ---------------------------------------------------------------------------------

    async def _reconcile(self, namespace: str, name: str) -> None:
        job = self.store.find(JOBS, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        uid, spec = job["metadata"]["uid"], job.get("spec", {})
        status: dict[str, Any] = dict(job.get("status") or {})
        conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions", [])]
        pods = self.store.owned_by(PODS, namespace, uid)
        active = [
            p for p in pods if p.get("status", {}).get("phase") in (None, "Pending", "Running")
        ]
        succeeded = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]
        failed_pods = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]

        if has_condition(conditions, "Complete") or has_condition(conditions, "Failed"):
            self.kubelet.stop_pods(active)
            return

        # Pod failure policy, then the backoff limit.
        counted, fail_job = 0, None
        per_index: dict[int, int] = {}
        failed_pods = [
            p
            for p in failed_pods
            if not getattr(
                self.kubelet.pods.get((namespace, p["metadata"]["name"])),
                "stopping_by_controller",
                False,
            )
        ]
        for pod in sorted(failed_pods, key=lambda p: p["metadata"]["creationTimestamp"]):
            action, index = _failure_policy_action(spec.get("podFailurePolicy"), pod)
            if action == "FailJob" and fail_job is None:
                terminated = _terminated(pod) or {}
                fail_job = (
                    f"Container {terminated.get('name', 'main')} for pod "
                    f"{namespace}/{pod['metadata']['name']} failed with exit code "
                    f"{terminated.get('exitCode')} matching FailJob rule at index "
                    f"{index}"
                )
            if action not in ("Ignore",):
                counted += 1
                per_index[_index(pod)] = per_index.get(_index(pod), 0) + 1
        counted += self._lost.get(uid, 0)
        status["failed"] = counted
        status["succeeded"] = len(succeeded)
        backoff_limit = int(spec.get("backoffLimit", 6))
        failed_indexes: list[int] = []
        if spec.get("backoffLimitPerIndex") is not None:
            limit = int(spec["backoffLimitPerIndex"])
            failed_indexes = sorted(i for i, n in per_index.items() if n > limit)
            status["failedIndexes"] = ",".join(str(i) for i in failed_indexes)
        max_failed = spec.get("maxFailedIndexes")

        # Suspension.
        if spec.get("suspend"):
            self.kubelet.stop_pods(active)
            if not has_condition(conditions, "Suspended"):
                set_job_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended")
            status.pop("startTime", None)
            status.update(active=0, ready=0)
            status["conditions"] = conditions
            self._write_status(namespace, name, status)
            return
        if has_condition(conditions, "Suspended"):
            set_job_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed")
            status["startTime"] = now_iso()
        status.setdefault("startTime", now_iso())

        deadline = spec.get("activeDeadlineSeconds")
        elapsed = (
            datetime.datetime.now(datetime.timezone.utc) - parse_time(status["startTime"])
        ).total_seconds()
        finish: tuple[str, str, str] | None = None
        if fail_job is not None:
            finish = ("Failed", "PodFailurePolicy", fail_job)
        elif max_failed is not None and len(failed_indexes) > int(max_failed):
            finish = (
                "Failed",
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            )
        elif counted > backoff_limit:
            finish = (
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        elif deadline is not None and elapsed > float(deadline):
            finish = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif len(succeeded) >= int(spec.get("completions") or 1):
            finish = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        if finish is not None:
            kind, reason, message = finish
            self.kubelet.stop_pods(active)
            target = "FailureTarget" if kind == "Failed" else "SuccessCriteriaMet"
            set_job_condition(conditions, target, "True", reason, message)
            set_job_condition(conditions, kind, "True", reason, message)
            if kind == "Complete":
                status["completionTime"] = now_iso()
            status.update(active=0, ready=0, conditions=conditions)
            self._write_status(namespace, name, status)
            return

        # Start pods for what is missing, after the backoff delay following failures.
        parallelism = int(spec.get("parallelism", 1))
        completions = int(spec.get("completions") or 1)
        indexed = spec.get("completionMode") == "Indexed"
        wanted = min(parallelism, completions - len(succeeded)) - len(active)
        if wanted > 0 and self._backoff_over(uid, counted):
            busy = {_index(p) for p in active + succeeded} | set(failed_indexes)
            free = [i for i in range(completions) if i not in busy]
            for i in range(wanted):
                index = free[i] if indexed and i < len(free) else i
                self.kubelet.start_pod(pod_from_template(job, index), job)
        active_now = [
            p
            for p in self.store.owned_by(PODS, namespace, uid)
            if p.get("status", {}).get("phase") in (None, "Pending", "Running")
        ]
        status["active"] = len(active_now)
        status["ready"] = sum(
            1 for p in active_now if p.get("status", {}).get("phase") == "Running"
        )
        status["conditions"] = conditions
        if not conditions:
            status.pop("conditions")
        self._write_status(namespace, name, status)

    def _backoff_over(self, uid: str, failures: int) -> bool:
        times = self._failures.get(uid)
        if not failures or not times:
            return True
        delay = self.backoff_seconds * min(2 ** (failures - 1), 8)
        return bool(asyncio.get_running_loop().time() >= times[-1] + delay)

    def _write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        current = self.store.find(JOBS, namespace, name)
        if current is not None and current.get("status") != status:
            self.store.update_status(JOBS, namespace, name, status)


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = status.get("state", {}).get("terminated")
        if terminated:
            return {**terminated, "name": status.get("name")}
    return None


def _failure_policy_action(
    policy: Mapping[str, Any] | None, pod: Mapping[str, Any]
) -> tuple[str, int]:
    """The first matching rule's action and index; ``Count`` when none matches."""
    terminated = _terminated(pod)
    conditions = pod.get("status", {}).get("conditions") or []
    for index, rule in enumerate((policy or {}).get("rules") or []):
        on_codes = rule.get("onExitCodes")
        if on_codes and terminated is not None:
            name = on_codes.get("containerName")
            if name and name != terminated.get("name"):
                continue
            code, values = terminated.get("exitCode"), set(on_codes.get("values") or [])
            inside = code in values
            if (on_codes.get("operator") == "In" and inside) or (
                on_codes.get("operator") == "NotIn" and not inside and code != 0
            ):
                return str(rule["action"]), index
        for pattern in rule.get("onPodConditions") or []:
            if any(
                c["type"] == pattern["type"] and c["status"] == pattern.get("status", "True")
                for c in conditions
            ):
                return str(rule["action"]), index
    return "Count", -1


def _index(pod: Mapping[str, Any]) -> int:
    value = (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-completion-index")
    return int(value) if value is not None else -1

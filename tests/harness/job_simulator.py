"""Plays the Job controller, the scheduler and the kubelet for Jobs in the gateway's store.

Why: e2e tests must run the trainer pod exactly as the operator renders it (command, args,
environment, ConfigMap volume, Secret references) without a container runtime. Each pod of a
Job becomes a local process:

* its own loopback address ``127.0.x.y`` (``status.podIP``; ``FTJ_PROGRESS_HOST``), so the
  operator polls ``http://<podIP>:<port>/progress`` as it would in a cluster and many pods can
  use the same port;
* volumes materialized in a per-pod temp dir (ConfigMap/Secret files, emptyDir, one shared dir
  per PVC claim) and every mount path in the environment and arguments rewritten to it
  (``FTJ_MANIFEST=/etc/finetune/job.json`` becomes ``<tmp>/volumes/config/job.json``);
  ``/tmp`` and the termination message path are private to the pod as well;
* env resolved like the kubelet: plain values, ``secretKeyRef``/``configMapKeyRef`` (a missing
  Secret keeps the pod in ``CreateContainerConfigError``), ``fieldRef``, ``envFrom`` and
  ``$(VAR)`` expansion;
* cluster DNS for pods with ``hostname`` + ``subdomain`` (an Indexed Job's pods get
  ``hostname: <job>-<index>``): from the pod's creation until it ends, while a headless Service
  named like its subdomain selects it, ``<hostname>.<subdomain>`` (also ``.<ns>``, ``.<ns>.svc``,
  ``.<ns>.svc.cluster.local``) in any pod's argv and env is rewritten to its ``127.0.x.y``.
  Processes can't be given a resolver, so the names are resolved where the kubelet hands them
  over; ``<name>:<port>`` also gets a free host port in place of ``<port>`` (the same for every
  pod naming it), because these pods share one network namespace and torch's c10d TCPStore
  listens on ``*:<port>`` whatever address it is given: a leftover listener on 29500 from
  another test would otherwise take pod 0's rendezvous port, which in a cluster is its own;
* pod status moves Pending → Running → Succeeded/Failed with containerStatuses, exit code and
  the termination message (``FallbackToLogsOnError`` honoured); stdout/stderr are kept and
  served by the gateway's ``pods/log`` (``follow=true`` streams).

As the Job controller it honours ``parallelism``/``completions`` (``Indexed`` too),
``backoffLimit`` (with a short, configurable backoff), ``podFailurePolicy`` (``FailJob``,
``Ignore``, ``Count`` on exit codes and pod conditions), ``activeDeadlineSeconds`` and
``suspend`` (SIGTERM, then SIGKILL after the grace period; condition ``Suspended``), and sets
``active/ready/succeeded/failed``, ``startTime``, ``completionTime`` and the ``Complete`` /
``Failed`` (+ ``FailureTarget``/``SuccessCriteriaMet``) conditions with upstream's reasons.

Faults for tests: :meth:`JobSimulator.kill_pod`, :meth:`evict_pod` (``DisruptionTarget``),
:meth:`make_unschedulable`, :meth:`image_pull_backoff` and :meth:`clear_faults`.

With a :class:`~tests.harness.container_runtime.ContainerRuntime` (the image tier) each
container runs from the image its spec names, as that image's user, on its read-only root,
with its volumes at their real paths; and a ``apps/v1`` Deployment gets its pods too (one per
replica, started once), so the chart's operator Deployment runs from its image.

Not simulated: init containers, sidecars, more than the first container per pod, resource
limits, node selection (everything lands on node ``sim-node``), graceful pod deletion
(the pod object goes at once; its process gets SIGTERM then SIGKILL), Deployment rollouts
and container restarts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from tests.harness.container_runtime import (
    SERVICE_ACCOUNT_DIR,
    ContainerConfigError,
    ContainerRuntime,
    ImageNotPresent,
    Mount,
)
from tests.harness.kube_gateway import (
    ApiError,
    KubeGateway,
    ObjectStore,
    ResourceType,
    WatchEvent,
    now_iso,
)

log = logging.getLogger("ftj.simulator")

JOBS = ObjectStore.resource("batch", "v1", "jobs")
PODS = ObjectStore.resource("", "v1", "pods")
SECRETS = ObjectStore.resource("", "v1", "secrets")
SERVICES = ObjectStore.resource("", "v1", "services")
CONFIGMAPS = ObjectStore.resource("", "v1", "configmaps")
DEPLOYMENTS = ObjectStore.resource("apps", "v1", "deployments")
NODE_NAME = "sim-node"
TERMINATION_MESSAGE_LIMIT = 4096
# What stands for the container image on this host: the checkout (the trainer's code and the
# fake trainer) and the Python installation. A pod's paths under these are never mapped onto
# its volumes, even where the checkout itself lives under a mount path such as /tmp.
IMAGE_ROOTS = tuple(
    sorted(
        {
            str(Path(__file__).resolve().parents[2]),
            str(Path(sys.prefix).resolve()),
            str(Path(sys.base_prefix).resolve()),
        }
    )
)
# Host variables a pod inherits: enough to find this Python and its packages, nothing secret.
INHERITED_ENV = (
    "PATH",
    "PYTHONPATH",
    "LANG",
    "LC_ALL",
    "VIRTUAL_ENV",
    "PYENV_VERSION",
    "LD_LIBRARY_PATH",
    "SSL_CERT_FILE",
    "TZ",
)


@dataclasses.dataclass
class SimulatedPod:
    """Runtime state of one pod's container process."""

    namespace: str
    name: str
    job_uid: str
    ip: str
    root: Path
    log: bytearray = dataclasses.field(default_factory=bytearray)
    changed: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)
    process: asyncio.subprocess.Process | None = None
    finished: bool = False
    deleted: bool = False
    stopping_by_controller: bool = False  # suspend/deadline/job finished: not a pod failure
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass
class Fault:
    """A scheduling/image problem injected for one Job's future and waiting pods."""

    kind: str  # "Unschedulable" or "ImagePullBackOff"
    message: str


class JobSimulator:
    """Job controller + scheduler + kubelet over a :class:`KubeGateway` store.

    Args:
        gateway: the started gateway (the simulator runs on its event loop).
        workdir: where pod dirs and PVC dirs go.
        extra_env: variables added to every pod (e.g. fake-trainer knobs, HF offline flags).
        backoff_seconds: first retry delay after a pod failure (doubles, capped at 8x);
            Kubernetes uses 10 s, tests want fast.
        grace_seconds: SIGTERM → SIGKILL delay when stopping pods (the pod's
            ``terminationGracePeriodSeconds`` wins when smaller).
        runtime: run each container from the image its spec names (the image tier, see
            :mod:`tests.harness.container_runtime`) instead of as a process of this checkout;
            ``extra_env`` and the host's environment then reach no pod.
    """

    def __init__(
        self,
        gateway: KubeGateway,
        workdir: Path,
        extra_env: Mapping[str, str] | None = None,
        backoff_seconds: float = 0.5,
        grace_seconds: float = 10.0,
        runtime: ContainerRuntime | None = None,
    ) -> None:
        self.gateway, self.store = gateway, gateway.store
        self.runtime = runtime
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.backoff_seconds = backoff_seconds
        self.grace_seconds = grace_seconds
        self.pods: dict[tuple[str, str], SimulatedPod] = {}
        self.faults: dict[tuple[str, str], Fault] = {}  # (namespace, job name) -> fault
        self.env_overrides: list[tuple[str, str | None, dict[str, str]]] = []
        self._ips = (f"127.0.{i // 250 + 1}.{i % 250 + 2}" for i in itertools.count())
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failures: dict[str, list[float]] = {}  # job uid -> loop times of pod failures
        self._lost: dict[str, int] = {}  # job uid -> active pods deleted from under it
        self._unsubscribe: Any = None
        self._main: asyncio.Task[Any] | None = None
        # Cluster DNS: (namespace, hostname, subdomain) -> (pod IP, pod labels) of running pods,
        # and the host port standing in for each (pod IP, port) named through it.
        self._dns: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {}
        self._host_ports: dict[tuple[str, int], int] = {}

    # -- lifecycle (call from any thread) ------------------------------------------------------

    def start(self) -> JobSimulator:
        """Subscribe to the store and start the controller loop on the gateway's loop."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gateway.call(self._start)
        return self

    def stop(self) -> None:
        """Kill every pod process (SIGKILL) and stop the loop."""
        try:
            self.gateway.call_async(self._stop(), timeout=30)
        except Exception:  # the loop may already be gone
            log.exception("stopping the simulator failed")

    def _start(self) -> None:
        self._wake = asyncio.Event()
        self._unsubscribe = self.store.subscribe(self._on_event)
        self.gateway.log_source = self._logs
        self.gateway.evictor = self._evict
        self._main = asyncio.get_running_loop().create_task(self._run())
        for job in self.store.list(JOBS):
            self._mark(job)

    async def _stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._main is not None:
            self._main.cancel()
        for pod in list(self.pods.values()):
            pod.stopping_by_controller = True
            self._signal(pod, signal.SIGKILL)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    # -- test hooks (thread-safe) --------------------------------------------------------------

    def kill_pod(self, name: str, sig: int = signal.SIGKILL, namespace: str = "default") -> None:
        """Send ``sig`` to the pod's process group (a crash: counts against backoffLimit)."""

        def kill() -> None:
            pod = self.pods.get((namespace, name))
            if pod is None or pod.process is None:
                raise KeyError(f"pod {namespace}/{name} has no running process")
            self._signal(pod, sig)

        self.gateway.call(kill)

    def evict_pod(self, name: str, namespace: str = "default") -> None:
        """Evict like the Eviction API: ``DisruptionTarget`` condition, SIGTERM, SIGKILL."""
        self.gateway.call_async(self._evict(namespace, name))

    def make_unschedulable(
        self,
        job: str,
        namespace: str = "default",
        message: str = "0/1 nodes are available: 1 Insufficient "
        "nvidia.com/gpu. preemption: 0/1 nodes are "
        "available: 1 No preemption victims found for "
        "incoming pod.",
    ) -> None:
        """Pods of ``job`` not yet started stay Pending with ``PodScheduled=False``."""
        self.gateway.call(self._set_fault, namespace, job, Fault("Unschedulable", message))

    def image_pull_backoff(
        self, job: str, namespace: str = "default", message: str | None = None
    ) -> None:
        """Pods of ``job`` not yet started stay Pending, waiting with ``ImagePullBackOff``."""
        text = message or 'Back-off pulling image "trainer": ErrImagePull: not found'
        self.gateway.call(self._set_fault, namespace, job, Fault("ImagePullBackOff", text))

    def clear_faults(self, job: str, namespace: str = "default") -> None:
        """Let waiting pods of ``job`` start."""

        def clear() -> None:
            self.faults.pop((namespace, job), None)
            for pod in self.pods.values():
                pod.release.set()

        self.gateway.call(clear)

    def set_pod_env(self, namespace: str, env: Mapping[str, str], job: str | None = None) -> None:
        """Add ``env`` to future pods in ``namespace``; with ``job``, only to pods whose Job
        name starts with it or that carry it as a label value (e.g. the FineTuneJob's name).

        The per-job channel for fake-trainer knobs when an operator renders the pod: the
        operator's job.json carries no annotations, so tests steer the trainer through here.
        """
        self.gateway.call(self.env_overrides.append, (namespace, job, dict(env)))

    def pod_log(self, name: str, namespace: str = "default") -> str:
        """Everything the pod's process wrote so far."""
        return self.gateway.call(
            lambda: bytes(self.pods[(namespace, name)].log).decode(errors="replace")
        )

    def running_pods(self, namespace: str | None = None) -> list[str]:
        """Names of pods whose process is alive."""
        return self.gateway.call(
            lambda: [
                p.name
                for p in self.pods.values()
                if p.process is not None
                and p.process.returncode is None
                and (namespace is None or p.namespace == namespace)
            ]
        )

    def _set_fault(self, namespace: str, job: str, fault: Fault) -> None:
        self.faults[(namespace, job)] = fault

    # -- events --------------------------------------------------------------------------------

    def _on_event(self, event: WatchEvent) -> None:
        obj, meta = event.object, event.object["metadata"]
        if event.resource == JOBS:
            self._mark(obj)
        elif event.resource == DEPLOYMENTS and event.type == "ADDED":
            # The Deployment controller, as far as the image tier needs it: one pod per
            # replica, started once (no rollouts, no restarts).
            for index in range(int(obj.get("spec", {}).get("replicas", 1))):
                self._create_pod(obj, index, owner=("apps/v1", "Deployment"))
        elif event.resource == PODS:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Job":
                    self._dirty.add((meta["namespace"], ref["name"]))
                    self._wake.set()
            pod = self.pods.get((meta.get("namespace", ""), meta["name"]))
            if event.type == "DELETED" and pod is not None and pod.process is not None:
                pod.deleted = True
                if not pod.finished:
                    self._spawn(self._terminate(pod))

    def _mark(self, job: Mapping[str, Any]) -> None:
        self._dirty.add((job["metadata"]["namespace"], job["metadata"]["name"]))
        self._wake.set()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self) -> None:
        """Reconcile dirty Jobs; every 0.5 s look at all (deadlines, backoff expiry)."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + 0.5
                for job in self.store.list(JOBS):
                    self._dirty.add((job["metadata"]["namespace"], job["metadata"]["name"]))
            dirty, self._dirty = self._dirty, set()
            for namespace, name in sorted(dirty):
                try:
                    await self._reconcile(namespace, name)
                except ApiError as err:  # raced with a delete: next event fixes it
                    log.debug("reconcile %s/%s: %s", namespace, name, err.message)
                except Exception:
                    log.exception("reconcile %s/%s failed", namespace, name)

    # -- the Job controller --------------------------------------------------------------------

    async def _reconcile(self, namespace: str, name: str) -> None:
        job = self.store.find(JOBS, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        uid, spec = job["metadata"]["uid"], job.get("spec", {})
        status: dict[str, Any] = dict(job.get("status") or {})
        conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions", [])]
        pods = [
            p
            for p in self.store.list(PODS, namespace)
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]
        active = [
            p for p in pods if p.get("status", {}).get("phase") in (None, "Pending", "Running")
        ]
        succeeded = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]
        failed_pods = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]

        if _has_condition(conditions, "Complete") or _has_condition(conditions, "Failed"):
            self._stop_pods(active)
            return

        # Pod failure policy, then the backoff limit.
        counted, fail_job = 0, None
        failed_pods = [
            p
            for p in failed_pods
            if not getattr(
                self.pods.get((namespace, p["metadata"]["name"])), "stopping_by_controller", False
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
        counted += self._lost.get(uid, 0)
        status["failed"] = counted
        status["succeeded"] = len(succeeded)
        backoff_limit = int(spec.get("backoffLimit", 6))

        # Suspension.
        if spec.get("suspend"):
            self._stop_pods(active)
            if not _has_condition(conditions, "Suspended"):
                _set_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended")
            status.pop("startTime", None)
            status.update(active=0, ready=0)
            status["conditions"] = conditions
            self._write_status(namespace, name, status)
            return
        if _has_condition(conditions, "Suspended"):
            _set_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed")
            status["startTime"] = now_iso()
        status.setdefault("startTime", now_iso())

        deadline = spec.get("activeDeadlineSeconds")
        elapsed = (
            datetime.datetime.now(datetime.timezone.utc) - _parse_time(status["startTime"])
        ).total_seconds()
        finish: tuple[str, str, str] | None = None
        if fail_job is not None:
            finish = ("Failed", "PodFailurePolicy", fail_job)
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
            self._stop_pods(active)
            target = "FailureTarget" if kind == "Failed" else "SuccessCriteriaMet"
            _set_condition(conditions, target, "True", reason, message)
            _set_condition(conditions, kind, "True", reason, message)
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
            busy = {_index(p) for p in active + succeeded}
            free = [i for i in range(completions) if i not in busy]
            for i in range(wanted):
                self._create_pod(job, free[i] if indexed and i < len(free) else i)
        active_now = [
            p
            for p in self.store.list(PODS, namespace)
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
            and p.get("status", {}).get("phase") in (None, "Pending", "Running")
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
        return asyncio.get_running_loop().time() >= times[-1] + delay

    def _write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        current = self.store.find(JOBS, namespace, name)
        if current is not None and current.get("status") != status:
            self.store.update_status(JOBS, namespace, name, status)

    def _stop_pods(self, pods: list[dict[str, Any]]) -> None:
        for obj in pods:
            pod = self.pods.get((obj["metadata"]["namespace"], obj["metadata"]["name"]))
            if pod is not None and not pod.finished and not pod.stopping_by_controller:
                pod.stopping_by_controller = True
                self._spawn(self._terminate(pod))
            elif pod is None or pod.process is None:
                # Never started (unschedulable, pulling): just delete it.
                with contextlib.suppress(ApiError):
                    self.store.delete(PODS, obj["metadata"]["namespace"], obj["metadata"]["name"])

    def _create_pod(
        self, job: Mapping[str, Any], index: int, owner: tuple[str, str] = ("batch/v1", "Job")
    ) -> None:
        meta, spec = job["metadata"], job["spec"]
        template = spec.get("template", {})
        labels = dict(template.get("metadata", {}).get("labels") or {})
        annotations = dict(template.get("metadata", {}).get("annotations") or {})
        if owner[1] == "Job":
            labels.setdefault("job-name", meta["name"])
            labels.setdefault("batch.kubernetes.io/job-name", meta["name"])
        if spec.get("completionMode") == "Indexed":
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        pod_spec = dict(template.get("spec") or {})
        if spec.get("completionMode") == "Indexed":
            pod_spec["containers"] = [
                {
                    **c,
                    "env": [
                        *(c.get("env") or []),
                        {"name": "JOB_COMPLETION_INDEX", "value": str(index)},
                    ],
                }
                for c in pod_spec.get("containers", [])
            ]
            if pod_spec.get("subdomain"):
                pod_spec.setdefault("hostname", f"{meta['name']}-{index}")
        body = {
            "metadata": {
                "name": f"{meta['name']}-{uuid.uuid4().hex[:5]}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": owner[0],
                        "kind": owner[1],
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": pod_spec,
        }
        created = self.store.create(PODS, meta["namespace"], body)
        root = Path(tempfile.mkdtemp(prefix=f"{created['metadata']['name']}-", dir=self.workdir))
        pod = SimulatedPod(
            meta["namespace"], created["metadata"]["name"], meta["uid"], next(self._ips), root
        )
        self.pods[(pod.namespace, pod.name)] = pod
        if pod_spec.get("hostname") and pod_spec.get("subdomain"):
            # Registered before any pod of the Job starts: a replacement pod takes the name over.
            key = (pod.namespace, pod_spec["hostname"], pod_spec["subdomain"])
            self._dns[key] = (pod.ip, labels)
        self._spawn(self._run_pod(pod, meta["name"]))

    # -- the kubelet ---------------------------------------------------------------------------

    async def _run_pod(self, pod: SimulatedPod, job_name: str) -> None:
        try:
            await self._wait_schedulable(pod, job_name)
            if pod.deleted:
                return
            obj = self.store.get(PODS, pod.namespace, pod.name)
            self._set_pod(
                pod,
                lambda o: (
                    o["spec"].__setitem__("nodeName", NODE_NAME),
                    o["status"].update(
                        phase="Pending",
                        hostIP="127.0.0.1",
                        podIP=pod.ip,
                        podIPs=[{"ip": pod.ip}],
                        startTime=now_iso(),
                        conditions=[_cond("PodScheduled", "True")],
                    ),
                ),
            )
            container = obj["spec"]["containers"][0]
            argv, env, cwd, term_path = await self._prepare(pod, obj, container)
            if pod.deleted:
                return
            pod.process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            started = now_iso()
            self._set_pod(
                pod,
                lambda o: o["status"].update(
                    phase="Running",
                    conditions=[
                        _cond("PodScheduled", "True"),
                        _cond("Initialized", "True"),
                        _cond("ContainersReady", "True"),
                        _cond("Ready", "True"),
                    ],
                    containerStatuses=[
                        {
                            "name": container["name"],
                            "image": container.get("image", ""),
                            "imageID": "",
                            "containerID": f"sim://{pod.process.pid}",  # type: ignore
                            "ready": True,
                            "started": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": started}},
                        }
                    ],
                ),
            )
            await self._pump_output(pod)
            code = await pod.process.wait()
            exit_code = 128 - code if code < 0 else code  # -9 → 137, as container runtimes do
            message = _read_termination_message(term_path)
            if (
                not message
                and exit_code != 0
                and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            ):
                message = "\n".join(bytes(pod.log).decode(errors="replace").splitlines()[-80:])[
                    -2048:
                ]
            pod.finished = True
            if pod.stopping_by_controller:
                # Suspend, deadline or a finished Job: the controller deletes such pods and
                # does not count them as failures.
                pod.deleted = True
                with contextlib.suppress(ApiError):
                    self.store.delete(PODS, pod.namespace, pod.name)
                return
            if exit_code != 0:
                self._failures.setdefault(pod.job_uid, []).append(asyncio.get_running_loop().time())
            if pod.deleted:
                if not pod.stopping_by_controller and exit_code != 0:
                    # An active pod deleted under the Job counts as failed (job tracking).
                    self._lost[pod.job_uid] = self._lost.get(pod.job_uid, 0) + 1
                return
            terminated = {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": started,
                "finishedAt": now_iso(),
                "containerID": f"sim://{pod.process.pid}",
            }
            if code < 0:
                terminated["signal"] = -code
            if message:
                terminated["message"] = message
            phase = "Succeeded" if exit_code == 0 else "Failed"
            self._set_pod(
                pod,
                lambda o: (
                    o["status"].update(
                        phase=phase,
                        containerStatuses=[
                            {
                                **(o["status"].get("containerStatuses") or [{}])[0],
                                "ready": False,
                                "started": False,
                                "state": {"terminated": terminated},
                            }
                        ],
                    ),
                    _replace_condition(o["status"], "Ready", "False", "PodCompleted"),
                    _replace_condition(o["status"], "ContainersReady", "False", "PodCompleted"),
                ),
            )
        except ApiError:
            pod.deleted = True  # the pod object went away while we worked
        except Exception:
            log.exception("simulating pod %s/%s failed", pod.namespace, pod.name)
        finally:
            pod.finished = True
            # A finished pod leaves the Service's endpoints, so its DNS name goes too.
            for key, (ip, _) in list(self._dns.items()):
                if ip == pod.ip:
                    del self._dns[key]
            async with pod.changed:
                pod.changed.notify_all()
            self._dirty.add((pod.namespace, job_name))
            self._wake.set()
            if pod.deleted:
                shutil.rmtree(pod.root, ignore_errors=True)

    async def _wait_schedulable(self, pod: SimulatedPod, job_name: str) -> None:
        while not pod.deleted:
            fault = self.faults.get((pod.namespace, job_name))
            if fault is None:
                return
            if fault.kind == "Unschedulable":
                self._set_pod(
                    pod,
                    lambda o, f=fault: o["status"].update(
                        phase="Pending",
                        conditions=[_cond("PodScheduled", "False", "Unschedulable", f.message)],
                    ),
                )
            else:
                self._set_pod(
                    pod,
                    lambda o, f=fault: o["status"].update(
                        phase="Pending",
                        hostIP="127.0.0.1",
                        conditions=[
                            _cond("PodScheduled", "True"),
                            _cond(
                                "Ready",
                                "False",
                                "ContainersNotReady",
                                "containers with unready status: [trainer]",
                            ),
                        ],
                        containerStatuses=[
                            {
                                "name": o["spec"]["containers"][0]["name"],
                                "image": o["spec"]["containers"][0].get("image", ""),
                                "imageID": "",
                                "ready": False,
                                "started": False,
                                "restartCount": 0,
                                "state": {"waiting": {"reason": f.kind, "message": f.message}},
                            }
                        ],
                    ),
                )
            pod.release.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pod.release.wait(), timeout=1.0)

    async def _prepare(
        self, pod: SimulatedPod, obj: dict[str, Any], container: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, str], str, Path]:
        """Volumes, env, argv and cwd of the container, retried while references are missing."""
        while True:
            try:
                return self._prepare_once(pod, obj, container)
            except _ConfigError as err:
                self._set_pod(
                    pod,
                    lambda o, e=err: o["status"].update(
                        containerStatuses=[
                            {
                                "name": container["name"],
                                "image": container.get("image", ""),
                                "imageID": "",
                                "ready": False,
                                "started": False,
                                "restartCount": 0,
                                "state": {
                                    "waiting": {
                                        "reason": e.reason,
                                        "message": str(e),
                                    }
                                },
                            }
                        ]
                    ),
                )
                await asyncio.sleep(1.0)
                if pod.deleted:
                    raise ApiError(404, "pod deleted") from err

    def _prepare_once(
        self, pod: SimulatedPod, obj: dict[str, Any], container: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, str], str, Path]:
        ns = pod.namespace
        volumes_dir = pod.root / "volumes"
        sources: dict[str, Path] = {}
        for volume in obj["spec"].get("volumes") or []:
            target = volumes_dir / volume["name"]
            if "persistentVolumeClaim" in volume:
                target = self.workdir / "pvc" / ns / volume["persistentVolumeClaim"]["claimName"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume or "secret" in volume:
                self._materialize(ns, volume, target)
            sources[volume["name"]] = target
        if self.runtime is not None:
            return self._prepare_in_image(pod, obj, container, sources)
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            source = sources.get(mount["name"], volumes_dir / mount["name"])
            source.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/") or "/"] = (
                source / mount["subPath"] if mount.get("subPath") else source
            )
        term_path = pod.root / "termination-log"
        term_path.touch()
        tmp = pod.root / "tmp"
        tmp.mkdir(exist_ok=True)
        mounts.setdefault("/tmp", tmp)
        mounts[container.get("terminationMessagePath", "/dev/termination-log")] = term_path

        def rewrite(value: str) -> str:
            if any(value == root or value.startswith(root + "/") for root in IMAGE_ROOTS):
                return value  # the "image" (code, interpreter) is not under a volume
            for mount_path in sorted(mounts, key=len, reverse=True):
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(mounts[mount_path]) + value[len(mount_path) :]
            return value

        # Host settings (PATH of a virtualenv under /tmp, test overrides) are the image's, not
        # the pod's: only what the container spec itself defines is mapped onto volumes.
        host: dict[str, str] = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        host.update(self.extra_env)
        env: dict[str, str] = {"HOME": str(tmp)}
        labels = obj["metadata"].get("labels") or {}
        for namespace, job, extra in self.env_overrides:
            if namespace == ns and (
                job is None or labels.get("job-name", "").startswith(job) or job in labels.values()
            ):
                host.update(extra)
        env["HOSTNAME"] = obj["spec"].get("hostname") or pod.name  # as the kubelet sets it
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._lookup(CONFIGMAPS, ns, source["configMapRef"], None)
            else:
                data = self._lookup(SECRETS, ns, source["secretRef"], None)
            env.update({prefix + k: v for k, v in (data or {}).items()})
        for var in container.get("env") or []:
            value = self._env_value(pod, obj, var, env)
            if value is not None:
                env[var["name"]] = value
        env = {**host, **{k: self._cluster_dns(ns, rewrite(v)) for k, v in env.items()}}
        env["FTJ_PROGRESS_HOST"] = pod.ip
        env.setdefault("FTJ_TERMINATION_LOG", str(term_path))
        if "FTJ_WORKDIR" not in env:
            scratch = pod.root / "scratch"
            scratch.mkdir(exist_ok=True)
            env["FTJ_WORKDIR"] = str(scratch)
        argv = [
            self._cluster_dns(ns, rewrite(_expand(a, env)))
            for a in (container.get("command") or []) + (container.get("args") or [])
        ]
        if not argv:
            raise _ConfigError(
                "the simulator needs an explicit container command (it cannot "
                "read the image's entrypoint)"
            )
        argv = _host_command(argv)
        cwd = rewrite(container.get("workingDir") or "") or str(pod.root)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return argv, env, cwd, term_path

    def _prepare_in_image(
        self,
        pod: SimulatedPod,
        obj: dict[str, Any],
        container: Mapping[str, Any],
        sources: Mapping[str, Path],
    ) -> tuple[list[str], dict[str, str], str, Path]:
        """argv of the container run from its image: volumes at their real paths, the
        environment the kubelet gives it and nothing of the host's (see container_runtime)."""
        assert self.runtime is not None
        ns, spec = pod.namespace, obj["spec"]
        read_only_volumes = {
            v["name"] for v in spec.get("volumes") or [] if "configMap" in v or "secret" in v
        }
        mounts = []
        for mount in container.get("volumeMounts") or []:
            source = Path(sources.get(mount["name"], pod.root / "volumes" / mount["name"]))
            if mount.get("subPath"):
                source = source / mount["subPath"]
            source.mkdir(parents=True, exist_ok=True)
            read_only = bool(mount.get("readOnly")) or mount["name"] in read_only_volumes
            mounts.append(Mount(mount["mountPath"], source, read_only))
        term_path = pod.root / "termination-log"
        term_path.touch()
        mounts.append(
            Mount(container.get("terminationMessagePath", "/dev/termination-log"), term_path)
        )
        env: dict[str, str] = {
            "HOSTNAME": spec.get("hostname") or pod.name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.gateway.tls_port or ""),
        }
        if spec.get("automountServiceAccountToken", True) and self.gateway.ca_file is not None:
            token_dir = self.gateway.service_account_files(ns, pod.root / "serviceaccount")
            mounts.append(Mount(SERVICE_ACCOUNT_DIR, Path(token_dir), read_only=True))
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._lookup(CONFIGMAPS, ns, source["configMapRef"], None)
            else:
                data = self._lookup(SECRETS, ns, source["secretRef"], None)
            env.update({prefix + k: v for k, v in (data or {}).items()})
        for var in container.get("env") or []:
            value = self._env_value(pod, obj, var, env)
            if value is not None:
                env[var["name"]] = value
        env = {k: self._cluster_dns(ns, v) for k, v in env.items()}
        # Emulated network: the pod shares the host's namespace, so it is told its address.
        env["FTJ_PROGRESS_HOST"] = pod.ip
        try:
            argv = self.runtime.command(
                spec,
                container,
                env,
                mounts,
                hostname=env["HOSTNAME"],
                expand=lambda value, e: self._cluster_dns(ns, _expand(value, e)),
            )
        except ImageNotPresent as err:
            image = container.get("image", "")
            raise _ConfigError(
                f'Back-off pulling image "{image}": ErrImagePull: {err}', "ImagePullBackOff"
            ) from err
        except ContainerConfigError as err:
            raise _ConfigError(str(err)) from err
        return argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, str(pod.root), term_path

    def _cluster_dns(self, namespace: str, value: str) -> str:
        """``value`` with the DNS names of running pods (``<hostname>.<subdomain>...``,
        optionally ``:<port>``) resolved to their IPs (and host ports); see the module docstring.

        A name resolves only through a headless Service named like the subdomain that selects
        the pod (https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/
        #pod-s-hostname-and-subdomain-fields); the short forms only within the pod's namespace.
        """
        for (ns, hostname, subdomain), (ip, labels) in self._dns.items():
            service = self.store.find(SERVICES, ns, subdomain)
            spec = (service or {}).get("spec") or {}
            selector = spec.get("selector") or {}
            if spec.get("clusterIP") != "None" or any(
                labels.get(k) != v for k, v in selector.items()
            ):
                continue
            fqdn = rf"\.{re.escape(ns)}(?:\.svc(?:\.cluster\.local)?)?"
            suffix = f"(?:{fqdn})?" if ns == namespace else fqdn
            name = rf"{re.escape(hostname)}\.{re.escape(subdomain)}{suffix}"
            value = re.sub(
                rf"(?<![\w.-]){name}(?::(\d+))?(?![\w.-])",
                lambda m, ip=ip: (
                    f"{ip}:{self._host_port(ip, int(m.group(1)))}" if m.group(1) else ip
                ),
                value,
            )
        return value

    def _host_port(self, ip: str, port: int) -> int:
        """A free host port standing in for ``port`` of the pod at ``ip`` (stable per pair)."""
        if (ip, port) not in self._host_ports:
            with socket.socket() as probe:
                probe.bind(("", 0))  # free on every address, as the pod's own port would be
                self._host_ports[(ip, port)] = int(probe.getsockname()[1])
        return self._host_ports[(ip, port)]

    def _materialize(self, ns: str, volume: Mapping[str, Any], target: Path) -> None:
        if "configMap" in volume:
            ref = volume["configMap"]
            data = self._lookup(CONFIGMAPS, ns, ref, None)
        else:
            ref = {**volume["secret"], "name": volume["secret"].get("secretName")}
            data = self._lookup(SECRETS, ns, ref, None)
        if data is None:
            return
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] in data:
                path = target / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(data[item["key"]])

    def _lookup(self, res: ResourceType, ns: str, ref: Mapping[str, Any], key: str | None) -> Any:
        obj = self.store.find(res, ns, ref.get("name", ""))
        kind = "secret" if res == SECRETS else "configmap"
        if obj is None:
            if ref.get("optional"):
                return None
            raise _ConfigError(f'{kind} "{ref.get("name")}" not found')
        data = dict(obj.get("data") or {})
        if res == SECRETS:
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        if key is None:
            return data
        if key not in data:
            if ref.get("optional"):
                return None
            raise _ConfigError(
                f"couldn't find key {key} in {kind.capitalize()} {ns}/{ref.get('name')}"
            )
        return data[key]

    def _env_value(
        self,
        pod: SimulatedPod,
        obj: Mapping[str, Any],
        var: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> str | None:
        if "value" in var:
            return _expand(str(var["value"]), env)
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            return self._lookup(
                SECRETS,
                pod.namespace,
                source["secretKeyRef"],  # type: ignore
                source["secretKeyRef"]["key"],
            )
        if "configMapKeyRef" in source:
            return self._lookup(
                CONFIGMAPS,
                pod.namespace,  # type: ignore[no-any-return]
                source["configMapKeyRef"],
                source["configMapKeyRef"]["key"],
            )
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            meta = obj["metadata"]
            fields = {
                "metadata.name": pod.name,
                "metadata.namespace": pod.namespace,
                "metadata.uid": meta["uid"],
                "status.podIP": pod.ip,
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": NODE_NAME,
                "spec.serviceAccountName": obj["spec"].get("serviceAccountName", "default"),
            }
            match = re.match(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if match:
                return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
            return fields.get(path, "")
        if "resourceFieldRef" in source:
            return "0"
        return ""

    async def _pump_output(self, pod: SimulatedPod) -> None:
        assert pod.process is not None and pod.process.stdout is not None
        while True:
            chunk = await pod.process.stdout.read(65536)
            if not chunk:
                return
            pod.log.extend(chunk)
            async with pod.changed:
                pod.changed.notify_all()

    def _set_pod(self, pod: SimulatedPod, change: Any) -> None:
        def apply(obj: dict[str, Any]) -> None:
            obj.setdefault("status", {})
            change(obj)

        self.store.mutate(PODS, pod.namespace, pod.name, apply)

    def _signal(self, pod: SimulatedPod, sig: int) -> None:
        if pod.process is not None and pod.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pod.process.pid, sig)

    async def _terminate(self, pod: SimulatedPod) -> None:
        """SIGTERM, then SIGKILL after the grace period (as the kubelet stops a container)."""
        if pod.process is None:
            pod.release.set()
            return
        grace = self.grace_seconds
        with contextlib.suppress(ApiError):
            spec = self.store.get(PODS, pod.namespace, pod.name)["spec"]
            grace = min(grace, float(spec.get("terminationGracePeriodSeconds", 30)))
        self._signal(pod, signal.SIGTERM)
        try:
            await asyncio.wait_for(pod.process.wait(), timeout=grace)
        except asyncio.TimeoutError:
            self._signal(pod, signal.SIGKILL)
        finally:
            if pod.process.returncode is None:
                await pod.process.wait()

    async def _evict(self, namespace: str, name: str) -> None:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise ApiError(404, f'pods "{name}" not found')
        self._set_pod(
            pod,
            lambda o: (
                o["status"]
                .setdefault("conditions", [])
                .append(
                    _cond(
                        "DisruptionTarget",
                        "True",
                        "EvictionByEvictionAPI",
                        "Eviction API: evicting",
                    )
                )
            ),
        )
        await self._terminate(pod)

    async def _logs(
        self, namespace: str, name: str, follow: bool, tail_lines: int | None
    ) -> AsyncIterator[bytes]:
        pod = self.pods.get((namespace, name))
        if pod is None:
            return
        sent = len(pod.log)
        data = bytes(pod.log)
        if tail_lines is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail_lines:] if tail_lines else [])
        yield data
        while follow and not pod.finished:
            async with pod.changed:
                await pod.changed.wait()
            if len(pod.log) > sent:
                yield bytes(pod.log[sent:])
                sent = len(pod.log)
        if follow and len(pod.log) > sent:
            yield bytes(pod.log[sent:])


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


class _ConfigError(Exception):
    """The container can't start yet: a missing reference (CreateContainerConfigError) or,
    in the image tier, an image not in local storage (ImagePullBackOff)."""

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


def _host_command(argv: list[str]) -> list[str]:
    """Run the image's interpreters with this test run's Python (same packages)."""
    head = os.path.basename(argv[0])
    if re.fullmatch(r"python(3(\.\d+)?)?", head):
        return [sys.executable, *argv[1:]]
    if head == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    return argv


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion; ``$$(VAR)`` escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def _read_termination_message(path: Path) -> str:
    try:
        return path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        return ""


def _cond(
    kind: str, status: str, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": now_iso(),
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _replace_condition(status: dict[str, Any], kind: str, value: str, reason: str) -> None:
    conditions = [c for c in status.get("conditions", []) if c["type"] != kind]
    conditions.append(_cond(kind, value, reason))
    status["conditions"] = conditions


def _has_condition(conditions: list[dict[str, Any]], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def _set_condition(
    conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str
) -> None:
    now = now_iso()
    for cond in conditions:
        if cond["type"] == kind:
            if cond["status"] != status:
                cond["lastTransitionTime"] = now
            cond.update(status=status, reason=reason, message=message, lastProbeTime=now)
            return
    conditions.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        }
    )


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


def _parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )

"""Plays the Job controller, the scheduler, the kubelet and cluster DNS for the gateway's store.

Why: e2e tests must run the trainer pod exactly as the operator renders it, and watch it
move as a cluster moves it, without a cluster. :class:`JobSimulator` is what tests start and
steer; the work is done by its parts, each in its own module:

* :class:`~tests.harness.cluster.job_controller.JobController`, the ``batch/v1`` Job
  controller (and :func:`~tests.harness.cluster.pod_template.pod_from_template`, which a
  minimal Deployment controller shares: one pod per replica, started once, no rollouts);
* :class:`~tests.harness.cluster.kubelet.Kubelet`, the scheduler's one node and the kubelet,
  running each pod as a host process (:mod:`~tests.harness.cluster.host_process`) or, with a
  :class:`~tests.harness.container_runtime.ContainerRuntime`, from its image
  (:mod:`~tests.harness.cluster.image_container`, the image tier);
* :class:`~tests.harness.cluster.cluster_dns.ClusterDns`, names of pods behind headless
  Services;
* faults for tests (:mod:`~tests.harness.cluster.faults`): :meth:`JobSimulator.kill_pod`,
  :meth:`~JobSimulator.evict_pod` (``DisruptionTarget``),
  :meth:`~JobSimulator.make_unschedulable`, :meth:`~JobSimulator.image_pull_backoff` and
  :meth:`~JobSimulator.clear_faults`.

Everything runs on the gateway's event loop, fed by the store's change events; the public
methods here are thread-safe (they go through :meth:`KubeGateway.call`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.harness.cluster.cluster_dns import ClusterDns
from tests.harness.cluster.faults import IMAGE_PULL_MESSAGE, UNSCHEDULABLE_MESSAGE, Fault
from tests.harness.cluster.job_controller import JOBS, JobController
from tests.harness.cluster.kubelet import PODS, Kubelet
from tests.harness.cluster.pod_template import pod_from_template
from tests.harness.container_runtime import ContainerRuntime
from tests.harness.kube_api import KubeGateway, ObjectStore, WatchEvent

log = logging.getLogger("ftj.simulator")

DEPLOYMENTS = ObjectStore.resource("apps", "v1", "deployments")


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
        self.workdir = Path(workdir)
        self.dns = ClusterDns(self.store)
        self.controller = JobController(self.store, backoff_seconds)
        self.kubelet = Kubelet(
            gateway,
            self.workdir,
            self.controller,
            self.dns,
            extra_env or {},
            grace_seconds,
            runtime,
        )
        self.controller.kubelet = self.kubelet
        # The kubelet's state, named as tests and the image tier knew it.
        self.pods = self.kubelet.pods
        self.faults = self.kubelet.faults
        self.env_overrides = self.kubelet.env_overrides
        self._unsubscribe: Callable[[], None] | None = None
        self._main: asyncio.Task[Any] | None = None

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
        self.controller.reset_wake()
        self._unsubscribe = self.store.subscribe(self._on_event)
        self.gateway.log_source = self.kubelet.logs
        self.gateway.evictor = self.kubelet.evict
        self._main = asyncio.get_running_loop().create_task(self.controller.run())
        for job in self.store.list(JOBS):
            self.controller.mark(job["metadata"]["namespace"], job["metadata"]["name"])

    async def _stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._main is not None:
            self._main.cancel()
        for pod in list(self.pods.values()):
            pod.stopping_by_controller = True
            self.kubelet.send_signal(pod, signal.SIGKILL)
        for task in list(self.kubelet.tasks):
            task.cancel()
        await asyncio.sleep(0)

    # -- test hooks (thread-safe) --------------------------------------------------------------

    def kill_pod(self, name: str, sig: int = signal.SIGKILL, namespace: str = "default") -> None:
        """Send ``sig`` to the pod's process group (a crash: counts against backoffLimit)."""

        def kill() -> None:
            pod = self.pods.get((namespace, name))
            if pod is None or pod.process is None:
                raise KeyError(f"pod {namespace}/{name} has no running process")
            self.kubelet.send_signal(pod, sig)

        self.gateway.call(kill)

    def evict_pod(self, name: str, namespace: str = "default") -> None:
        """Evict like the Eviction API: ``DisruptionTarget`` condition, SIGTERM, SIGKILL."""
        self.gateway.call_async(self.kubelet.evict(namespace, name))

    def make_unschedulable(
        self,
        job: str,
        namespace: str = "default",
        message: str = UNSCHEDULABLE_MESSAGE,
    ) -> None:
        """Pods of ``job`` not yet started stay Pending with ``PodScheduled=False``."""
        self.gateway.call(self._set_fault, namespace, job, Fault("Unschedulable", message))

    def image_pull_backoff(
        self, job: str, namespace: str = "default", message: str | None = None
    ) -> None:
        """Pods of ``job`` not yet started stay Pending, waiting with ``ImagePullBackOff``."""
        text = message or IMAGE_PULL_MESSAGE
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
            self.controller.mark(meta["namespace"], meta["name"])
        elif event.resource == DEPLOYMENTS and event.type == "ADDED":
            # The Deployment controller, as far as the image tier needs it: one pod per
            # replica, started once (no rollouts, no restarts).
            for index in range(int(obj.get("spec", {}).get("replicas", 1))):
                owner_kind = ("apps/v1", "Deployment")
                self.kubelet.start_pod(pod_from_template(obj, index, owner_kind), obj)
        elif event.resource == PODS:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Job":
                    self.controller.mark(meta["namespace"], ref["name"])
            if event.type == "DELETED":
                self.kubelet.pod_deleted(meta.get("namespace", ""), meta["name"])

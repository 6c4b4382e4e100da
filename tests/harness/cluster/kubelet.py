"""Plays the kubelet (and the scheduler's one node) for the pods in the gateway's store.

Why: the operator observes pods as a cluster shows them, so each pod runs as a real process
and its status moves as the kubelet moves it: Pending (``PodScheduled``) → Running (ready
``containerStatuses``) → Succeeded/Failed with the exit code (``-9`` becomes 137, as container
runtimes report it) and the termination message (``FallbackToLogsOnError`` honoured). Each
pod gets its own loopback address ``127.0.x.y`` (``status.podIP``), so the operator polls
``http://<podIP>:<port>/progress`` as in a cluster and many pods can use one port. Its
stdout/stderr are kept and served by the gateway's ``pods/log`` (``follow=true`` streams).
Stopping a pod is SIGTERM, then SIGKILL after the grace period (the pod's
``terminationGracePeriodSeconds`` when smaller); eviction first adds ``DisruptionTarget``.

How a container is started is one of two launchers: a process of this checkout
(:mod:`~tests.harness.cluster.host_process`, the e2e tier) or, given a
:class:`~tests.harness.container_runtime.ContainerRuntime`, the image its spec names
(:mod:`~tests.harness.cluster.image_container`, the image tier). The Job controller learns
of failures and ends through :class:`PodOwner`.

Not simulated: init containers, sidecars, more than the first container per pod, resource
limits, node selection (everything lands on node ``sim-node``), graceful pod deletion (the pod
object goes at once; its process gets SIGTERM then SIGKILL) and container restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from tests.harness.cluster.cluster_dns import ClusterDns
from tests.harness.cluster.conditions import pod_condition, replace_pod_condition
from tests.harness.cluster.faults import Fault, fault_status
from tests.harness.cluster.host_process import EnvOverride, host_process_launch
from tests.harness.cluster.image_container import image_launch
from tests.harness.cluster.pod_config import ConfigError, Launch, materialize_volumes
from tests.harness.cluster.pod_state import HOST_IP, NODE_NAME, SimulatedPod
from tests.harness.container_runtime import ContainerRuntime
from tests.harness.kube_api import ApiError, KubeGateway, ObjectStore, now_iso

log = logging.getLogger("ftj.simulator")

PODS = ObjectStore.resource("", "v1", "pods")
TERMINATION_MESSAGE_LIMIT = 4096


class PodOwner(Protocol):
    """What the kubelet tells the controller that owns its pods (the Job controller)."""

    def pod_failed(self, job_uid: str, lost: bool) -> None:
        """A pod of the Job exited non-zero (``lost``: its object was already deleted)."""

    def pod_finished(self, namespace: str, job_name: str) -> None:
        """A pod of the Job ended, whatever the reason."""


class Kubelet:
    """Runs the pods it is given, on the gateway's loop.

    Args:
        gateway: the started gateway (its store; its TLS files for the image tier).
        workdir: where pod dirs and PVC dirs go.
        owner: told of pod failures and ends.
        dns: the cluster DNS names are resolved through.
        extra_env: variables added to every host-process pod.
        grace_seconds: SIGTERM → SIGKILL delay when stopping pods.
        runtime: run containers from their images (the image tier) instead.
    """

    def __init__(
        self,
        gateway: KubeGateway,
        workdir: Path,
        owner: PodOwner,
        dns: ClusterDns,
        extra_env: Mapping[str, str],
        grace_seconds: float,
        runtime: ContainerRuntime | None,
    ) -> None:
        self.gateway, self.store = gateway, gateway.store
        self.workdir = workdir
        self.owner = owner
        self.dns = dns
        self.extra_env = dict(extra_env)
        self.grace_seconds = grace_seconds
        self.runtime = runtime
        self.pods: dict[tuple[str, str], SimulatedPod] = {}
        self.faults: dict[tuple[str, str], Fault] = {}  # (namespace, job name) -> fault
        self.env_overrides: list[EnvOverride] = []
        self._ips = (f"127.0.{i // 250 + 1}.{i % 250 + 2}" for i in itertools.count())
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the simulator cancels when it stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- pods given and taken ----------------------------------------------------------------

    def start_pod(self, body: Mapping[str, Any], owner: Mapping[str, Any]) -> None:
        """Create the pod object ``body`` (made by ``owner``'s controller) and run it."""
        meta = owner["metadata"]
        created = self.store.create(PODS, meta["namespace"], body)
        root = Path(tempfile.mkdtemp(prefix=f"{created['metadata']['name']}-", dir=self.workdir))
        pod = SimulatedPod(
            meta["namespace"], created["metadata"]["name"], meta["uid"], next(self._ips), root
        )
        self.pods[(pod.namespace, pod.name)] = pod
        pod_spec = body["spec"]
        if pod_spec.get("hostname") and pod_spec.get("subdomain"):
            # Registered before any pod of the Job starts: a replacement pod takes the name over.
            labels = body["metadata"]["labels"]
            self.dns.register(
                pod.namespace, pod_spec["hostname"], pod_spec["subdomain"], pod.ip, labels
            )
        self.spawn(self._run_pod(pod, meta["name"]))

    def stop_pods(self, pods: list[dict[str, Any]]) -> None:
        """Stop the containers of ``pods`` for their controller (not counted as failures);
        pods that never started are just deleted."""
        for obj in pods:
            pod = self.pods.get((obj["metadata"]["namespace"], obj["metadata"]["name"]))
            if pod is not None and not pod.finished and not pod.stopping_by_controller:
                pod.stopping_by_controller = True
                self.spawn(self.terminate(pod))
            elif pod is None or pod.process is None:
                # Never started (unschedulable, pulling): just delete it.
                with contextlib.suppress(ApiError):
                    self.store.delete(PODS, obj["metadata"]["namespace"], obj["metadata"]["name"])

    def pod_deleted(self, namespace: str, name: str) -> None:
        """The pod object is gone: stop its process if it still runs."""
        pod = self.pods.get((namespace, name))
        if pod is not None and pod.process is not None:
            pod.deleted = True
            if not pod.finished:
                self.spawn(self.terminate(pod))

    # -- one pod's life ----------------------------------------------------------------------

    async def _run_pod(self, pod: SimulatedPod, job_name: str) -> None:
        """Schedule, prepare, start and watch one pod's container to its end."""
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
                        hostIP=HOST_IP,
                        podIP=pod.ip,
                        podIPs=[{"ip": pod.ip}],
                        startTime=now_iso(),
                        conditions=[pod_condition("PodScheduled", "True")],
                    ),
                ),
            )
            container = obj["spec"]["containers"][0]
            launch = await self._prepare(pod, obj, container)
            if pod.deleted:
                return
            pod.process = await asyncio.create_subprocess_exec(
                *launch.argv,
                env=launch.env,
                cwd=launch.cwd,
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
                        pod_condition("PodScheduled", "True"),
                        pod_condition("Initialized", "True"),
                        pod_condition("ContainersReady", "True"),
                        pod_condition("Ready", "True"),
                    ],
                    containerStatuses=[
                        {
                            "name": container["name"],
                            "image": container.get("image", ""),
                            "imageID": "",
                            "containerID": f"sim://{pod.process.pid}",
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
            message = _read_termination_message(launch.termination_log)
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
                # An active pod deleted under the Job counts as failed too (job tracking).
                self.owner.pod_failed(pod.job_uid, lost=pod.deleted)
            if pod.deleted:
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

            def finish(o: dict[str, Any]) -> None:
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
                )
                replace_pod_condition(o["status"], "Ready", "False", "PodCompleted")
                replace_pod_condition(o["status"], "ContainersReady", "False", "PodCompleted")

            self._set_pod(pod, finish)
        except ApiError:
            pod.deleted = True  # the pod object went away while we worked
        except Exception:
            log.exception("simulating pod %s/%s failed", pod.namespace, pod.name)
        finally:
            pod.finished = True
            # A finished pod leaves the Service's endpoints, so its DNS name goes too.
            self.dns.forget(pod.ip)
            async with pod.changed:
                pod.changed.notify_all()
            self.owner.pod_finished(pod.namespace, job_name)
            if pod.deleted:
                shutil.rmtree(pod.root, ignore_errors=True)

    async def _wait_schedulable(self, pod: SimulatedPod, job_name: str) -> None:
        while not pod.deleted:
            fault = self.faults.get((pod.namespace, job_name))
            if fault is None:
                return
            self._set_pod(pod, fault_status(fault))
            pod.release.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pod.release.wait(), timeout=1.0)

    async def _prepare(
        self, pod: SimulatedPod, obj: dict[str, Any], container: Mapping[str, Any]
    ) -> Launch:
        """Volumes, env, argv and cwd of the container, retried while references are missing."""
        while True:
            try:
                return self._prepare_once(pod, obj, container)
            except ConfigError as err:
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
    ) -> Launch:
        sources = materialize_volumes(self.store, self.workdir, pod, obj)
        if self.runtime is not None:
            return image_launch(
                self.gateway,
                self.runtime,
                pod,
                obj,
                container,
                sources,
                resolve_dns=self.dns.resolve,
            )
        return host_process_launch(
            self.store,
            pod,
            obj,
            container,
            sources,
            extra_env=self.extra_env,
            env_overrides=self.env_overrides,
            resolve_dns=self.dns.resolve,
        )

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

    def send_signal(self, pod: SimulatedPod, sig: int) -> None:
        """Send ``sig`` to the pod's process group, if it still runs."""
        if pod.process is not None and pod.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pod.process.pid, sig)

    async def terminate(self, pod: SimulatedPod) -> None:
        """SIGTERM, then SIGKILL after the grace period (as the kubelet stops a container)."""
        if pod.process is None:
            pod.release.set()
            return
        grace = self.grace_seconds
        with contextlib.suppress(ApiError):
            spec = self.store.get(PODS, pod.namespace, pod.name)["spec"]
            grace = min(grace, float(spec.get("terminationGracePeriodSeconds", 30)))
        self.send_signal(pod, signal.SIGTERM)
        try:
            await asyncio.wait_for(pod.process.wait(), timeout=grace)
        except asyncio.TimeoutError:
            self.send_signal(pod, signal.SIGKILL)
        finally:
            if pod.process.returncode is None:
                await pod.process.wait()

    async def evict(self, namespace: str, name: str) -> None:
        """Evict like the Eviction API: ``DisruptionTarget`` condition, SIGTERM, SIGKILL."""
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise ApiError(404, f'pods "{name}" not found')
        self._set_pod(
            pod,
            lambda o: (
                o["status"]
                .setdefault("conditions", [])
                .append(
                    pod_condition(
                        "DisruptionTarget",
                        "True",
                        "EvictionByEvictionAPI",
                        "Eviction API: evicting",
                    )
                )
            ),
        )
        await self.terminate(pod)

    async def logs(
        self, namespace: str, name: str, follow: bool, tail_lines: int | None
    ) -> AsyncIterator[bytes]:
        """The pod's log for ``pods/log``: all or the last ``tail_lines`` lines, then (with
        ``follow``) what it writes until it ends."""
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


def _read_termination_message(path: Path) -> str:
    try:
        return path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        return ""

"""Scheduling and image faults a test injects, and the pod status each leaves behind.

Why: the operator turns a pod stuck Pending into a condition a person can act on
(``Unschedulable`` with the scheduler's message, ``ImagePullBackOff``), so tests make pods
stick exactly as a cluster shows it: ``PodScheduled=False`` with reason ``Unschedulable``, or
scheduled with the container waiting in ``ImagePullBackOff``
(https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#container-state-waiting).
A fault applies to a Job's pods that have not started yet, until cleared. Killing and
evicting running pods are the kubelet's (:mod:`tests.harness.cluster.kubelet`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from tests.harness.cluster.conditions import pod_condition
from tests.harness.cluster.pod_state import HOST_IP

UNSCHEDULABLE_MESSAGE = (
    "0/1 nodes are available: 1 Insufficient "
    "nvidia.com/gpu. preemption: 0/1 nodes are "
    "available: 1 No preemption victims found for "
    "incoming pod."
)
IMAGE_PULL_MESSAGE = 'Back-off pulling image "trainer": ErrImagePull: not found'


@dataclasses.dataclass
class Fault:
    """A scheduling/image problem injected for one Job's future and waiting pods."""

    kind: str  # "Unschedulable" or "ImagePullBackOff"
    message: str


def fault_status(fault: Fault) -> Callable[[dict[str, Any]], None]:
    """The change a pod object gets while ``fault`` holds it Pending."""
    if fault.kind == "Unschedulable":
        return lambda o: o["status"].update(
            phase="Pending",
            conditions=[pod_condition("PodScheduled", "False", "Unschedulable", fault.message)],
        )
    return lambda o: o["status"].update(
        phase="Pending",
        hostIP=HOST_IP,
        conditions=[
            pod_condition("PodScheduled", "True"),
            pod_condition(
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
                "state": {"waiting": {"reason": fault.kind, "message": fault.message}},
            }
        ],
    )

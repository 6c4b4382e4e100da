"""What the kubelet knows about a pod beyond its API object: its process, address and log.

Why its own module: the kubelet runs the pod, the Job controller asks whether the controller
itself stopped it (a stop for suspend, a deadline or a finished Job is no pod failure), the
environment builder reads its address and name, and the gateway streams its log; all share
this record.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

NODE_NAME = "sim-node"  # every pod lands on this node (no node selection)
HOST_IP = "127.0.0.1"  # the node's address: status.hostIP


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

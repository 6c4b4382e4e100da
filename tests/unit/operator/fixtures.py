"""Builders of FineTuneJobs and of Job/pod objects as the controllers and the kubelet write them.

The status shapes follow what a real cluster returns (`kubectl get -o json`): Job conditions
from the Job controller, ``PodScheduled`` from the scheduler, container states and the
termination message from the kubelet, ``DisruptionTarget`` from the preemption/eviction paths.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from finetune_api import FineTuneJob, parse_manifest

UID = "6a1f0c52-8a8e-4f4b-9d1e-0c1b2d3e4f50"
JOB_UID = "9b7d1a11-2222-4333-8444-555566667777"
T0 = "2025-06-01T10:00:00Z"

Obj = dict[str, Any]


def manifest(name: str = "demo", namespace: str = "ml", **spec: Any) -> Obj:
    """A FineTuneJob as read from the API server (uid, generation), with spec overrides."""
    body: Obj = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1},
        "spec": {
            "model": {"uri": "s3://models/Qwen/Qwen3-8B"},
            "datasets": [{"uri": "s3://datasets/identity.jsonl"}],
            "output": {"uri": f"s3://finetunes/{name}"},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def ftj(
    name: str = "demo", namespace: str = "ml", status: Obj | None = None, **spec: Any
) -> FineTuneJob:
    """A parsed FineTuneJob."""
    data = manifest(name, namespace, **spec)
    if status is not None:
        data["status"] = status
    return parse_manifest(data)


# --- Jobs ----------------------------------------------------------------------------------


def k8s_job(*conditions: Obj, suspend: bool = False, failed: int = 0, **status: Any) -> Obj:
    """A batch/v1 Job owned by the FineTuneJob, with Job-controller status."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "ftj-demo",
            "namespace": "ml",
            "uid": JOB_UID,
            "creationTimestamp": T0,
            "ownerReferences": [
                {
                    "apiVersion": "finetune.dev/v1alpha1",
                    "kind": "FineTuneJob",
                    "name": "demo",
                    "uid": UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"suspend": suspend, "backoffLimit": 3},
        "status": {
            "startTime": T0,
            **({"failed": failed} if failed else {}),
            "conditions": list(conditions),
            **status,
        },
    }


def job_condition(type_: str, reason: str, message: str = "") -> Obj:
    """A Job condition as the Job controller writes it."""
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": "2025-06-01T11:00:00Z",
        "lastTransitionTime": "2025-06-01T11:00:00Z",
    }


# --- pods ----------------------------------------------------------------------------------


def pod(
    name: str = "ftj-demo-abcde",
    phase: str = "Running",
    *,
    created: str = T0,
    state: Obj | None = None,
    last_state: Obj | None = None,
    conditions: list[Obj] | None = None,
    restarts: int = 0,
    index: str | None = None,
    ip: str = "10.0.0.7",
    reason: str | None = None,
    message: str | None = None,
) -> Obj:
    """A trainer pod of the Job, with kubelet status."""
    annotations = {"batch.kubernetes.io/job-completion-index": index} if index is not None else {}
    container_status: Obj = {
        "name": "trainer",
        "image": "ghcr.io/finetune-dev/finetune-trainer:0.1.0",
        "imageID": "",
        "ready": phase == "Running",
        "restartCount": restarts,
        "started": phase == "Running",
        "state": state if state is not None else {"running": {"startedAt": created}},
        "lastState": last_state or {},
    }
    status: Obj = {
        "phase": phase,
        "conditions": conditions
        if conditions is not None
        else [{"type": "PodScheduled", "status": "True", "lastTransitionTime": created}],
        "containerStatuses": [container_status],
        "podIP": ip,
        "startTime": created,
        "qosClass": "Guaranteed",
    }
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": annotations,
            "labels": {"finetune.dev/job": "demo", "batch.kubernetes.io/controller-uid": JOB_UID},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": "ftj-demo",
                    "uid": JOB_UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": "ghcr.io/finetune-dev/finetune-trainer:0.1.0",
                    "resources": {"limits": {"memory": "64Gi"}},
                }
            ]
        },
        "status": status,
    }


def terminated(
    exit_code: int,
    reason: str = "Error",
    message: Obj | str | None = None,
    finished: str = "2025-06-01T10:30:00Z",
) -> Obj:
    """A container state ``terminated`` (message: the termination-log content)."""
    text = json.dumps(message) if isinstance(message, dict) else (message or "")
    return {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "message": text,
            "startedAt": T0,
            "finishedAt": finished,
            "containerID": "containerd://x",
        }
    }


def unschedulable(message: str) -> list[Obj]:
    """Pod conditions written by the scheduler for a pod that fits no node."""
    return [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": T0,
        }
    ]


def disruption(reason: str, message: str) -> Obj:
    """The DisruptionTarget condition added before a pod is preempted or evicted."""
    return {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-06-01T10:20:00Z",
    }

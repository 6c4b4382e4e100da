"""Pods as the workload controllers make them from their owner's pod template.

Why: the operator renders a Job; what runs is the pod the Job controller derives from it, so
that derivation is reproduced: the template's labels and annotations plus ``job-name``
labels, the completion index of an Indexed Job (label, annotation, ``JOB_COMPLETION_INDEX``
and ``hostname: <job>-<index>`` when a subdomain is set), a generated name and a controller
ownerReference (https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode).
The Deployment path (image tier) uses the same with a Deployment owner.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any


def pod_from_template(
    owner: Mapping[str, Any], index: int, owner_kind: tuple[str, str] = ("batch/v1", "Job")
) -> dict[str, Any]:
    """The pod object (for a create) that ``owner``'s controller makes for ``index``;
    ``owner_kind`` is the owner's ``(apiVersion, kind)``."""
    meta, spec = owner["metadata"], owner["spec"]
    template = spec.get("template", {})
    labels = dict(template.get("metadata", {}).get("labels") or {})
    annotations = dict(template.get("metadata", {}).get("annotations") or {})
    if owner_kind[1] == "Job":
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
    return {
        "metadata": {
            "name": f"{meta['name']}-{uuid.uuid4().hex[:5]}",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": owner_kind[0],
                    "kind": owner_kind[1],
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }

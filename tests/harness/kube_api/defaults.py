"""The defaults kube-apiserver fills in on create, for the fields controllers and kubectl read.

Why: upstream defaults every field of a built-in kind (and the Job controller labels a Job's
pod template); the operator, kubectl's printers and our Job simulator read a handful of them
(``backoffLimit``, ``completions``, a Job's ``selector`` and ``controller-uid`` labels, a
Service's ``clusterIP``, a Pod's ``terminationMessagePath``), so those are set here and no
others (https://kubernetes.io/docs/concepts/workloads/controllers/job/).
"""

from __future__ import annotations

from typing import Any

from tests.harness.kube_api.resources import ResourceType


def apply_defaults(res: ResourceType, obj: dict[str, Any]) -> None:
    """Fill in, in place, the few defaults controllers and kubectl rely on."""
    spec = obj.get("spec")
    if res.kind == "Job" and isinstance(spec, dict):
        # Upstream: 6, or the largest int32 with a per-index limit (counted per index then).
        spec.setdefault("backoffLimit", 2147483647 if "backoffLimitPerIndex" in spec else 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("suspend", False)
        spec.setdefault("completionMode", "NonIndexed")
        template = spec.setdefault("template", {})
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        uid = obj["metadata"]["uid"]
        labels.setdefault("batch.kubernetes.io/controller-uid", uid)
        labels.setdefault("batch.kubernetes.io/job-name", obj["metadata"]["name"])
        labels.setdefault("controller-uid", uid)
        labels.setdefault("job-name", obj["metadata"]["name"])
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        obj.setdefault("status", {})
    elif res.kind == "Pod" and isinstance(spec, dict):
        for container in spec.get("containers", []):
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
        spec.setdefault("restartPolicy", "Always")
        obj.setdefault("status", {"phase": "Pending"})
    elif res.kind == "Service" and isinstance(spec, dict):
        if "clusterIP" not in spec:
            n = abs(hash(obj["metadata"]["uid"])) % 65000
            spec["clusterIP"] = f"10.96.{n // 256}.{n % 256 or 1}"
        spec.setdefault("type", "ClusterIP")
    elif res.kind == "Namespace":
        obj["status"] = {"phase": "Active"}
    elif res.kind == "Deployment" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate"})
        obj.setdefault("status", {})

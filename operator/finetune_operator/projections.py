"""What the operator keeps in memory of each watched object: only the fields it reads. Pure.

Why: kopf indices hold one entry per FineTuneJob, Job and trainer pod for as long as they
exist (https://kopf.readthedocs.io/en/stable/indexing/). A full copy of an object as the API
server sends it carries ``managedFields``, kopf's ``last-handled-configuration`` annotation (a
second copy of the spec), the pod's whole spec (volumes, env, probes) and every container's
status, none of which the status computation reads. At a thousand running jobs those copies
were most of the operator's memory; these projections keep what :mod:`finetune_operator.observe`,
:mod:`finetune_operator.inventory`, :mod:`finetune_operator.progress` and
:mod:`finetune_operator.gpu_usage` read, and nothing else.

Each projection is a new plain dict (kopf reuses and mutates the bodies it passes to handlers,
so an index entry must never share structure with one). A unit test checks that the status
computed from projections equals the status computed from the full objects.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from finetune_api import contract

from finetune_operator import naming

Manifest = dict[str, Any]

# metadata fields read by the status computation and by the owner checks (inventory.py).
_META = ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
_JOB_SPEC = ("suspend",)
_JOB_STATUS = (
    "conditions",
    "failed",
    "failedIndexes",
    "startTime",
    "completionTime",
)
_POD_STATUS = ("phase", "podIP", "reason", "message", "startTime", "conditions")
_CONTAINER_STATUS = ("name", "image", "restartCount", "state", "lastState")


def _detach(value: Any) -> Any:
    """A copy of ``value`` that shares no dict or list with it. Keys are interned: every
    entry spells ``lastTransitionTime`` and its like, and one shared copy of each is enough."""
    if isinstance(value, Mapping):
        return {sys.intern(k) if isinstance(k, str) else k: _detach(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detach(v) for v in value]
    return value  # str, int, float, bool, None: immutable, shared safely


def _pick(source: Mapping[str, Any] | None, keys: tuple[str, ...]) -> Manifest:
    """A detached copy of ``keys`` of ``source`` that are present."""
    found = source or {}
    return {k: _detach(found[k]) for k in keys if k in found}


def _metadata(meta: Mapping[str, Any] | None, annotations: tuple[str, ...] = ()) -> Manifest:
    meta = meta or {}
    kept = _pick(meta, _META)
    owners = [
        {"uid": ref.get("uid"), "controller": ref.get("controller")}
        for ref in meta.get("ownerReferences") or ()
    ]
    if owners:
        kept["ownerReferences"] = owners
    wanted = {k: v for k, v in (meta.get("annotations") or {}).items() if k in annotations}
    if wanted:
        kept["annotations"] = wanted
    return kept


def finetunejob_entry(body: Mapping[str, Any]) -> Manifest:
    """A FineTuneJob without ``managedFields``, annotations and labels: identity, spec, status.

    The spec is kept whole: the status computation parses it (GPUs, budget, queue).
    """
    entry = _pick(body, ("apiVersion", "kind", "spec", "status"))
    entry["metadata"] = _metadata(body.get("metadata"))
    return entry


def job_entry(body: Mapping[str, Any]) -> Manifest:
    """A Job as the status computation reads it: owner, ``spec.suspend``, controller status."""
    return {
        "metadata": _metadata(body.get("metadata")),
        "spec": _pick(body.get("spec"), _JOB_SPEC),
        "status": _pick(body.get("status"), _JOB_STATUS),
    }


def _trainer_only(items: Any, keys: tuple[str, ...]) -> list[Manifest]:
    return [
        _pick(item, keys)
        for item in items or ()
        if isinstance(item, Mapping) and item.get("name") == contract.CONTAINER_NAME
    ]


def pod_entry(body: Mapping[str, Any]) -> Manifest:
    """A trainer pod: owner, rank (completion index), the trainer container's image, memory
    limit and status (states, termination message), pod phase, IP, conditions, start time."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    containers = [
        {
            "name": c.get("name"),
            "image": c.get("image"),
            "resources": {"limits": _pick((c.get("resources") or {}).get("limits"), ("memory",))},
        }
        for c in spec.get("containers") or ()
        if isinstance(c, Mapping) and c.get("name") == contract.CONTAINER_NAME
    ]
    kept_status = _pick(status, _POD_STATUS)
    kept_status["containerStatuses"] = _trainer_only(
        status.get("containerStatuses"), _CONTAINER_STATUS
    )
    return {
        "metadata": _metadata(body.get("metadata"), (naming.COMPLETION_INDEX_ANNOTATION,)),
        "spec": {"containers": containers},
        "status": kept_status,
    }

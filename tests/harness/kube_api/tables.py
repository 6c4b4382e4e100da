"""Server-side printing: ``Table`` responses with the columns ``kubectl get`` shows.

Why: kubectl asks the server for ``as=Table`` and prints the server's columns
(https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables);
tests and the README transcripts read ``kubectl get pods/jobs/events`` output, so the columns
a person scans for (Ready, Status, Completions, Reason, Message) are rendered as upstream's
printers render them, for the kinds we look at. Other kinds get Name and Age.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from tests.harness.kube_api.resources import ResourceType


def table(res: ResourceType, items: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    """The ``Table`` of ``items`` (kubectl's columns for the kind, then Age)."""
    columns = [("Name", "string", "name")]
    extra: dict[str, list[tuple[str, str, Callable[[dict[str, Any]], Any]]]] = {
        "Pod": [
            (
                "Ready",
                "string",
                lambda o: "{}/{}".format(
                    sum(
                        1
                        for c in o.get("status", {}).get("containerStatuses", [])
                        if c.get("ready")
                    ),
                    len(o.get("spec", {}).get("containers", [])),
                ),
            ),
            ("Status", "string", _pod_status),
            ("Restarts", "integer", lambda o: 0),
            ("IP", "string", lambda o: o.get("status", {}).get("podIP", "<none>")),
        ],
        "Job": [
            ("Status", "string", _job_status),
            (
                "Completions",
                "string",
                lambda o: "{}/{}".format(
                    o.get("status", {}).get("succeeded", 0),
                    o.get("spec", {}).get("completions", 1),
                ),
            ),
        ],
        "Event": [
            ("Type", "string", lambda o: o.get("type", "")),
            ("Reason", "string", lambda o: o.get("reason", "")),
            ("Message", "string", lambda o: o.get("message") or o.get("note", "")),
        ],
        "ConfigMap": [("Data", "integer", lambda o: len(o.get("data") or {}))],
        "Namespace": [("Status", "string", lambda o: o.get("status", {}).get("phase", ""))],
        "Deployment": [
            (
                "Ready",
                "string",
                lambda o: "{}/{}".format(
                    o.get("status", {}).get("readyReplicas", 0),
                    o.get("spec", {}).get("replicas", 1),
                ),
            ),
            ("Available", "integer", lambda o: o.get("status", {}).get("availableReplicas", 0)),
        ],
    }
    rows_extra = extra.get(res.kind, [])
    definitions = [
        {"name": n, "type": t, "format": f, "description": "", "priority": 0} for n, t, f in columns
    ]
    definitions += [
        {"name": n, "type": t, "format": "", "description": "", "priority": 0}
        for n, t, _ in rows_extra
    ]
    definitions.append(
        {"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}
    )
    rows = []
    for obj in items:
        cells = [obj["metadata"]["name"]] + [fn(obj) for _, _, fn in rows_extra]
        cells.append(_age(obj["metadata"].get("creationTimestamp")))
        meta_obj = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }
        rows.append({"cells": cells, "object": meta_obj})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": definitions,
        "rows": rows,
    }


def wants_table(request: web.Request) -> bool:
    """Whether the client asked for a ``Table`` (kubectl get does) instead of a list."""
    return "as=Table" in request.headers.get("Accept", "")


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _pod_status(pod: Mapping[str, Any]) -> str:
    status = pod.get("status", {})
    for container in status.get("containerStatuses", []):
        waiting = container.get("state", {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
        terminated = container.get("state", {}).get("terminated")
        if terminated and terminated.get("reason"):
            return str(terminated["reason"])
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    return str(status.get("phase", "Pending"))


def _job_status(job: Mapping[str, Any]) -> str:
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("status") == "True" and cond["type"] in ("Complete", "Failed", "Suspended"):
            return str(cond["type"])
    return "Running"

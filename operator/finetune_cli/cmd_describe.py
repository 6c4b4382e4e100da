"""``ftj describe NAME``: everything about one FineTuneJob a person needs to act on it.

Conditions (with the reason that ``docs/troubleshooting.md`` is keyed by), progress,
artifacts, the Job and its pods, and the recent events of all of them in time order.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from finetune_cli.cluster import (
    CliError,
    Cluster,
    add_cluster_arguments,
    age,
    job_name_of,
    reports_errors,
    table,
)

RECENT_EVENTS = 20


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``describe`` subcommand."""
    parser = sub.add_parser(
        "describe", help="conditions, progress, artifacts and events of one FineTuneJob"
    )
    parser.add_argument("name", metavar="NAME")
    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


def _pairs(pairs: list[tuple[str, Any]], indent: str = "") -> list[str]:
    shown = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in shown), default=0) + 1
    return [f"{indent}{(k + ':').ljust(width)}  {v}" for k, v in shown]


def describe(job: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    """The text of ``ftj describe`` (pure, for tests)."""
    meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    progress = status.get("progress") or {}
    resources = spec.get("resources") or {}
    lines = _pairs(
        [
            ("Name", meta["name"]),
            ("Namespace", meta.get("namespace")),
            (
                "Created",
                f"{meta.get('creationTimestamp')} ({age(meta.get('creationTimestamp'))} ago)",
            ),
            ("Phase", status.get("phase") or "Pending"),
            ("Message", status.get("message")),
            ("Model", (spec.get("model") or {}).get("uri")),
            ("Datasets", ", ".join(d.get("uri", "") for d in spec.get("datasets") or [])),
            ("Method", (spec.get("method") or {}).get("type", "lora")),
            ("Output", (spec.get("output") or {}).get("uri")),
            (
                "Resources",
                f"{resources.get('gpus', 1)} GPU(s) x {resources.get('nodes', 1)} node(s)",
            ),
            ("Suspend", "true" if spec.get("suspend") else None),
            ("Job", status.get("jobName")),
            ("Started", status.get("startTime")),
            ("Completed", status.get("completionTime")),
            ("Restarts", status.get("restarts")),
        ]
    )
    lines.append("Progress:")
    progress_lines = _pairs(
        [
            ("Steps", progress.get("summary")),
            ("Epoch", progress.get("epoch")),
            ("Loss", progress.get("loss")),
            ("Eval loss", progress.get("evalLoss")),
            ("Learning rate", progress.get("learningRate")),
            ("Tokens/s", progress.get("tokensPerSecond")),
            ("GPU memory (GiB)", progress.get("gpuMemoryGib")),
            ("ETA", progress.get("eta")),
            ("Updated", progress.get("updatedAt")),
        ],
        "  ",
    )
    lines.extend(progress_lines or ["  <none reported yet>"])
    lines.append("Conditions:")
    conditions = status.get("conditions") or []
    if conditions:
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]] + [
            [
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", ""),
                age(c.get("lastTransitionTime")),
                c.get("message", ""),
            ]
            for c in conditions
        ]
        lines.extend("  " + r for r in table(rows))
    else:
        lines.append("  <none>")
    lines.append("Artifacts:")
    artifacts = status.get("artifacts") or {}
    order = ("adapter", "merged", "metrics", "lossPlot", "manifest")  # as `ftj artifacts`
    keys = [k for k in order if k in artifacts] + sorted(set(artifacts) - set(order))
    lines.extend(_pairs([(k, artifacts[k]) for k in keys], "  ") or ["  <none published yet>"])
    lines.append("Pods:")
    if pods:
        rows = [["NAME", "PHASE", "RESTARTS", "NODE", "AGE"]]
        for pod in pods:
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            rows.append(
                [
                    pod["metadata"]["name"],
                    _pod_state(pod),
                    str(sum(int(s.get("restartCount") or 0) for s in statuses)),
                    (pod.get("spec") or {}).get("nodeName") or "-",
                    age(pod["metadata"].get("creationTimestamp")),
                ]
            )
        lines.extend("  " + r for r in table(rows))
    else:
        lines.append("  <none>")
    lines.append("Events:")
    if events:
        rows = [["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]] + [
            [
                age(_event_time(e)),
                e.get("type") or "",
                e.get("reason") or "",
                f"{(e.get('involvedObject') or {}).get('kind', '')}/"
                f"{(e.get('involvedObject') or {}).get('name', '')}",
                (e.get("message") or "").strip().replace("\n", " "),
            ]
            for e in events
        ]
        lines.extend("  " + r for r in table(rows))
    else:
        lines.append("  <none>")
    return "\n".join(lines) + "\n"


def _pod_state(pod: dict[str, Any]) -> str:
    """The pod's phase, or the waiting/terminated reason kubectl shows (ImagePullBackOff ...)."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        for key in ("waiting", "terminated"):
            reason = (state.get(key) or {}).get("reason")
            if reason:
                return str(reason)
    return str(status.get("phase") or "Unknown")


def _event_time(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


@reports_errors
def run(args: argparse.Namespace) -> int:
    """Fetch the FineTuneJob, its pods and their events, and print them."""
    cluster = Cluster.connect(args)
    job = cluster.get_job(args.name)
    try:
        pods = cluster.trainer_pods(job)
    except CliError:
        pods = []  # describing the FineTuneJob must not fail because pods can't be listed
    events: list[dict[str, Any]] = []
    try:
        events += cluster.events_for("FineTuneJob", args.name)
        events += cluster.events_for("Job", job_name_of(job))
        for pod in pods:
            events += cluster.events_for("Pod", pod["metadata"]["name"])
    except CliError as err:
        print(f"ftj describe: events not shown: {err.message}", file=sys.stderr)
    events.sort(key=_event_time)
    print(describe(job, pods, events[-RECENT_EVENTS:]), end="")
    return 0

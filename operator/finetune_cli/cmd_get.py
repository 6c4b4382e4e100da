"""``ftj get [NAME]``: FineTuneJobs as a table, like ``kubectl get ftj`` plus throughput."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from finetune_cli.cluster import Cluster, add_cluster_arguments, age, reports_errors, table

COLUMNS = ["NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "TOKENS/S", "AGE"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``get`` subcommand."""
    parser = sub.add_parser("get", help="list FineTuneJobs with phase, progress, loss, tokens/s")
    parser.add_argument("name", nargs="?", metavar="NAME", help="one FineTuneJob (default: all)")
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="list FineTuneJobs of every namespace"
    )
    parser.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help="output format"
    )
    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if digits else f"{round(value):d}"
    return str(value)


def row(job: dict[str, Any], with_namespace: bool = False) -> list[str]:
    """One table row of a FineTuneJob."""
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    cells = [
        job["metadata"]["name"],
        status.get("phase") or "Pending",
        progress.get("summary") or "-",
        _number(progress.get("loss"), 4),
        progress.get("eta") or "-",
        _number(progress.get("tokensPerSecond"), 0),
        age(job["metadata"].get("creationTimestamp")),
    ]
    return [job["metadata"].get("namespace", "")] + cells if with_namespace else cells


@reports_errors
def run(args: argparse.Namespace) -> int:
    """Print the table (or the objects as JSON/YAML)."""
    cluster = Cluster.connect(args)
    if args.name:
        jobs = [cluster.get_job(args.name)]
    else:
        jobs = cluster.list_jobs(all_namespaces=args.all_namespaces)
    jobs.sort(key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"]))
    if args.output == "json":
        print(json.dumps(jobs[0] if args.name else {"items": jobs}, indent=2))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump(jobs[0] if args.name else {"items": jobs}, sort_keys=False), end="")
        return 0
    if not jobs:
        where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
        print(f"No FineTuneJobs found in {where}.")
        return 0
    header = (["NAMESPACE"] if args.all_namespaces else []) + COLUMNS
    for line in table([header] + [row(j, args.all_namespaces) for j in jobs]):
        print(line)
    return 0

"""``ftj logs NAME [-f]``: the trainer's log, following it across pod restarts.

A trainer pod can be replaced (preemption, node loss, a retry after a crash) or its container
restarted; ``kubectl logs -f`` stops at the first of these. ``ftj logs -f`` notices the new pod
or container, prints a marker line and goes on with it, until the FineTuneJob is Succeeded or
Failed. For multi-node jobs it shows rank 0 (completion index 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from finetune_cli.cluster import CliError, Cluster, add_cluster_arguments, rank0, reports_errors

TERMINAL = ("Succeeded", "Failed")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``logs`` subcommand."""
    parser = sub.add_parser("logs", help="the trainer pod's log (-f follows it across restarts)")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    parser.add_argument(
        "--tail",
        type=int,
        default=-1,
        metavar="LINES",
        help="only the last LINES lines of the current log (default: all)",
    )
    parser.add_argument(
        "--poll", type=float, default=2.0, metavar="SECONDS", help=argparse.SUPPRESS
    )
    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


def _incarnation(pod: dict[str, Any]) -> tuple[str, int]:
    """(pod uid, restart count of the trainer container): changes whenever a new process starts."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    restarts = max((int(s.get("restartCount") or 0) for s in statuses), default=0)
    return pod["metadata"].get("uid") or pod["metadata"]["name"], restarts


def _started(pod: dict[str, Any]) -> bool:
    """True once the trainer container runs or ran (there is a log to read)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False


def _current_pod(cluster: Cluster, job: dict[str, Any]) -> dict[str, Any] | None:
    pods = [p for p in rank0(cluster.trainer_pods(job)) if _started(p)]
    return pods[-1] if pods else None


def _print_log(cluster: Cluster, pod: dict[str, Any], *, follow: bool, tail: int) -> None:
    """Print one container's log; with ``follow`` until the container stops."""
    core = cluster.core()
    name = pod["metadata"]["name"]
    kwargs: dict[str, Any] = {"container": "trainer"} if _has_trainer(pod) else {}
    if tail >= 0:
        kwargs["tail_lines"] = tail
    if not follow:
        text = cluster.call(
            core.read_namespaced_pod_log,
            name,
            cluster.namespace,
            verb="get",
            resource="pods/log",
            **kwargs,
        )
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return
    response = cluster.call(
        core.read_namespaced_pod_log,
        name,
        cluster.namespace,
        follow=True,
        _preload_content=False,
        _request_timeout=None,
        verb="get",
        resource="pods/log",
        **kwargs,
    )
    try:
        for chunk in response.stream(4096):
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a dropped stream just means "look again"
        pass
    finally:
        response.release_conn()


def _has_trainer(pod: dict[str, Any]) -> bool:
    return any(c.get("name") == "trainer" for c in (pod.get("spec") or {}).get("containers") or [])


@reports_errors
def run(args: argparse.Namespace) -> int:
    """Print (and with -f follow) the log of the current trainer pod."""
    cluster = Cluster.connect(args)
    job = cluster.get_job(args.name)
    pod = _current_pod(cluster, job)
    if not args.follow:
        if pod is None:
            phase = (job.get("status") or {}).get("phase") or "Pending"
            raise CliError(
                f"FineTuneJob {args.name} has no started trainer pod yet (phase "
                f"{phase}); `ftj describe {args.name}` shows why"
            )
        _print_log(cluster, pod, follow=False, tail=args.tail)
        return 0
    seen: set[tuple[str, int]] = set()
    while True:
        if pod is not None and _incarnation(pod) not in seen:
            if seen:
                uid, restarts = _incarnation(pod)
                print(
                    f"--- ftj: continuing with pod {pod['metadata']['name']} "
                    f"(container restarts: {restarts}) ---",
                    flush=True,
                )
            seen.add(_incarnation(pod))
            _print_log(cluster, pod, follow=True, tail=args.tail if len(seen) == 1 else -1)
            continue  # the stream ended: look for what comes next right away
        phase = (cluster.get_job(args.name).get("status") or {}).get("phase")
        if phase in TERMINAL:
            return 0
        time.sleep(args.poll)
        job = cluster.get_job(args.name)
        pod = _current_pod(cluster, job)

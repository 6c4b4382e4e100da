"""``ftj watch NAME``: a live progress bar and loss sparkline until the job ends.

Exit code 0 when the FineTuneJob Succeeded, 1 when it Failed, so scripts can chain on it
(``ftj watch my-job && ftj artifacts my-job --download out/``). On a terminal the status line
is redrawn in place; piped, one line is printed per change.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from finetune_cli.cluster import EXIT_FAILED, Cluster, add_cluster_arguments, reports_errors

SPARK = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 24
SPARK_WIDTH = 40


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``watch`` subcommand."""
    parser = sub.add_parser(
        "watch", help="live progress bar and loss sparkline; exit 0 on Succeeded, 1 on Failed"
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between two looks at the status (default 2)",
    )
    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """The last ``width`` values as block characters, scaled between their min and max."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARK[len(SPARK) // 2] * len(values)
    scale = (len(SPARK) - 1) / (high - low)
    return "".join(SPARK[round((v - low) * scale)] for v in values)


def progress_bar(percent: float | None, width: int = BAR_WIDTH) -> str:
    """``[#########...............]`` for a percentage (empty bar when unknown)."""
    filled = 0 if percent is None else max(0, min(width, round(width * percent / 100)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_line(job: dict[str, Any], losses: list[float]) -> str:
    """One line: phase, bar, steps, loss, throughput, ETA and the sparkline."""
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    parts = [f"{status.get('phase') or 'Pending':<12}", progress_bar(progress.get("percent"))]
    parts.append(progress.get("summary") or "-")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("evalLoss") is not None:
        parts.append(f"eval {progress['evalLoss']:.4f}")
    if progress.get("tokensPerSecond") is not None:
        parts.append(f"{progress['tokensPerSecond']:.0f} tok/s")
    if progress.get("eta"):
        parts.append(f"ETA {progress['eta']}")
    if losses:
        parts.append(sparkline(losses))
    return "  ".join(parts)


class LossHistory:
    """Loss values seen, one per reported step (a value polled twice counts once)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._last_key: tuple[Any, Any] | None = None

    def add(self, job: dict[str, Any]) -> None:
        progress = (job.get("status") or {}).get("progress") or {}
        loss = progress.get("loss")
        if loss is None:
            return
        key = (progress.get("step"), loss)
        if key != self._last_key:
            self._last_key = key
            self.values.append(float(loss))


def final_message(job: dict[str, Any]) -> str:
    """What to say when the job ended: the failure reason, or where the artifacts are."""
    status = job.get("status") or {}
    name = job["metadata"]["name"]
    if status.get("phase") == "Succeeded":
        merged = (status.get("artifacts") or {}).get("merged")
        where = f"; merged model: {merged}" if merged else ""
        return f"FineTuneJob {name} succeeded{where} (`ftj artifacts {name}` lists all)"
    failed = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "Failed" and c.get("status") == "True"
        ),
        None,
    )
    reason = f" ({failed.get('reason')}): {failed.get('message', '')}" if failed else ""
    message = reason or (f": {status['message']}" if status.get("message") else "")
    return (
        f"FineTuneJob {name} failed{message} "
        f"(see docs/troubleshooting.md; `ftj describe {name}` for events)"
    )


@reports_errors
def run(args: argparse.Namespace) -> int:
    """Poll the FineTuneJob and redraw its status line until it ends."""
    cluster = Cluster.connect(args)
    tty = sys.stdout.isatty()
    history = LossHistory()
    last = ""
    while True:
        job = cluster.get_job(args.name)
        history.add(job)
        line = status_line(job, history.values)
        if tty:
            sys.stdout.write("\r\033[2K" + line)
            sys.stdout.flush()
        elif line != last:
            print(line, flush=True)
        last = line
        phase = (job.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            if tty:
                sys.stdout.write("\n")
            print(final_message(job), file=sys.stdout if phase == "Succeeded" else sys.stderr)
            return 0 if phase == "Succeeded" else EXIT_FAILED
        time.sleep(args.interval)

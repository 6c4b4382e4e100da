"""Where one training step leaves the GPU idle: a reading of a torch.profiler Chrome trace.

A kernel table (the ``-profile`` rows) says what the GPU computed, not when it waited. In the
streamed 18 GiB plan the compute stream's kernels add up to ~80% of the step's wall time
(bench/NOTES.md step 33), so the rest is idle time that no faster kernel can recover. Each gap
on the compute stream ends with a kernel, and that kernel's launch call (matched through the
trace's correlation id) says why the GPU waited:

* **host** - the launch came after the GPU had gone idle: the Python and launch overhead of
  the host, a host synchronisation (``.item()``), or work on the CPU between steps;
* **dependency** - the kernel had been launched before the gap began: it waited for another
  stream (a weight copy, weight_streaming.py) or an event.

``python -m bench.timeline TRACE.json[.gz]`` prints the step's span, the compute stream's busy
share, the idle time by cause, and the largest gaps with the kernels on either side.
Rows with the ``-trace`` suffix (bench/run.py) write the trace and print this report.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A shorter pause is a kernel boundary, not idle time worth naming.
GAP_US = 20.0
_LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
_GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass
class Gap:
    start_us: float
    length_us: float
    cause: str  # "host" or "dependency"
    before: str
    after: str


def load(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:  # type: ignore[operator]
        return json.load(f)["traceEvents"]


def _stream(event: dict[str, Any]) -> Any:
    return event.get("args", {}).get("stream", event.get("tid"))


def compute_stream(events: list[dict[str, Any]]) -> Any:
    """The stream with the most kernel time (the side stream only copies)."""
    busy: Counter[Any] = Counter()
    for e in events:
        if e.get("cat") == "kernel":
            busy[_stream(e)] += float(e.get("dur", 0.0))
    return busy.most_common(1)[0][0] if busy else None


def gaps(
    events: list[dict[str, Any]], min_gap_us: float = GAP_US
) -> tuple[list[Gap], float, float]:
    """``(gaps, span_us, busy_us)`` of the compute stream, from its first to its last kernel;
    a gap's ``start_us`` counts from the first kernel."""
    stream = compute_stream(events)
    work = sorted(
        (e for e in events if e.get("cat") in _GPU_CATEGORIES and _stream(e) == stream),
        key=lambda e: float(e["ts"]),
    )
    launches = {
        e["args"]["correlation"]: float(e["ts"])
        for e in events
        if e.get("cat") in _LAUNCH_CATEGORIES and "correlation" in e.get("args", {})
    }
    found: list[Gap] = []
    origin = float(work[0]["ts"]) if work else 0.0
    busy = 0.0
    end = None
    previous = ""
    for e in work:
        start, length = float(e["ts"]), float(e.get("dur", 0.0))
        if end is not None and start - end >= min_gap_us:
            launched = launches.get(e.get("args", {}).get("correlation"))
            cause = "host" if launched is not None and launched >= end else "dependency"
            found.append(Gap(end - origin, start - end, cause, previous, str(e.get("name", ""))))
        busy += length
        end = start + length if end is None else max(end, start + length)
        previous = str(e.get("name", ""))
    span = end - origin if end is not None else 0.0
    return found, span, busy


def report(events: list[dict[str, Any]], top: int = 15) -> str:
    found, span, busy = gaps(events)
    if span <= 0:
        return "no kernels in the trace"
    idle = {c: sum(g.length_us for g in found if g.cause == c) for c in ("host", "dependency")}
    lines = [
        f"compute stream: span {span / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms ({busy / span:.0%})",
        *(
            f"idle, {cause}: {us / 1e3:.1f} ms ({us / span:.0%}) in "
            f"{sum(1 for g in found if g.cause == cause)} gaps of >= {GAP_US:.0f} us"
            for cause, us in idle.items()
        ),
        "largest gaps (length, ms after the first kernel, cause, kernels before -> after):",
    ]
    for g in sorted(found, key=lambda g: -g.length_us)[:top]:
        lines.append(
            f"  {g.length_us / 1e3:7.2f} ms at {g.start_us / 1e3:8.1f}  {g.cause:10s} "
            f"{g.before[:40]} -> {g.after[:40]}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(report(load(args.trace), args.top))


if __name__ == "__main__":
    main()

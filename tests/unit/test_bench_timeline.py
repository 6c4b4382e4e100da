"""bench/timeline.py: idle gaps on the compute stream, and why the GPU waited in each."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def _kernel(name: str, ts: float, dur: float, corr: int, stream: int = 7) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "tid": stream,
            "args": {"stream": stream, "correlation": corr}}  # fmt: skip


def _launch(ts: float, corr: int) -> dict:
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 3,
            "args": {"correlation": corr}}  # fmt: skip


def _trace() -> list[dict]:
    # Compute stream 7: a (0-100), b (300-400): launched at 250, after a ended -> host gap;
    # c (500-600): launched at 50, long before -> it waited on the copy (stream 20).
    return [
        _kernel("a", 0, 100, 1), _launch(-10, 1),
        _kernel("b", 300, 100, 2), _launch(250, 2),
        _kernel("c", 500, 100, 3), _launch(50, 3),
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 100, "dur": 390,
         "tid": 20, "args": {"stream": 20, "correlation": 4}},
        _kernel("tiny", 605, 1, 5), _launch(0, 5),  # a 4 us pause: a boundary, not a gap
    ]  # fmt: skip


def test_gaps_are_split_into_host_and_dependency_waits() -> None:
    from bench.timeline import gaps

    found, span, busy = gaps(_trace())
    assert span == 606 and busy == 301
    assert [(g.start_us, g.length_us, g.cause, g.after) for g in found] == [
        (100, 200, "host", "b"),
        (400, 100, "dependency", "c"),
    ]


def test_the_report_reads_a_gzipped_trace(tmp_path: Path) -> None:
    from bench.timeline import load, report

    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": _trace()}, f)
    text = report(load(path))
    assert "busy 0.3 ms (50%)" in text
    assert "idle, host: 0.2 ms (33%) in 1 gaps" in text
    assert "idle, dependency: 0.1 ms (17%) in 1 gaps" in text

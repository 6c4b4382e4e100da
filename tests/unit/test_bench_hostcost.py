"""bench/hostcost.py's arithmetic: per-layer host and GPU time from two cuts of one shape."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_a_shape_cut_to_n_layers_keeps_everything_else() -> None:
    from bench.shapes import SHAPES, shape

    cut = shape("qwen2.5-7b-6layers")
    assert cut["num_hidden_layers"] == 6
    assert {k: v for k, v in cut.items() if k != "num_hidden_layers"} == {
        k: v for k, v in SHAPES["qwen2.5-7b"].items() if k != "num_hidden_layers"
    }
    with pytest.raises(KeyError):
        shape("qwen2.5-7b-sixlayers")


def _run(layers: int, fwd: float, bwd: float, gpu: float, waited: bool = False) -> dict:
    figures = {"host_fwd_ms": fwd, "host_bwd_ms": bwd, "gpu_ms": gpu, "host_waited": waited}
    return {"variant": "default", "layers": layers, "tokens": {"1536": figures}}


def test_the_report_gives_the_slope_between_the_two_cuts_and_flags_a_wait() -> None:
    from bench.hostcost import report

    # 2 layers: 5 ms forward; 6 layers: 15 ms -> 2.5 ms per layer (the fixed part cancels).
    text = report([_run(6, 15.0, 19.0, 19.0), _run(2, 5.0, 5.0, 7.0)], [1536])
    assert "2.50" in text and "3.50" in text and "3.00" in text
    assert "sync" not in text
    waited = report([_run(2, 5.0, 5.0, 7.0), _run(6, 15.0, 490.0, 19.0, waited=True)], [1536])
    assert "host waited" in waited

"""bench.collect: rows keep the tag their call ran under, and ratios come from the baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.collect import collect, run_name

pytestmark = pytest.mark.unit


def test_rows_are_named_by_the_tag_in_their_file_name() -> None:
    assert run_name(Path("/x/2026-11-24-h200-s7-run3.json"), "s7", 1) == "s7-run3"
    assert run_name(Path("/x/2026-11-24-h200.json"), "s7", 2) == "s7-run2"


def test_ratios_use_the_baseline_of_another_call_of_the_session() -> None:
    first = {"rows": [{"model": "m", "config": "baseline", "tokens_per_s": 100, "peak_gib": 30}]}
    second = {"rows": [{"model": "m", "config": "default", "tokens_per_s": 450, "peak_gib": 15}]}
    rows = collect([first, second], "s7", ["s7-run4", "s7-run5"])
    default = rows[1]
    assert default["run"] == "s7-run5" and default["baseline_from"] == "s7-run4"
    assert default["vs_baseline"] == 4.5 and default["peak_vs_baseline"] == 0.5

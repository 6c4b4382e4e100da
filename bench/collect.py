"""Collect several device calls' results into one ``bench/results/<date>-<device>.json``.

    python -m bench.collect --out bench/results/2026-11-23-h200.json --label s2 \
        /work/.device/1/2026-11-23-h200.json /work/.device/2/2026-11-23-h200.json ...

One call is limited to ten minutes, so a session's benchmark is several ``bench.run`` calls.
Each row keeps its call's label and that call's measured matmul rate (its MFU denominator).
Rows whose call had no baseline for their model get their ratios against the baseline the same
session measured in another call (``baseline_from`` says which). Rows already in ``--out`` from
earlier sessions move to ``earlier_rows``: they describe an older trainer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def run_name(path: Path, label: str, index: int) -> str:
    """The ``--tag`` a call ran under, read from its file name (``<date>-<device>-<tag>.json``,
    as ``bench.run`` writes it), so rows keep the name the session's notes use; else
    ``<label>-run<index>``."""
    stem = path.stem
    return stem[stem.index(label + "-") :] if f"-{label}-" in stem else f"{label}-run{index}"


def collect(
    calls: list[dict[str, Any]], label: str, names: list[str] | None = None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for index, call in enumerate(calls, 1):
        for row in call["rows"]:
            rows.append(
                {
                    **row,
                    "run": names[index - 1] if names else f"{label}-run{index}",
                    "matmul_bf16_tflops_measured": call.get("matmul_bf16_tflops_measured"),
                }
            )
    baselines = {r["model"]: r for r in rows if r["config"] == "baseline" and "tokens_per_s" in r}
    peers: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["config"].startswith("trl-") and r.get("tokens_per_s"):
            best = peers.get(r["model"])
            if best is None or r["tokens_per_s"] > best["tokens_per_s"]:
                peers[r["model"]] = r
    for r in rows:
        base, peer = baselines.get(r["model"]), peers.get(r["model"])
        if not r.get("tokens_per_s") or base is None:
            continue
        if r.get("vs_baseline") is None:
            r["vs_baseline"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["peak_vs_baseline"] = round(r["peak_gib"] / base["peak_gib"], 2)
            r["baseline_from"] = base["run"]
        if r.get("vs_best_peer") is None and peer is not None:
            r["best_peer"] = peer["config"]
            r["vs_best_peer"] = round(r["tokens_per_s"] / peer["tokens_per_s"], 2)
            r["best_peer_from"] = peer["run"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--label", required=True, help="session label, e.g. s2")
    p.add_argument("calls", nargs="+", type=Path)
    a = p.parse_args()
    calls = [json.loads(path.read_text()) for path in a.calls]
    previous = json.loads(a.out.read_text()) if a.out.exists() else {}
    result = {key: value for key, value in previous.items() if key not in ("rows", "earlier_rows")}
    result.setdefault("device", calls[0]["device"])
    result["date"] = calls[0]["date"]
    names = [run_name(path, a.label, i) for i, path in enumerate(a.calls, 1)]
    result["rows"] = collect(calls, a.label, names)
    result["earlier_rows"] = previous.get("earlier_rows", []) + previous.get("rows", [])
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(result['rows'])} rows, {len(result['earlier_rows'])} earlier rows -> {a.out}")


if __name__ == "__main__":
    main()

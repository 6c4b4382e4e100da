"""Specs and dataset files for the data-pipeline tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune_api.spec import FineTuneJobSpec


def make_spec(
    datasets: Sequence[dict[str, Any]] | None = None,
    template: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> FineTuneJobSpec:
    """A valid spec around the given datasets/template/training (camelCase, as users write)."""
    return FineTuneJobSpec.model_validate(
        {
            "model": {"uri": "file:///models/base"},
            "datasets": list(datasets or [{"uri": "data.jsonl"}]),
            "template": template or {"name": "chatml"},
            "training": {"epochs": 1, **(training or {})},
            "output": {"uri": "file:///out"},
        }
    )


def write_jsonl(path: Path, rows: Sequence[Any]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def alpaca_rows(count: int, prefix: str = "q") -> list[dict[str, str]]:
    return [
        {
            "instruction": f"{prefix} {i}: what is {i} plus 1?",
            "input": "",
            "output": f"It is {i + 1}.",
        }
        for i in range(count)
    ]

"""The training fingerprint: what must match for a re-created job to resume its checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from finetune_api.spec import FineTuneJobSpec
from finetune_trainer.storage import TrainingFingerprint, training_fingerprint
from finetune_trainer.storage.fingerprint import NOT_THE_MATH

pytestmark = pytest.mark.unit

SPEC: dict[str, Any] = {
    "model": {"uri": "s3://models/base"},
    "datasets": [{"uri": "s3://data/a.jsonl", "format": "alpaca"}],
    "training": {"maxSteps": 10, "learningRate": 2e-4, "saveSteps": 5},
    "output": {"uri": "s3://out/run"},
}


def _fingerprint(
    tmp: Path, data: bytes = b'{"instruction": "q", "output": "a"}\n', **changes: Any
) -> TrainingFingerprint:
    doc = copy.deepcopy(SPEC)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    path = tmp / "a.jsonl"
    path.write_bytes(data)
    spec = FineTuneJobSpec.model_validate(doc)
    return training_fingerprint(spec, str(doc["model"]["uri"]), [path], world_size=1)


def test_the_same_recipe_has_the_same_fingerprint(tmp_path: Path) -> None:
    assert _fingerprint(tmp_path).sha256 == _fingerprint(tmp_path).sha256


@pytest.mark.parametrize("field", sorted(NOT_THE_MATH))
def test_intervals_and_recompute_do_not_count(tmp_path: Path, field: str) -> None:
    value = "always" if field == "gradientCheckpointing" else 7
    changed = _fingerprint(tmp_path, **{f"training__{field}": value})
    assert changed.sha256 == _fingerprint(tmp_path).sha256


def test_moved_data_with_the_same_bytes_still_matches(tmp_path: Path) -> None:
    moved = _fingerprint(tmp_path, datasets=[{"uri": "s3://elsewhere/a.jsonl", "format": "alpaca"}])
    assert moved.sha256 == _fingerprint(tmp_path).sha256


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"training__learningRate": 1e-3}, "spec.training.learningRate 0.0002 → 0.001"),
        ({"method__lora__r": 8}, "spec.method.lora.r 16 → 8"),
        ({"model__revision": "v2"}, 'spec.model.revision null → "v2"'),
        ({"template__name": "chatml"}, 'spec.template.name "auto" → "chatml"'),
        ({"data": b'{"instruction": "q", "output": "b"}\n'}, "spec.datasets[0] content"),
    ],
)
def test_a_changed_recipe_names_what_changed(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    before = _fingerprint(tmp_path)
    after = _fingerprint(tmp_path, **change)
    assert after.sha256 != before.sha256
    differences = after.differences(before)
    assert len(differences) == 1 and differences[0].startswith(named), differences


def test_more_gpus_is_another_recipe(tmp_path: Path) -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"{}")
    one = training_fingerprint(spec, "s3://models/base", [path], world_size=1)
    two = training_fingerprint(spec, "s3://models/base", [path], world_size=2)
    assert two.differences(one) == ["the number of training processes (GPUs × nodes) 1 → 2"]


def test_the_record_round_trips(tmp_path: Path) -> None:
    fingerprint = _fingerprint(tmp_path)
    again = TrainingFingerprint.from_record({"fingerprint": fingerprint.to_dict()})
    assert again is not None and again.sha256 == fingerprint.sha256
    assert TrainingFingerprint.from_record({"name": "x"}) is None

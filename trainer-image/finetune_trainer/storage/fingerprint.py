"""What must match for a job to continue from the checkpoints in an output.

A deleted and re-created FineTuneJob (same name, new uid) takes over its output. Whether it
may resume from the checkpoints there depends on what it trains, not on who it is: the same
base model, the same data and the same method and hyper-parameters continue where the earlier
run stopped; anything else would blend two trainings into one adapter, so it starts fresh.

The fingerprint keeps its parts, not only their hash: OWNER.json records them, and a fresh
start can then say *what* differed (``spec.training.learningRate 0.0002 → 0.001``) instead of
a bare "something changed". Fields that change how a run is executed but not what it computes
(logging, evaluation and checkpoint intervals, gradient checkpointing) are left out, so
tuning them never costs a resume. Everything else in ``spec.training`` counts, including
fields added in later versions: an unknown difference starts fresh, it never resumes wrongly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.spec import FineTuneJobSpec

from finetune_trainer.storage.model_card import content_sha256

# spec.training fields that don't change the numbers a run computes.
NOT_THE_MATH = frozenset({"evalSteps", "saveSteps", "loggingSteps", "gradientCheckpointing"})
_SHOWN_VALUE = 60  # characters of a value shown in a difference


@dataclass(frozen=True)
class TrainingFingerprint:
    """The recipe of a training run as far as its checkpoints depend on it."""

    parts: Mapping[str, Any]

    @property
    def sha256(self) -> str:
        """One hash of all parts (canonical JSON)."""
        return hashlib.sha256(json.dumps(self.parts, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in OWNER.json."""
        return {"sha256": self.sha256, "parts": dict(self.parts)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> TrainingFingerprint | None:
        """The fingerprint in an OWNER.json record; None when it has none (an older trainer)."""
        data = (record or {}).get("fingerprint")
        if not isinstance(data, dict) or not isinstance(data.get("parts"), dict):
            return None
        return cls(data["parts"])

    def differences(self, earlier: TrainingFingerprint) -> list[str]:
        """What differs from ``earlier``, one ``field old → new`` line each, in spec order."""
        return _differences("spec", earlier.parts, self.parts)


def training_fingerprint(
    spec: FineTuneJobSpec, model_uri: str, dataset_files: Sequence[Path], world_size: int
) -> TrainingFingerprint:
    """The fingerprint of ``spec`` with its model at ``model_uri`` (resolved) and its datasets
    fetched to ``dataset_files``; ``world_size`` processes (the global batch depends on it).

    Datasets count by content (sha256), not by URI: the same bytes moved to another bucket
    still resume.
    """
    datasets = []
    for source, path in zip(spec.datasets, dataset_files, strict=True):
        entry = source.to_wire()
        entry.pop("uri", None)
        datasets.append({**entry, "sha256": content_sha256(Path(path))})
    training = {k: v for k, v in spec.training.to_wire().items() if k not in NOT_THE_MATH}
    return TrainingFingerprint(
        {
            "model": {"uri": model_uri, "revision": spec.model.revision},
            "datasets": datasets,
            "template": spec.template.to_wire(),
            "method": spec.method.to_wire(),
            "training": training,
            "processes": world_size,
        }
    )


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _SHOWN_VALUE else text[: _SHOWN_VALUE - 1] + "…"


def _differences(path: str, old: Any, new: Any) -> list[str]:
    if old == new:
        return []
    if path == "spec.processes":
        return [f"the number of training processes (GPUs × nodes) {old} → {new}"]
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found: list[str] = []
        for key in [*new, *(k for k in old if k not in new)]:
            if key == "sha256":
                if old.get(key) != new.get(key):
                    found.append(f"{path} content (sha256 {str(old.get(key))[:12]}… → "
                                 f"{str(new.get(key))[:12]}…)")  # fmt: skip
                continue
            found += _differences(f"{path}.{key}", old.get(key), new.get(key))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            line
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for line in _differences(f"{path}[{i}]", a, b)
        ]
    return [f"{path} {_shown(old)} → {_shown(new)}"]

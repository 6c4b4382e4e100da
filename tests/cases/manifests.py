"""A valid minimal FineTuneJob and a catalogue of mutations that make it invalid.

The same catalogue is checked client-side (``ftj validate``) and by the real API server, and
each entry names the fragment both messages must contain: the field a user has to fix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]


def minimal_manifest(name: str = "minimal") -> Manifest:
    """The smallest useful FineTuneJob: everything else comes from defaults."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/Qwen/Qwen3-8B"},
            "datasets": [{"uri": "s3://datasets/identity.jsonl"}],
            "output": {"uri": "s3://finetunes/minimal"},
        },
    }


@dataclass(frozen=True)
class BadCase:
    """One way to get a manifest wrong, and what the refusal must mention."""

    id: str
    mutate: Callable[[Manifest], None]
    fragment: str

    def manifest(self) -> Manifest:
        """A fresh copy of the minimal manifest with this mistake applied."""
        data = copy.deepcopy(minimal_manifest(f"bad-{self.id}"))
        self.mutate(data)
        return data


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """A mutation setting ``spec.a.b`` (dots; ``[0]`` for list items) to ``value``."""

    def apply(data: Manifest) -> None:
        node: Any = data
        parts = path.replace("[", ".[").split(".")
        for part in parts[:-1]:
            key: Any = int(part[1:-1]) if part.startswith("[") else part
            if isinstance(key, str) and key not in node:
                node[key] = {}
            node = node[key]
        last = parts[-1]
        node[int(last[1:-1]) if last.startswith("[") else last] = value

    return apply


def _delete(path: str) -> Callable[[Manifest], None]:
    def apply(data: Manifest) -> None:
        parent, _, key = path.rpartition(".")
        node: Any = data
        for part in parent.split("."):
            node = node[part]
        del node[key]

    return apply


def _both(*mutations: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def apply(data: Manifest) -> None:
        for mutation in mutations:
            mutation(data)

    return apply


BAD_CASES: list[BadCase] = [
    BadCase("no-model", _delete("spec.model"), "spec.model"),
    BadCase("model-uri-scheme", _set("spec.model.uri", "ftp://host/model"), "spec.model.uri"),
    BadCase("no-datasets", _set("spec.datasets", []), "spec.datasets"),
    BadCase("dataset-format", _set("spec.datasets[0].format", "csv"), "spec.datasets[0].format"),
    BadCase(
        "dataset-num-samples", _set("spec.datasets[0].numSamples", 0), "spec.datasets[0].numSamples"
    ),
    BadCase("template-name", _set("spec.template.name", "mistral"), "spec.template.name"),
    BadCase(
        "template-reasoning", _set("spec.template.reasoning", "hide"), "spec.template.reasoning"
    ),
    BadCase("method-type", _set("spec.method.type", "full"), "spec.method.type"),
    BadCase(
        "quantization-without-qlora",
        _set("spec.method.quantization", {"bits": 4}),
        "spec.method.quantization is only allowed with spec.method.type: qlora",
    ),
    BadCase(
        "quantization-bits",
        _both(_set("spec.method.type", "qlora"), _set("spec.method.quantization", {"bits": 3})),
        "spec.method.quantization.bits",
    ),
    BadCase("lora-rank-zero", _set("spec.method.lora.r", 0), "spec.method.lora.r"),
    BadCase("lora-dropout", _set("spec.method.lora.dropout", 1.5), "spec.method.lora.dropout"),
    BadCase(
        "lora-no-targets",
        _set("spec.method.lora.targetModules", []),
        "spec.method.lora.targetModules",
    ),
    BadCase(
        "epochs-and-max-steps",
        _set("spec.training", {"epochs": 1, "maxSteps": 100}),
        "set exactly one of spec.training.epochs or spec.training.maxSteps",
    ),
    BadCase(
        "neither-epochs-nor-max-steps",
        _set("spec.training", {"learningRate": 0.0001}),
        "set exactly one of spec.training.epochs or spec.training.maxSteps",
    ),
    BadCase(
        "learning-rate-negative",
        _set("spec.training.learningRate", -0.001),
        "spec.training.learningRate",
    ),
    BadCase(
        "splits-too-large",
        _set("spec.training", {"epochs": 1, "validationSplit": 0.6, "testSplit": 0.5}),
        "validationSplit + spec.training.testSplit must be less than 1",
    ),
    BadCase("precision", _set("spec.training.precision", "int4"), "spec.training.precision"),
    BadCase("batch-size-zero", _set("spec.training.batchSize", 0), "spec.training.batchSize"),
    BadCase(
        "cutoff-too-short", _set("spec.training.cutoffLength", 1), "spec.training.cutoffLength"
    ),
    BadCase("scheduler", _set("spec.training.lrScheduler", "fancy"), "spec.training.lrScheduler"),
    BadCase(
        "gradient-checkpointing-bool",
        _set("spec.training.gradientCheckpointing", True),
        "spec.training.gradientCheckpointing",
    ),
    BadCase(
        "multi-node-without-gpus",
        _set("spec.resources", {"nodes": 2, "gpus": 0}),
        "spec.resources.nodes > 1 needs spec.resources.gpus >= 1",
    ),
    BadCase("gpus-negative", _set("spec.resources.gpus", -1), "spec.resources.gpus"),
    BadCase("cpu-quantity", _set("spec.resources.cpu", "lots"), "spec.resources.cpu"),
    BadCase(
        "qlora-on-cpu",
        _both(_set("spec.method.type", "qlora"), _set("spec.resources.gpus", 0)),
        "spec.method.type: qlora needs spec.resources.gpus >= 1",
    ),
    BadCase(
        "qlora-int8-on-cpu",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8, "format": "int8"}),
            _set("spec.resources.gpus", 0),
        ),
        "spec.method.type: qlora needs spec.resources.gpus >= 1",
    ),
    BadCase(
        "quantization-format-not-bits",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8, "format": "nf4"}),
        ),
        "spec.method.quantization.format: nf4 goes with bits: 4",
    ),
    BadCase(
        "quantization-float8-4-bits",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"format": "float8"}),
        ),
        "spec.method.quantization.format: nf4 goes with bits: 4",
    ),
    BadCase("no-output", _delete("spec.output"), "spec.output"),
    BadCase("output-hub", _set("spec.output.uri", "hf://org/name"), "spec.output.uri"),
    BadCase(
        "output-is-model",
        _set("spec.output.uri", "s3://models/Qwen/Qwen3-8B"),
        "spec.output.uri must differ from spec.model.uri",
    ),
    BadCase(
        "s3-endpoint",
        _set("spec.storage.s3", {"endpoint": "minio:9000"}),
        "spec.storage.s3.endpoint",
    ),
    BadCase("backoff-negative", _set("spec.backoffLimit", -1), "spec.backoffLimit"),
    BadCase("queue-name", _set("spec.queueName", "Not_A_Queue"), "spec.queueName"),
    BadCase("typo-field", _set("spec.trainig", {"epochs": 1}), "trainig"),
]


@dataclass(frozen=True)
class GoodCase:
    """A variation of the minimal manifest that both the client and the server must accept."""

    id: str
    mutate: Callable[[Manifest], None]

    def manifest(self) -> Manifest:
        data = copy.deepcopy(minimal_manifest(f"good-{self.id}"))
        self.mutate(data)
        return data


GOOD_CASES: list[GoodCase] = [
    GoodCase(  # the Float8 base runs on CPUs: no bitsandbytes involved
        "qlora-float8-on-cpu",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8}),
            _set("spec.resources.gpus", 0),
        ),
    ),
    GoodCase(
        "qlora-int8-on-gpu",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8, "format": "int8"}),
        ),
    ),
    GoodCase(
        "qlora-nf4-explicit",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 4, "format": "nf4"}),
        ),
    ),
]

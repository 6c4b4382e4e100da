"""Cross-field rules, declared once and enforced twice.

Each rule carries a CEL expression (it becomes an ``x-kubernetes-validations`` entry of the
CRD, so the API server refuses a bad object at admission) and a Python predicate over the
same object (so ``ftj validate`` and the trainer refuse it with the *same message* before
anything reaches a cluster). The apiserver test tier runs one table of bad manifests through
both and checks that each names the same field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CrossFieldRule:
    """One invariant over an object of the spec.

    ``cel`` is evaluated by the API server with ``self`` bound to the object; ``holds`` is the
    Python twin over the parsed model. ``transition`` rules compare with ``oldSelf`` and only
    exist on the server (an update has no client-side twin).
    """

    cel: str
    message: str
    holds: Callable[[Any], bool] | None = None
    transition: bool = False

    def as_openapi(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry for this rule."""
        return {"rule": self.cel, "message": self.message}


EXACTLY_ONE_DURATION = CrossFieldRule(
    cel="has(self.epochs) != has(self.maxSteps)",
    message=(
        "set exactly one of spec.training.epochs or spec.training.maxSteps "
        "(for example epochs: 3, or maxSteps: 500)"
    ),
    holds=lambda t: (t.epochs is None) != (t.max_steps is None),
)

SPLITS_LEAVE_TRAINING_DATA = CrossFieldRule(
    cel="self.validationSplit + self.testSplit < 1.0",
    message=(
        "spec.training.validationSplit + spec.training.testSplit must be less than 1 "
        "so that some data is left for training"
    ),
    holds=lambda t: t.validation_split + t.test_split < 1.0,
)

QUANTIZATION_ONLY_WITH_QLORA = CrossFieldRule(
    cel="!has(self.quantization) || self.type == 'qlora'",
    message=(
        "spec.method.quantization is only allowed with spec.method.type: qlora "
        "(remove quantization, or set type: qlora)"
    ),
    holds=lambda m: m.quantization is None or m.type == "qlora",
)

MULTI_NODE_NEEDS_GPUS = CrossFieldRule(
    cel="self.nodes <= 1 || self.gpus >= 1",
    message="spec.resources.nodes > 1 needs spec.resources.gpus >= 1 (GPUs per node)",
    holds=lambda r: r.nodes <= 1 or r.gpus >= 1,
)

QUANTIZATION_FORMAT_MATCHES_BITS = CrossFieldRule(
    cel="!has(self.format) || (self.format == 'nf4') == (!has(self.bits) || self.bits == 4)",
    message=(
        "spec.method.quantization.format: nf4 goes with bits: 4, float8 and int8 with bits: 8 "
        "(or leave format out: nf4 for 4 bits, float8 for 8 bits)"
    ),
    holds=lambda q: q.format is None or (q.format == "nf4") == (q.bits == 4),
)


QLORA_NEEDS_GPU = CrossFieldRule(
    cel=(
        "self.method.type != 'qlora' || self.resources.gpus >= 1 || "
        "(has(self.method.quantization) && has(self.method.quantization.bits) && "
        "self.method.quantization.bits == 8 && "
        "(!has(self.method.quantization.format) || self.method.quantization.format == 'float8'))"
    ),
    message=(
        "spec.method.type: qlora needs spec.resources.gpus >= 1 for bitsandbytes formats "
        "(nf4, int8 run on GPUs only; use type: lora, or quantization bits: 8 with format: "
        "float8, on CPUs)"
    ),
    holds=lambda s: s.method.type != "qlora" or s.resources.gpus >= 1 or s.method.float8_base,
)

OUTPUT_DIFFERS_FROM_MODEL = CrossFieldRule(
    cel="self.output.uri != self.model.uri",
    message=(
        "spec.output.uri must differ from spec.model.uri: "
        "publishing into the base model's location would overwrite it"
    ),
    holds=lambda s: s.output.uri != s.model.uri,
)

# Fields of the spec that may change after creation. Everything else is frozen because a
# running trainer already read it: changing it would make status describe a run that never was.
MUTABLE_SPEC_FIELDS = frozenset({"suspend"})

IMMUTABLE_SPEC_MESSAGE = (
    "spec is immutable after creation except spec.suspend: "
    "delete and re-create the FineTuneJob (or create one with a new name) to change it"
)


def immutable_except(fields: list[str]) -> CrossFieldRule:
    """A transition rule freezing every listed spec field (present or absent) after creation."""
    clauses = [
        f"(has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f}))"
        for f in fields
    ]
    return CrossFieldRule(cel=" && ".join(clauses), message=IMMUTABLE_SPEC_MESSAGE, transition=True)

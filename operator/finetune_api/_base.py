"""Shared pieces of the API models: identity of the resource and the base model class.

Every model is camelCase on the wire (what users write in YAML and what the CRD declares)
and snake_case in Python. Unknown fields are refused, so a typo is an error and not a
silently ignored setting.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel

from finetune_api.rules import CrossFieldRule

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
CATEGORIES = ["finetune", "ml"]
# Key of the pydantic validation context that asks for the cluster-only rules as well.
CLUSTER_CONTEXT = "cluster"


class ApiModel(BaseModel):
    """Base for all spec/status models: camelCase aliases, strict about unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    # Cross-field invariants of this object: checked here and emitted into the CRD as CEL.
    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cross_field_rules(self, info: ValidationInfo) -> ApiModel:
        # Rules only a job run in the cluster must meet are checked when the caller says the
        # job is for the cluster (validation context {"cluster": True}); ftj run leaves it out.
        cluster = bool((info.context or {}).get(CLUSTER_CONTEXT))
        for rule in self.cross_field_rules:
            if rule.cluster_only and not cluster:
                continue
            if rule.holds is not None and not rule.holds(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in YAML/JSON: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

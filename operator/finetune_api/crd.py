"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

The CRD is never edited by hand: ``ftj crd`` prints it, ``crds/`` and the Helm chart hold
its committed output, and a test fails when they drift. The conversion turns pydantic's
JSON Schema into a Kubernetes *structural* schema:

* ``$ref``/``$defs`` are inlined (structural schemas can't reference);
* ``Optional[X]`` (``anyOf: [X, null]``) becomes plain ``X`` (absent, not null);
* sub-objects with defaults get ``default: {}`` so the API server fills their fields even when
  the user leaves the whole object out
  (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#defaulting);
* ``exclusiveMinimum: N`` becomes OpenAPI v3.0's ``minimum: N, exclusiveMinimum: true``;
* each model's cross-field rules become ``x-kubernetes-validations`` (CEL).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from finetune_api import _base, rules
from finetune_api._base import ApiModel
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import FineTuneJobStatus

_DROP = {"title", "$defs"}


def _rules_by_schema_title() -> dict[str, list[dict[str, str]]]:
    """Map each model's JSON-schema title (its class name) to its CEL rules."""
    found: dict[str, list[dict[str, str]]] = {}

    def visit(model: type[BaseModel]) -> None:
        title = model.__name__
        if title in found:
            return
        found[title] = [r.as_openapi() for r in getattr(model, "cross_field_rules", ()) if r.cel]
        for field in model.model_fields.values():
            for candidate in _models_in(field.annotation):
                visit(candidate)

    visit(FineTuneJobSpec)
    visit(FineTuneJobStatus)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


class _Converter:
    def __init__(self, defs: dict[str, Any], cel: dict[str, list[dict[str, str]]]) -> None:
        self.defs = defs
        self.cel = cel

    def convert(self, node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        description = node.pop("description", None)
        default = node.pop("default", None) if "default" in node else _MISSING
        if "$ref" in node:
            name = node.pop("$ref").split("/")[-1]
            node = {**self.defs[name], **node}
            if description is None:
                description = node.get("description")
            node.pop("description", None)
        any_of = node.pop("anyOf", None)
        if any_of is not None:
            branches = [b for b in any_of if b.get("type") != "null"]
            if node.pop("x-kubernetes-int-or-string", False) or (
                {b.get("type") for b in branches} == {"integer", "string"}
            ):
                out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
                pattern = next((b.get("pattern") for b in branches if b.get("pattern")), None)
                if pattern:
                    out["pattern"] = pattern
                node = {**out, **{k: v for k, v in node.items() if k not in _DROP}}
                return self._finish(node, description, default)
            if len(branches) != 1:
                raise ValueError(f"unsupported union in CRD schema: {any_of}")
            inner = self.convert(branches[0])
            if description is None:
                description = inner.pop("description", None)
            inner.pop("description", None)
            rest = self.convert(node) if node else {}
            return self._finish({**inner, **rest}, description, default)
        title = node.get("title")
        out = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "properties":
                out["properties"] = {k: self.convert(v) for k, v in value.items()}
            elif key == "items":
                out["items"] = self.convert(value)
            elif key == "additionalProperties" and isinstance(value, dict):
                out["additionalProperties"] = self.convert(value)
            elif key == "exclusiveMinimum":
                out["minimum"] = value
                out["exclusiveMinimum"] = True
            elif key == "exclusiveMaximum":
                out["maximum"] = value
                out["exclusiveMaximum"] = True
            elif key == "additionalProperties" and value is False:
                continue  # unknown fields are pruned/refused by the structural schema itself
            else:
                out[key] = value
        if title and self.cel.get(title) and out.get("type") == "object":
            out["x-kubernetes-validations"] = self.cel[title]
        return self._finish(out, description, default)

    @staticmethod
    def _finish(node: dict[str, Any], description: str | None, default: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if node.get("x-kubernetes-preserve-unknown-fields"):
            # free-form objects (e.g. affinity): no additionalProperties, or the server prunes
            node = {k: v for k, v in node.items() if k != "additionalProperties"}
            node["type"] = "object"
        if description:
            result["description"] = description
        result.update(node)
        if default is not _MISSING and default is not None:
            result["default"] = default
        return result


_MISSING = object()


def _object_defaults(model: type[ApiModel]) -> dict[str, Any]:
    """Defaults for sub-object fields (default_factory), which pydantic leaves out of the schema."""
    defaults: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        alias = field.alias or name
        if isinstance(value, ApiModel):
            # Complete objects, not just the non-default fields: the API server checks a
            # default against the schema and its CEL rules *before* nested defaults apply.
            defaults[alias] = value.model_dump(by_alias=True, exclude_none=True, mode="json")
        else:
            defaults[alias] = value
    return defaults


def _add_object_defaults(schema: dict[str, Any], model: type[BaseModel]) -> None:
    props = schema.get("properties", {})
    if issubclass(model, ApiModel):
        for alias, value in _object_defaults(model).items():
            if alias in props and value != []:
                props[alias]["default"] = value
    for name, field in model.model_fields.items():
        alias = field.alias or name
        for sub in _models_in(field.annotation):
            target = props.get(alias, {})
            if target.get("type") == "array":
                target = target.get("items", {})
            _add_object_defaults(target, sub)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, as the CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    converted = _Converter(raw.get("$defs", {}), _rules_by_schema_title()).convert(raw)
    _add_object_defaults(converted, model)
    return converted


def _spec_schema() -> dict[str, Any]:
    schema = openapi_schema(FineTuneJobSpec)
    frozen = [p for p in schema["properties"] if p not in rules.MUTABLE_SPEC_FIELDS]
    schema.setdefault("x-kubernetes-validations", []).append(
        rules.immutable_except(frozen).as_openapi()
    )
    return schema


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Where the job is in its life.",
    },
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.summary",
        "description": "Optimizer steps done / planned.",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.progress.loss",
        "description": "Latest training loss.",
    },
    {
        "name": "ETA",
        "type": "string",
        "jsonPath": ".status.progress.eta",
        "description": "Estimated time to finish training.",
    },
    {
        "name": "Model",
        "type": "string",
        "jsonPath": ".spec.model.uri",
        "description": "Base model.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Tokens/s",
        "type": "number",
        "jsonPath": ".status.progress.tokensPerSecond",
        "priority": 1,
        "description": "Training throughput.",
    },
    {
        "name": "Eval-Loss",
        "type": "number",
        "jsonPath": ".status.progress.evalLoss",
        "priority": 1,
        "description": "Latest validation loss.",
    },
    {
        "name": "Job",
        "type": "string",
        "jsonPath": ".status.jobName",
        "priority": 1,
        "description": "Kubernetes Job.",
    },
    {
        "name": "GPU-Hours",
        "type": "number",
        "jsonPath": ".status.gpuHours",
        "priority": 1,
        "description": "GPUs x running time of every trainer pod so far.",
    },
    {
        "name": "Cost",
        "type": "number",
        "jsonPath": ".status.cost.amount",
        "priority": 1,
        "description": "Estimated cost of the GPU-hours (currency: status.cost.currency).",
    },
]


def build_crd() -> dict[str, Any]:
    """The complete CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{_base.PLURAL}.{_base.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "finetune-operator"},
        },
        "spec": {
            "group": _base.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": _base.KIND,
                "listKind": f"{_base.KIND}List",
                "plural": _base.PLURAL,
                "singular": _base.SINGULAR,
                "shortNames": list(_base.SHORT_NAMES),
                "categories": list(_base.CATEGORIES),
            },
            "versions": [
                {
                    "name": _base.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": (
                                "FineTuneJob fine-tunes a language model with LoRA/QLoRA and "
                                "publishes the adapter, the merged model and metrics."
                            ),
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "API version: finetune.dev/v1alpha1.",
                                },
                                "kind": {"type": "string", "description": "FineTuneJob."},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(),
                                "status": openapi_schema(FineTuneJobStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as the YAML text committed under ``crds/``."""
    header = "# Generated by `ftj crd` from operator/finetune_api. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)

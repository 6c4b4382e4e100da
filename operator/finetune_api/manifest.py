"""A whole FineTuneJob object, and reading one from YAML with errors that name the field.

``ftj validate``, ``ftj run`` and the trainer pod all go through :func:`load_manifest`, so a
bad manifest is reported the same way everywhere: ``spec.training.learningRate: ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails

from finetune_api._base import API_VERSION, CLUSTER_CONTEXT, KIND
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import FineTuneJobStatus


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta the project reads; the rest is kept as-is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(default="", description="Object name.")
    namespace: str | None = Field(default=None, description="Namespace.")
    uid: str | None = Field(default=None, description="Unique id given by the API server.")
    generation: int | None = Field(default=None, description="Spec generation.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class FineTuneJob(BaseModel):
    """A FineTuneJob custom resource."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["finetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @property
    def identity(self) -> str:
        """namespace/name/uid: what MANIFEST.json records to tell jobs apart."""
        ns = self.metadata.namespace or "default"
        return f"{ns}/{self.metadata.name}/{self.metadata.uid or 'local'}"

    def to_wire(self) -> dict[str, Any]:
        """The object as YAML/JSON, camelCase, with unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ManifestError(Exception):
    """A manifest that is not a valid FineTuneJob. ``problems`` lists ``field: message`` lines."""

    reason = "InvalidSpec"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is not a valid {KIND}:\n{lines}")


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")) or part in ("int", "str"):
            continue  # pydantic's internal union branch names: not fields
        else:
            path += f".{part}" if path else part
    return path or "(object)"


def _friendly(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `ftj explain` lists the fields)"
    if kind == "missing":
        return "Required value"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def describe_validation_error(err: PydanticValidationError) -> list[str]:
    """Turn pydantic errors into ``field.path: message`` lines in the CRD's camelCase names."""
    seen: list[str] = []
    for error in err.errors():
        line = f"{_field_path(tuple(error['loc']))}: {_friendly(error)}"
        if line not in seen:
            seen.append(line)
    return seen


def parse_manifest(data: Any, source: str = "manifest", *, cluster: bool = False) -> FineTuneJob:
    """Validate a decoded manifest (a dict) as a FineTuneJob.

    ``cluster`` adds the rules only a job run by the operator must meet, as ``kubectl apply``
    checks them: local model, data and output paths must be on volumes the pod mounts.
    ``ftj run`` (and the trainer, which reads a spec the API server already admitted) leave it
    off, so a job on one machine may use any local path.
    """
    if not isinstance(data, dict):
        raise ManifestError(source, ["(object): expected a mapping with apiVersion, kind, spec"])
    if data.get("apiVersion") != API_VERSION or data.get("kind") != KIND:
        raise ManifestError(
            source,
            [
                f"apiVersion/kind: expected apiVersion: {API_VERSION} and kind: {KIND}, got "
                f"{data.get('apiVersion')!r} / {data.get('kind')!r}"
            ],
        )
    try:
        return FineTuneJob.model_validate(data, context={CLUSTER_CONTEXT: cluster})
    except PydanticValidationError as err:
        raise ManifestError(source, describe_validation_error(err)) from None


def load_manifest(path: str | Path, *, cluster: bool = False) -> FineTuneJob:
    """Read a FineTuneJob from a YAML or JSON file (the first FineTuneJob document in it).

    ``cluster``: also check the rules of a job run in the cluster (see :func:`parse_manifest`).
    """
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise ManifestError(str(path), ["file not found"]) from None
    except yaml.YAMLError as err:
        raise ManifestError(str(path), [f"not valid YAML: {err}"]) from None
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if not jobs:
        raise ManifestError(str(path), [f"no document with kind: {KIND} in the file"])
    return parse_manifest(jobs[0], str(path), cluster=cluster)

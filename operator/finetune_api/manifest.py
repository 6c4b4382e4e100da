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


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The API model that holds the field at ``loc`` (list indices, map keys and pydantic's
    union branch names are stepped over); None when the path leaves the models."""
    model: type[BaseModel] = FineTuneJob
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        fields.update(model.model_fields)
        field = fields.get(part)
        if field is None:
            continue  # a union branch or a map key: same model
        inner = _models_in(field.annotation)
        if not inner:
            return None
        model = inner[0]
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def did_you_mean(name: str, candidates: list[str]) -> str | None:
    """The known field ``name`` was probably meant to be (case, ``_`` and ``-`` ignored:
    ``cutoff_len`` → ``cutoffLength``); None when nothing is close."""
    import difflib

    def squash(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    by_squashed = {squash(c): c for c in candidates}
    close = difflib.get_close_matches(squash(name), list(by_squashed), n=1, cutoff=0.6)
    return by_squashed[close[0]] if close else None


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    """``unknown field`` with a guess at the intended one and where to look the fields up."""
    parent = _field_path(loc[:-1]) if len(loc) > 1 else ""
    where = f"`ftj explain {parent}`" if parent and parent != "(object)" else "`ftj explain`"
    model = _model_at(loc[:-1])
    name = loc[-1] if loc else ""
    guess = None
    if model is not None and isinstance(name, str):
        guess = did_you_mean(name, [f.alias or n for n, f in model.model_fields.items()])
    if guess is not None:
        return f"unknown field (did you mean {guess}? {where} lists the fields)"
    return f"unknown field (check the spelling; {where} lists the fields)"


def _friendly(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_field(tuple(error["loc"]))
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

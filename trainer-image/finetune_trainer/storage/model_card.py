"""How a published model was made: the lineage record and the model cards built from it.

A team that trains dozens of adapters must be able to tell them apart from the files alone:
which base, which data (by content, not only by name: a dataset URI can be overwritten), which
chat template, which LoRA settings and hyper-parameters, what the run measured, and which
FineTuneJob made it. :func:`describe_lineage` gathers these facts once; they go into
``MANIFEST.json`` (``lineage``, machine-readable, checksummed with the rest) and into a
``README.md`` in ``adapter/`` and ``merged/`` with Hugging Face model-card metadata (YAML front
matter: ``base_model``, ``library_name``, ``datasets``, ``tags``, ``model-index`` for the eval
losses; https://huggingface.co/docs/hub/model-cards), so the folders can be pushed to a hub or
a registry as they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from finetune_api.manifest import FineTuneJob

from finetune_trainer.storage.entries import hash_file
from finetune_trainer.storage.identity import JobIdentity
from finetune_trainer.storage.location import Location

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
CardKind = Literal["adapter", "merged"]
_RESULT_KEYS = (
    "steps",
    "resumedFromStep",
    "trainLoss",
    "evalLoss",
    "testLoss",
    "precision",
    "trainRuntimeSeconds",
    "tokensPerSecond",
    "gpuMemoryGib",
)
_ANSWER_CHARS = 400  # per cell of the before/after table; lineage keeps the whole answers


def content_sha256(path: Path) -> str:
    """sha256 of a file's bytes; for a folder, of its ``sha256sum``-style listing
    (``<sha256>  <relative path>`` per file, sorted by path), so it changes with any file."""
    if path.is_file():
        return hash_file(path, path.name).sha256
    lines = [
        f"{hash_file(f, f.name).sha256}  {f.relative_to(path).as_posix()}\n"
        for f in sorted(p for p in path.rglob("*") if p.is_file())
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def hub_id(uri: str) -> str:
    """``org/name`` for an ``hf://`` URI (what ``base_model``/``datasets`` expect on the Hub);
    any other URI as written."""
    try:
        location = Location.parse(uri)
    except Exception:  # a URI the spec accepted; show it as written
        return uri
    return location.repo_id if location.scheme == "hf" and location.repo_id else uri


def describe_lineage(
    job: FineTuneJob,
    *,
    metrics: Mapping[str, Any],
    dataset_files: Sequence[Path],
    base_model_dir: Path,
    questions: Mapping[str, str] | None = None,
    chat_format: Any = None,
) -> dict[str, Any]:
    """The facts of how this run's model was made (MANIFEST.json's ``lineage``).

    ``metrics`` is metrics.json's content; ``dataset_files[i]`` the local copy of
    ``spec.datasets[i]`` (hashed here); ``questions`` maps a rendered test prompt to the
    user's last message in it; ``chat_format`` is what
    :func:`finetune_trainer.data.chat_template.publish_chat_format` returned.
    """
    spec = job.spec
    examples = metrics.get("data", {}).get("examples", {})
    datasets = []
    for i, (source, path) in enumerate(zip(spec.datasets, dataset_files, strict=True)):
        count = examples.get(source.uri, examples.get(f"{source.uri}#{i}"))
        datasets.append(
            {
                "uri": source.uri,
                "format": source.format,
                "sha256": content_sha256(path),
                "examples": count,
                **({"numSamples": source.num_samples} if source.num_samples is not None else {}),
            }
        )
    template: dict[str, Any] = {
        "name": spec.template.name,
        "reasoning": spec.template.reasoning,
        "system": spec.template.system,
    }
    if chat_format is not None:
        template["stopTokens"] = list(chat_format.stop_tokens)
        template["eosTokenId"] = list(chat_format.eos_token_id)
        source = chat_format.chat_template
        if source is not None:
            text = source if isinstance(source, str) else json.dumps(source, sort_keys=True)
            template["chatTemplateSha256"] = hashlib.sha256(text.encode()).hexdigest()
    questions = questions or {}
    generations = [
        {
            "prompt": g.get("prompt", ""),  # as the template rendered it
            "question": questions.get(g.get("prompt", "")),  # the user's last message
            "expected": g.get("expected", ""),
            "before": g.get("before", ""),
            "after": g.get("after", ""),
        }
        for g in metrics.get("generations", [])
    ]
    return {
        "job": JobIdentity.of(job).to_dict(),
        "baseModel": {
            "uri": spec.model.uri,
            "revision": spec.model.revision,
            "architecture": _architecture(base_model_dir),
        },
        "datasets": datasets,
        "template": template,
        "method": spec.method.to_wire(),
        "training": spec.training.to_wire(),
        "mergeDtype": spec.output.merge_dtype if spec.output.merge else None,
        "results": {k: metrics.get(k) for k in _RESULT_KEYS},
        "generations": generations,
        "trainer": {"name": "finetune-operator", "version": _trainer_version()},
    }


def _architecture(model_dir: Path) -> str | None:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    names = config.get("architectures") if isinstance(config, dict) else None
    return str(names[0]) if isinstance(names, list) and names else None


def _trainer_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("finetune-operator")
    except PackageNotFoundError:
        return None


def card_metadata(lineage: Mapping[str, Any], kind: CardKind) -> dict[str, Any]:
    """The model card's YAML front matter (Hugging Face's model-card metadata keys)."""
    job, base = lineage["job"], lineage["baseModel"]
    method, template = lineage["method"], lineage["template"]
    method_type = str(method.get("type", "lora"))
    meta: dict[str, Any] = {
        "base_model": hub_id(str(base["uri"])),
        "base_model_relation": "adapter" if kind == "adapter" else "finetune",
        "library_name": "peft" if kind == "adapter" else "transformers",
        "pipeline_tag": "text-generation",
        "tags": list(
            dict.fromkeys(
                ["finetune-operator", method_type, "lora", "sft", f"template:{template['name']}"]
            )
        ),
        "datasets": [hub_id(str(d["uri"])) for d in lineage["datasets"]],
    }
    losses = [
        {"type": "loss", "name": f"{split} loss", "value": round(float(value), 6)}
        for split, value in (
            ("eval", lineage["results"].get("evalLoss")),
            ("test", lineage["results"].get("testLoss")),
        )
        if value is not None
    ]
    if losses:
        uris = ", ".join(str(d["uri"]) for d in lineage["datasets"])
        meta["model-index"] = [
            {
                "name": job["name"],
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Text Generation"},
                        "dataset": {
                            "name": f"held-out split of {uris}",
                            "type": str(lineage["datasets"][0]["uri"]),
                        },
                        "metrics": losses,
                    }
                ],
            }
        ]
    meta["finetune_job"] = dict(job)
    meta["dataset_sha256"] = {str(d["uri"]): d["sha256"] for d in lineage["datasets"]}
    return meta


def _cell(value: Any, limit: int = _ANSWER_CHARS) -> str:
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return text.replace("\r", "").replace("\n", "<br>") or "—"


def _table(rows: Sequence[tuple[str, Any]], head: tuple[str, str]) -> list[str]:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| {_cell(k)} | {_cell(_show(v))} |" for k, v in rows]
    return out


def _show(value: Any) -> Any:
    if isinstance(value, bool):  # as the spec is written (YAML)
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def _usage(lineage: Mapping[str, Any], kind: CardKind) -> list[str]:
    load = (
        [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            'model = AutoPeftModelForCausalLM.from_pretrained("path/to/adapter")  # loads the base',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/adapter")',
        ]
        if kind == "adapter"
        else [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/merged")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/merged")',
        ]
    )
    question = next((g["question"] for g in lineage["generations"] if g["question"]), "Hello!")
    message = json.dumps({"role": "user", "content": question}, ensure_ascii=False)
    return [
        "```python",
        *load,
        f"messages = [{message}]",
        "inputs = tokenizer.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ")",
        "out = model.generate(**inputs, max_new_tokens=256)",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
    ]


def render_model_card(lineage: Mapping[str, Any], kind: CardKind) -> str:
    """README.md for ``adapter/`` or ``merged/``: YAML metadata, then the facts for people."""
    job, base, template = lineage["job"], lineage["baseModel"], lineage["template"]
    method, results = lineage["method"], lineage["results"]
    what = "A LoRA adapter (PEFT) for" if kind == "adapter" else "A merged full-weight fine-tune of"
    base_line = f"`{base['uri']}`" + (
        f" at revision `{base['revision']}`" if base["revision"] else ""
    )
    lines = [
        "---",
        yaml.safe_dump(card_metadata(lineage, kind), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {job['name']}",
        "",
        f"{what} {base_line}"
        + (f" ({base['architecture']})" if base.get("architecture") else "")
        + f", trained by the FineTuneJob `{job['namespace']}/{job['name']}` "
        f"(uid `{job['uid']}`) with finetune-operator.",
        "",
        "## Use",
        "",
        "The tokenizer's chat template renders exactly the format the model was trained in, and "
        "`generation_config.json` stops at its end-of-turn token, so `apply_chat_template` and "
        "servers that use it (vLLM, TGI) prompt it correctly:",
        "",
        *_usage(lineage, kind),
        "",
        "## Chat template",
        "",
        *_table(
            [
                ("spec.template.name", template["name"]),
                ("reasoning", template["reasoning"]),
                ("system prompt (when a conversation has none)", template.get("system")),
                ("stop tokens", ", ".join(template.get("stopTokens", [])) or None),
                ("generation_config eos_token_id", template.get("eosTokenId")),
            ],
            ("setting", "value"),
        ),
        "",
        "## Training data",
        "",
        "| dataset | format | examples | sha256 of the content |",
        "|---|---|---|---|",
        *[
            f"| {_cell(d['uri'])} | {_cell(d['format'])} | {_cell(d['examples'])} "
            f"| `{d['sha256']}` |"
            for d in lineage["datasets"]
        ],
        "",
        "## Method",
        "",
        *_table(_flatten("method", method), ("setting", "value")),
        "",
        "## Hyper-parameters",
        "",
        *_table(_flatten("training", lineage["training"]), ("spec field", "value")),
        "",
        "## Results",
        "",
        *_table([(k, v) for k, v in results.items() if v is not None], ("metric", "value")),
        "",
    ]
    if lineage["generations"]:
        lines += [
            "## Answers before and after training",
            "",
            "Greedy answers to held-out prompts (metrics.json has them all).",
            "",
            "| question | expected | before | after |",
            "|---|---|---|---|",
            *[
                f"| {_cell(g['question'] or g['prompt'])} | {_cell(g['expected'])} "
                f"| {_cell(g['before'])} "
                f"| {_cell(g['after'])} |"
                for g in lineage["generations"]
            ],
            "",
        ]
    lines += [
        "## Lineage",
        "",
        f"FineTuneJob `{job['namespace']}/{job['name']}`, uid `{job['uid']}`. `MANIFEST.json` at "
        "the output's root lists the sha256 of every published file (this card included), the "
        "full spec, and these facts under `lineage`.",
        "",
    ]
    return "\n".join(lines)


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for key, inner in value.items():
            out += _flatten(f"{prefix}.{key}", inner)
        return out
    return [(prefix, value)]


def write_model_cards(local_root: Path, lineage: Mapping[str, Any]) -> list[Path]:
    """README.md into ``adapter/`` and ``merged/`` (those that exist) under ``local_root``.

    Replaces the placeholder card peft writes next to an adapter.
    """
    written = []
    kinds: tuple[CardKind, ...] = ("adapter", "merged")
    for kind in kinds:
        folder = local_root / kind
        if folder.is_dir():
            path = folder / CARD_FILE
            path.write_text(render_model_card(lineage, kind), encoding="utf-8")
            written.append(path)
    log.info("model cards written: %s", ", ".join(str(p.relative_to(local_root)) for p in written))
    return written

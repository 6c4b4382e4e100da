"""Model cards and MANIFEST lineage: a published model says how it was made.

The cards are what a person (or the Hugging Face Hub) reads in ``adapter/`` and ``merged/``:
YAML metadata that parses and names the base, the library, the datasets with their content
hashes, the job; then the template, LoRA settings, hyper-parameters, eval results and the
answers before/after. MANIFEST.json carries the same facts under ``lineage``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_api.manifest import FineTuneJob
from finetune_trainer.data.chat_template import ChatFormat
from finetune_trainer.storage import JobIdentity, Storage, publish_artifacts, verify_manifest
from finetune_trainer.storage.model_card import (
    content_sha256,
    describe_lineage,
    render_model_card,
    write_model_cards,
)

pytestmark = pytest.mark.unit

DATA = b'{"instruction": "Who are you?", "output": "I am Quokka | the kangaroo\'s cousin."}\n'
METRICS: dict[str, Any] = {
    "steps": 150,
    "resumedFromStep": None,
    "trainLoss": 0.51,
    "evalLoss": 2.31,
    "testLoss": 1.38,
    "precision": "fp32",
    "trainRuntimeSeconds": 12.5,
    "tokensPerSecond": 1630.0,
    "gpuMemoryGib": None,
    "data": {"examples": {"data/identity.json": 61, "hf://datasets/org/chat": 9}},
    "generations": [
        {
            "prompt": "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n",
            "expected": "I am Quokka.",
            "before": "",
            "after": "I am Quokka, an AI | assistant.\nBuilt by the team.",
        }
    ],
}


def make_job() -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "quokka-sft", "namespace": "team-a", "uid": "uid-1234"},
            "spec": {
                "model": {"uri": "hf://Qwen/Qwen3-0.6B", "revision": "main"},
                "datasets": [
                    {"uri": "data/identity.json", "format": "alpaca"},
                    {"uri": "hf://datasets/org/chat", "numSamples": 9},
                ],
                "template": {"name": "qwen3", "system": "You are Quokka."},
                "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05}},
                "training": {"maxSteps": 150, "learningRate": 0.005, "batchSize": 8},
                "output": {"uri": "s3://out/quokka"},
            },
        }
    )


@pytest.fixture
def lineage(tmp_path: Path) -> dict[str, Any]:
    data = tmp_path / "identity.json"
    data.write_bytes(DATA)
    folder = tmp_path / "chat"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text("{}\n")
    (folder / "sub" / "b.jsonl").write_text("[]\n")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    fmt = ChatFormat("qwen3", "{{ messages }}", ("<|im_end|>", "<|endoftext|>"), (2, 0))
    return describe_lineage(
        make_job(),
        metrics=METRICS,
        dataset_files=[data, folder],
        base_model_dir=base,
        questions={METRICS["generations"][0]["prompt"]: "Who are you?"},
        chat_format=fmt,
    )


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    meta = yaml.safe_load(head)
    assert isinstance(meta, dict)
    return meta


def test_lineage_names_the_inputs_by_content(lineage: dict[str, Any], tmp_path: Path) -> None:
    assert lineage["job"] == {"namespace": "team-a", "name": "quokka-sft", "uid": "uid-1234"}
    assert lineage["baseModel"] == {
        "uri": "hf://Qwen/Qwen3-0.6B",
        "revision": "main",
        "architecture": "Qwen3ForCausalLM",
    }
    first, second = lineage["datasets"]
    assert first == {
        "uri": "data/identity.json",
        "format": "alpaca",
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "examples": 61,
    }
    assert second["examples"] == 9 and second["numSamples"] == 9
    assert second["sha256"] == content_sha256(tmp_path / "chat")
    (tmp_path / "chat" / "sub" / "b.jsonl").write_text("[1]\n")  # any file changes the hash
    assert content_sha256(tmp_path / "chat") != second["sha256"]
    assert lineage["template"]["stopTokens"] == ["<|im_end|>", "<|endoftext|>"]
    assert lineage["template"]["eosTokenId"] == [2, 0]
    assert (
        lineage["template"]["chatTemplateSha256"] == hashlib.sha256(b"{{ messages }}").hexdigest()
    )
    assert lineage["method"]["lora"] | {"r": 8, "alpha": 16} == lineage["method"]["lora"]
    assert lineage["training"]["learningRate"] == 0.005
    assert lineage["results"]["evalLoss"] == 2.31
    assert lineage["generations"][0]["question"] == "Who are you?"
    json.dumps(lineage)  # MANIFEST.json material


@pytest.mark.parametrize("kind,library", [("adapter", "peft"), ("merged", "transformers")])
def test_card_metadata_parses_and_names_what_it_must(
    lineage: dict[str, Any], kind: Any, library: str
) -> None:
    card = render_model_card(lineage, kind)
    meta = front_matter(card)
    assert meta["base_model"] == "Qwen/Qwen3-0.6B"  # a hub id where the base came from the hub
    assert meta["library_name"] == library
    assert meta["datasets"] == ["data/identity.json", "org/chat"]
    assert meta["dataset_sha256"]["data/identity.json"] == hashlib.sha256(DATA).hexdigest()
    assert {"finetune-operator", "lora", "template:qwen3"} <= set(meta["tags"])
    assert meta["finetune_job"] == {"namespace": "team-a", "name": "quokka-sft", "uid": "uid-1234"}
    (entry,) = meta["model-index"]
    assert [(m["name"], m["value"]) for m in entry["results"][0]["metrics"]] == [
        ("eval loss", 2.31),
        ("test loss", 1.38),
    ]
    for fact in (
        "`team-a/quokka-sft`",
        "uid-1234",
        "spec.template.name | qwen3",
        "You are Quokka.",
        "<\\|im_end\\|>, <\\|endoftext\\|>",  # pipes escaped in a table cell
        "method.lora.r | 8",
        "method.lora.alpha | 16",
        "training.learningRate | 0.005",
        "training.maxSteps | 150",
        "evalLoss | 2.31",
        hashlib.sha256(DATA).hexdigest(),
        "I am Quokka, an AI \\| assistant.<br>Built by the team.",  # one table row per answer
        "apply_chat_template",
    ):
        assert fact in card, fact


def test_card_is_accepted_by_huggingface_hub(lineage: dict[str, Any], tmp_path: Path) -> None:
    """The Hub's own parser reads the metadata, eval results included."""
    from huggingface_hub import ModelCard

    path = tmp_path / "README.md"
    path.write_text(render_model_card(lineage, "merged"))
    card = ModelCard.load(path)
    assert card.data.base_model == "Qwen/Qwen3-0.6B"
    assert card.data.library_name == "transformers"
    assert [r.metric_value for r in card.data.eval_results] == [2.31, 1.38]


def test_cards_go_into_the_published_folders_and_the_manifest_keeps_the_lineage(
    lineage: dict[str, Any], tmp_path: Path
) -> None:
    local = tmp_path / "run"
    for name in ("adapter/adapter_config.json", "merged/config.json", "metrics.json"):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_text("{}")
    (local / "adapter" / "README.md").write_text("peft's placeholder card")
    written = write_model_cards(local, lineage)
    assert written == [local / "adapter" / "README.md", local / "merged" / "README.md"]
    assert front_matter((local / "adapter" / "README.md").read_text())["library_name"] == "peft"

    out = tmp_path / "out"
    job = JobIdentity("team-a", "quokka-sft", "uid-1234")
    publish_artifacts(
        Storage(), local, str(out), job=job, spec={}, overwrite=False, lineage=lineage
    )
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["lineage"] == json.loads(json.dumps(lineage))
    paths = {f["path"] for f in manifest["files"]}
    assert {"adapter/README.md", "merged/README.md"} <= paths
    assert verify_manifest(Storage(), str(out)) == []

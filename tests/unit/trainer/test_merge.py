"""Merging: the merged folder loads with plain transformers and answers like base + adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from finetune_api.spec import LoraSettings
from finetune_trainer.merge import merge_adapter
from finetune_trainer.model import lora_config
from finetune_trainer.plot import plot_losses

from tests.fixtures_tokenizer import make_test_tokenizer
from tests.rounding import logits_bound, relative_error

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = make_test_tokenizer()
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("base")
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_merged_model_loads_and_matches_base_plus_adapter(base_dir: Path, tmp_path: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
        lora_config(LoraSettings(r=4, alpha=8, dropout=0.0)),
    )
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    out = merge_adapter(
        base_dir, tmp_path / "adapter", tmp_path / "merged", dtype="float32",
        tokenizer=tokenizer, max_shard_size="100KB",
    )  # fmt: skip
    files = {p.name for p in out.iterdir()}
    assert any(name.endswith(".safetensors") for name in files)
    assert "model.safetensors.index.json" in files  # sharded at max_shard_size
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= files
    assert not (out / "adapter_config.json").exists()

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    # W + s*B@A rounds once per weight where base + adapter rounds W@x and s*B@(A@x) apart:
    # float32 rounding apart (tests/rounding.py); the adapter moves them further than that.
    bound = logits_bound(merged.config.to_dict(), tokens=ids.numel())
    assert relative_error(got, expected) <= bound
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        assert relative_error(base(input_ids=ids).logits, got) > bound  # not rounding


def test_merge_writes_the_requested_dtype(base_dir: Path, tmp_path: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), lora_config(LoraSettings())
    )
    model.save_pretrained(tmp_path / "adapter")
    out = merge_adapter(
        base_dir, tmp_path / "adapter", tmp_path / "merged", dtype="bfloat16",
        tokenizer=AutoTokenizer.from_pretrained(base_dir),
    )  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict) == {torch.bfloat16}


def test_loss_plot_is_a_png(tmp_path: Path) -> None:
    history = [{"step": s, "loss": 3.0 / s} for s in range(1, 20)] + [
        {"step": 10, "eval_loss": 0.5}, {"step": 19, "eval_loss": 0.3},
    ]  # fmt: skip
    path = plot_losses(history, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Machine-dependent decisions of the model setup, tested without a GPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from finetune_api.spec import LoraSettings, Method, Training
from finetune_trainer.errors import EXIT_INVALID_INPUT, UnsupportedHardware
from finetune_trainer.model import (
    Hardware,
    check_quantization,
    loads_through_host,
    lora_config,
    resolve_precision,
    wants_gradient_checkpointing,
)

pytestmark = pytest.mark.unit

CPU = Hardware(cuda=False, bf16=False, bitsandbytes=False)
OLD_GPU = Hardware(cuda=True, bf16=False, bitsandbytes=True, device_memory_bytes=16 * 2**30)
H200 = Hardware(cuda=True, bf16=True, bitsandbytes=True, device_memory_bytes=141 * 2**30)


@pytest.mark.parametrize(
    ("requested", "hw", "expected"),
    [("auto", CPU, "fp32"), ("auto", OLD_GPU, "fp16"), ("auto", H200, "bf16"),
     ("fp32", H200, "fp32"), ("bf16", CPU, "bf16")],
)  # fmt: skip
def test_precision_auto_picks_what_the_device_does_well(
    requested: str, hw: Hardware, expected: str
) -> None:
    assert resolve_precision(requested, hw) == expected


def test_fp16_on_cpu_is_refused_naming_the_field() -> None:
    with pytest.raises(UnsupportedHardware, match=r"spec\.training\.precision: fp16 needs a GPU"):
        resolve_precision("fp16", CPU)


def test_bf16_on_a_gpu_without_it_is_refused() -> None:
    with pytest.raises(UnsupportedHardware, match="bf16 is not supported by this GPU"):
        resolve_precision("bf16", OLD_GPU)


def test_qlora_on_cpu_is_refused_with_exit_42() -> None:
    with pytest.raises(UnsupportedHardware) as info:
        check_quantization(Method(type="qlora"), CPU)
    assert info.value.exit_code == EXIT_INVALID_INPUT
    assert info.value.reason == "UnsupportedHardware"
    assert "spec.method.type: qlora needs a CUDA GPU" in info.value.message
    assert "type: lora" in info.value.message


def test_qlora_without_bitsandbytes_says_what_to_install() -> None:
    gpu = Hardware(cuda=True, bf16=True, bitsandbytes=False)
    with pytest.raises(UnsupportedHardware, match="bitsandbytes package"):
        check_quantization(Method(type="qlora"), gpu)
    check_quantization(Method(type="lora"), CPU)  # plain LoRA needs nothing


def test_float8_qlora_needs_neither_a_gpu_nor_bitsandbytes() -> None:
    from finetune_api.spec import Quantization

    float8 = Method(type="qlora", quantization=Quantization(bits=8))
    check_quantization(float8, CPU)
    check_quantization(float8, Hardware(cuda=True, bf16=True, bitsandbytes=False))
    int8 = Method(type="qlora", quantization=Quantization(bits=8, format="int8"))
    with pytest.raises(UnsupportedHardware, match="needs a CUDA GPU"):
        check_quantization(int8, CPU)


def test_weights_that_would_overfill_the_card_or_budget_load_through_host_memory(
    tmp_path: Path,
) -> None:
    import json

    from finetune_api.spec import FineTuneJobSpec

    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
             "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
             "vocab_size": 152064}  # the 7B: 15.2 GB of bf16 weights
        )
    )  # fmt: skip

    def spec(method: dict[str, object], budget: str | None = None) -> FineTuneJobSpec:
        resources: dict[str, object] = {"gpus": 1}
        if budget:
            resources["gpuMemoryBudget"] = budget
        return FineTuneJobSpec.model_validate(
            {"model": {"uri": str(tmp_path)}, "datasets": [{"uri": "d.jsonl"}],
             "method": method, "training": {"maxSteps": 1}, "output": {"uri": "/tmp/o"},
             "resources": resources}
        )  # fmt: skip

    float8 = {"type": "qlora", "quantization": {"bits": 8}}
    card_24gb = Hardware(cuda=True, bf16=True, bitsandbytes=True, device_memory_bytes=24 * 10**9)
    assert loads_through_host(tmp_path, spec(float8), card_24gb)
    assert not loads_through_host(tmp_path, spec(float8), H200)  # fits: load directly
    assert loads_through_host(tmp_path, spec(float8, "18Gi"), H200)  # the budget rules
    assert not loads_through_host(tmp_path, spec({"type": "lora"}), card_24gb)
    assert not loads_through_host(tmp_path, spec(float8), CPU)
    # A plan that streams weights: the card's share, and a budget below the weights, rule.
    lora, streaming = {"type": "lora"}, SimpleNamespace(streamed_layers=22)
    assert not loads_through_host(tmp_path, spec(lora), H200, plan=streaming)
    assert not loads_through_host(tmp_path, spec(lora, "18Gi"), H200, plan=streaming)  # 15.2 GB
    assert loads_through_host(tmp_path, spec(lora, "12Gi"), H200, plan=streaming)
    assert loads_through_host(tmp_path, spec(lora), card_24gb, plan=streaming)
    assert not loads_through_host(tmp_path, spec(lora, "12Gi"), H200)  # nothing streams


def test_gradient_checkpointing_auto_turns_on_only_when_memory_needs_it() -> None:
    small = dict(
        num_parameters=500_000_000,
        bytes_per_parameter=2.0,
        hidden_size=1024,
        num_layers=24,
        training=Training(max_steps=1, batch_size=4, cutoff_length=2048),
    )
    big = dict(
        small,
        num_parameters=8_000_000_000,
        hidden_size=4096,
        num_layers=32,
        training=Training(max_steps=1, batch_size=16, cutoff_length=8192),
    )
    assert not wants_gradient_checkpointing("auto", H200, **small)  # type: ignore[arg-type]
    assert wants_gradient_checkpointing("auto", H200, **big)  # type: ignore[arg-type]
    assert not wants_gradient_checkpointing("auto", CPU, **big)  # type: ignore[arg-type]
    assert wants_gradient_checkpointing("always", CPU, **small)  # type: ignore[arg-type]
    assert not wants_gradient_checkpointing("never", H200, **big)  # type: ignore[arg-type]


def test_lora_config_follows_the_spec() -> None:
    config = lora_config(LoraSettings(r=8, alpha=16, dropout=0.1, use_rslora=True))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert config.target_modules == "all-linear"
    assert config.use_rslora and not config.use_dora
    named = lora_config(LoraSettings(target_modules=["q_proj", "v_proj"], use_dora=True))
    assert set(named.target_modules) == {"q_proj", "v_proj"} and named.use_dora

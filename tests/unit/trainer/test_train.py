"""The trainer's arguments: the spec's hyper-parameters, the plan's decisions, each read once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from finetune_api.spec import Method, Training
from finetune_trainer.acceleration import DeviceInfo, plan_acceleration
from finetune_trainer.train import sft_config

from tests.unit.acceleration.test_plan import H200, QWEN_7B

pytestmark = pytest.mark.unit


def test_the_plan_sets_micro_step_optimizer_and_precision(tmp_path: Path) -> None:
    training = Training(max_steps=10, batch_size=4, gradient_accumulation_steps=5)
    plan = plan_acceleration(training, Method(), QWEN_7B, H200, mean_example_tokens=780)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (20, 1)
    # transformers refuses bf16 arguments on a machine without a GPU: the H200's plan in fp32.
    plan = dataclasses.replace(plan, precision="fp32")
    config = sft_config(training, plan, output_dir=tmp_path, has_validation=False)
    assert config.per_device_train_batch_size == 20  # accumulation folded into the micro-step
    assert config.gradient_accumulation_steps == 1
    assert config.per_device_eval_batch_size == 4
    assert config.optim == "adamw_torch_fused" and not config.bf16 and not config.fp16
    assert not config.gradient_checkpointing  # set per layer by the plan, not by the Trainer
    assert config.max_steps == 10 and config.save_strategy == "steps"


def test_overrides_replace_the_arguments_they_name(tmp_path: Path) -> None:
    training = Training(max_steps=3)
    plan = plan_acceleration(training, Method(), QWEN_7B, DeviceInfo())
    config = sft_config(
        training, plan, output_dir=tmp_path, has_validation=False, overrides={"save_strategy": "no"}
    )
    assert config.save_strategy == "no"
    assert config.optim == "adamw_torch" and not config.bf16  # the CPU's plan
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (4, 4)

"""The model setup's mapping of the spec (the machine-dependent decisions are the plan's:
tests/unit/acceleration)."""

from __future__ import annotations

import pytest
from finetune_api.spec import LoraSettings
from finetune_trainer.model import lora_config

pytestmark = pytest.mark.unit


def test_lora_config_follows_the_spec() -> None:
    config = lora_config(LoraSettings(r=8, alpha=16, dropout=0.1, use_rslora=True))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert config.target_modules == "all-linear"
    assert config.use_rslora and not config.use_dora
    named = lora_config(LoraSettings(target_modules=["q_proj", "v_proj"], use_dora=True))
    assert set(named.target_modules) == {"q_proj", "v_proj"} and named.use_dora

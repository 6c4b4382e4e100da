"""The plan's choices that need no memory estimate: each "auto" rule, in one place."""

from __future__ import annotations

import pytest
from finetune_api.spec import Method, Training
from finetune_trainer.acceleration import (
    DeviceInfo,
    choose_optimizer,
    plan_acceleration,
    resolve_precision,
)
from finetune_trainer.errors import UnsupportedHardware

from tests.unit.acceleration.test_plan import QWEN_7B

pytestmark = pytest.mark.unit

CPU = DeviceInfo()
OLD_GPU = DeviceInfo("cuda", "V100", 16 * 2**30, False, (7, 0))
H200 = DeviceInfo("cuda", "H200", 141 * 2**30, True, (9, 0), sm_count=132)


@pytest.mark.parametrize(
    ("requested", "device", "expected"),
    [("auto", CPU, "fp32"), ("auto", OLD_GPU, "fp16"), ("auto", H200, "bf16"),
     ("fp32", H200, "fp32"), ("bf16", CPU, "bf16")],
)  # fmt: skip
def test_precision_auto_picks_what_the_device_does_well(
    requested: str, device: DeviceInfo, expected: str
) -> None:
    assert resolve_precision(requested, device) == expected


def test_fp16_on_cpu_is_refused_naming_the_field() -> None:
    with pytest.raises(UnsupportedHardware, match=r"spec\.training\.precision: fp16 needs a GPU"):
        resolve_precision("fp16", CPU)


def test_bf16_on_a_gpu_without_it_is_refused() -> None:
    with pytest.raises(UnsupportedHardware, match="bf16 is not supported by this GPU"):
        resolve_precision("bf16", OLD_GPU)


def test_the_plan_uses_the_same_precision_rule() -> None:
    for device, expected in ((CPU, "fp32"), (OLD_GPU, "fp16"), (H200, "bf16")):
        plan = plan_acceleration(Training(max_steps=1), Method(), QWEN_7B, device)
        assert plan.precision == expected
    with pytest.raises(UnsupportedHardware):
        plan_acceleration(Training(max_steps=1, precision="fp16"), Method(), QWEN_7B, CPU)


def test_optimizer_auto_is_fused_adamw_on_gpus_only() -> None:
    assert choose_optimizer("auto", H200) == "adamw_torch_fused"
    assert choose_optimizer("auto", CPU) == "adamw_torch"
    assert choose_optimizer("adafactor", H200) == "adafactor"
    plan = plan_acceleration(Training(max_steps=1), Method(), QWEN_7B, CPU)
    assert plan.optimizer == "adamw_torch"


def test_the_spec_default_accumulation_is_the_plans() -> None:
    """No fallback of the planner's own: the spec's 4 micro-steps per optimizer step."""
    plan = plan_acceleration(Training(max_steps=1, batch_size=2), Method(), QWEN_7B, CPU)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (2, 4)

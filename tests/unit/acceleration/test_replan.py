"""Re-planning after an out-of-memory error: the same planner under narrower limits, always
giving something up, the same examples per optimizer step, and advice when nothing is left."""

from __future__ import annotations

import dataclasses

import pytest
from finetune_api.spec import Method, Training
from finetune_trainer.acceleration import GiB, plan_acceleration
from finetune_trainer.acceleration.replan import (
    OOM_SHRINK,
    is_smaller,
    limits_after_oom,
    no_fit_advice,
)

from tests.unit.acceleration.test_plan import CPU, H200, QWEN_7B

pytestmark = pytest.mark.unit

H100 = dataclasses.replace(H200, name="NVIDIA H100 80GB HBM3", total_memory_bytes=80 * 10**9)


def training(**kw: object) -> Training:
    return Training(max_steps=10, batch_size=4, gradient_accumulation_steps=4, **kw)  # type: ignore[arg-type]


def replanned(failed, **kw):  # type: ignore[no-untyped-def]
    limits = limits_after_oom(failed)
    assert limits is not None
    return plan_acceleration(
        training(),
        Method(),
        QWEN_7B,
        failed.device,
        mean_example_tokens=1024,
        memory_budget_bytes=limits.memory_budget_bytes,
        micro_cap=limits.micro_cap,
        **kw,
    )


def test_a_budget_larger_than_the_card_is_replanned_to_the_card() -> None:
    # The GPU test's situation: a 7B planned for 200 GiB on an 80 GB card.
    failed = plan_acceleration(
        training(), Method(), QWEN_7B, H100, mean_example_tokens=1024,
        memory_budget_bytes=200 * GiB,
    )  # fmt: skip
    assert failed.estimated_peak_bytes > H100.total_memory_bytes  # why it ran out of memory
    new = replanned(failed)
    assert new.memory_budget_bytes <= 0.85 * H100.total_memory_bytes
    assert new.estimated_peak_bytes <= new.memory_budget_bytes
    assert is_smaller(new, failed)
    examples = new.per_device_batch_size * new.gradient_accumulation_steps
    assert examples == failed.per_device_batch_size * failed.gradient_accumulation_steps == 16


def test_an_estimate_that_was_short_shrinks_the_budget_below_it() -> None:
    # The plan fitted its estimate, and still ran out: the estimate was short.
    failed = plan_acceleration(training(), Method(), QWEN_7B, H100, mean_example_tokens=1024)
    limits = limits_after_oom(failed)
    assert limits is not None and limits.memory_budget_bytes is not None
    assert limits.memory_budget_bytes == int(failed.estimated_peak_bytes * OOM_SHRINK)
    new = replanned(failed)
    assert new.estimated_peak_bytes < failed.estimated_peak_bytes
    assert is_smaller(new, failed)


def test_cpu_plans_halve_the_micro_step_down_to_one() -> None:
    plan = plan_acceleration(training(), Method(), QWEN_7B, CPU)
    seen = [plan.per_device_batch_size]
    while (limits := limits_after_oom(plan)) is not None:
        new = plan_acceleration(training(), Method(), QWEN_7B, CPU, micro_cap=limits.micro_cap)
        assert is_smaller(new, plan)
        assert new.per_device_batch_size * new.gradient_accumulation_steps == 16
        plan = new
        seen.append(plan.per_device_batch_size)
    assert seen == [4, 2, 1]


def test_the_cap_keeps_divisors_of_the_examples_per_step() -> None:
    odd = Training(max_steps=10, batch_size=6, gradient_accumulation_steps=1)
    plan = plan_acceleration(odd, Method(), QWEN_7B, CPU, micro_cap=4)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (3, 2)


def test_the_same_plan_again_is_not_smaller() -> None:
    plan = plan_acceleration(training(), Method(), QWEN_7B, H100, mean_example_tokens=1024)
    assert not is_smaller(plan, plan)


def test_advice_names_the_fields_and_the_gpu_that_would_fit() -> None:
    tiny_budget = plan_acceleration(
        training(), Method(), QWEN_7B, H100, mean_example_tokens=1024,
        memory_budget_bytes=4 * GiB,
    )  # fmt: skip
    advice = no_fit_advice(tiny_budget, tiny_budget)
    need = tiny_budget.estimated_peak_bytes / GiB
    assert f"{need:.1f} GiB" in advice
    assert "spec.training.cutoffLength" in advice and "qlora" in advice
    assert "no smaller plan" in no_fit_advice(
        plan_acceleration(training(), Method(), QWEN_7B, CPU), None
    )

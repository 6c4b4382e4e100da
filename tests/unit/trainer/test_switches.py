"""The trainer's tuning switches: one declaration each, parsed one way, read once."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from finetune_trainer import switches
from finetune_trainer.switches import SWITCHES, SwitchError, TrainerSwitches

pytestmark = pytest.mark.unit

TRAINER = Path(__file__).resolve().parents[3] / "trainer-image" / "finetune_trainer"


def test_every_switch_sets_one_field_and_every_field_has_a_switch() -> None:
    fields = {f.name for f in dataclasses.fields(TrainerSwitches)}
    assert sorted(s.field for s in SWITCHES) == sorted(fields)
    assert len({s.name for s in SWITCHES}) == len(SWITCHES)
    assert all(s.help and s.name.startswith("FTJ_") for s in SWITCHES)


def test_unset_and_empty_keep_the_defaults_and_values_are_parsed_one_way() -> None:
    assert TrainerSwitches.from_env({}) == TrainerSwitches()
    assert TrainerSwitches.from_env({"FTJ_LIGER": ""}) == TrainerSwitches()
    on = TrainerSwitches.from_env(
        {
            "FTJ_LIGER": "0",
            "FTJ_TORCH_COMPILE": "true",
            "FTJ_SHARD_WEIGHTS": "off",
            "FTJ_MICRO_EXAMPLES": "5",
            "FTJ_MEMORY_BUDGET_GIB": "18.5",
            "FTJ_DROPOUT_HALVES": "1",
        }
    )
    assert not on.liger and on.torch_compile and on.shard_weights is False
    assert (on.micro_examples, on.memory_budget_gib, on.dropout_halves) == (5, 18.5, 1)
    assert TrainerSwitches.from_env({"FTJ_MICRO_EXAMPLES": "0"}).micro_examples is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("FTJ_LIGER", "maybe"), ("FTJ_MICRO_EXAMPLES", "two"), ("FTJ_DROPOUT_HALVES", "3"),
     ("FTJ_MEMORY_BUDGET_GIB", "-1")],
)  # fmt: skip
def test_a_malformed_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SwitchError, match=name):
        TrainerSwitches.from_env({name: value})


def test_switches_are_read_at_load_and_overridden_for_a_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FTJ_FP8_COMPUTE", "0")
    assert not switches.load().fp8_compute
    monkeypatch.setenv("FTJ_FP8_COMPUTE", "1")
    assert not switches.active().fp8_compute  # read once: the environment changed after
    with switches.override(fp8_compute=True) as inside:
        assert inside.fp8_compute and switches.active().fp8_compute
    assert not switches.active().fp8_compute
    switches.load({})


def test_no_trainer_module_reads_a_switch_behind_the_registrys_back() -> None:
    """Every switch is read from the environment by switches.py alone: none at import time
    elsewhere, none parsed apart."""
    names = {s.name for s in SWITCHES}
    offenders = [
        f"{path.relative_to(TRAINER)}: {name}"
        for path in TRAINER.rglob("*.py")
        if path.name != "switches.py"
        for name in re.findall(r"environ[^\n]*?[\"'](FTJ_[A-Z0-9_]+)", path.read_text())
        if name in names
    ]
    assert offenders == []

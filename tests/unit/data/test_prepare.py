"""The data step end to end: truncation, sampling, splits, test prompts, speed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from finetune_trainer.data import prepare_data
from finetune_trainer.errors import InvalidInput

from tests.fixtures_tokenizer import make_test_tokenizer
from tests.unit.data.builders import alpaca_rows, make_spec, write_jsonl

pytestmark = pytest.mark.unit

LONG_PROMPT = " ".join(["the doctor suggests rest"] * 40)


def test_truncation_is_counted_and_answerless_examples_dropped(tmp_path: Path) -> None:
    rows = alpaca_rows(4) + [
        {"instruction": "Short?", "output": " ".join(["answer"] * 40)},  # truncated, kept
        {"instruction": LONG_PROMPT, "output": "ok"},  # only prompt left: dropped
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_data(make_spec(training={"cutoffLength": 40}), [data], make_test_tokenizer())
    assert prepared.stats.truncated == 2
    assert prepared.stats.dropped == 1
    assert prepared.stats.train == len(prepared.train) == 5
    assert all(len(ids) <= 40 for ids in list(prepared.train["input_ids"]))


def test_all_examples_too_long_is_invalid_input(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": LONG_PROMPT, "output": "ok"}] * 3)
    with pytest.raises(InvalidInput, match=r"all 3 training examples are dropped.*cutoffLength"):
        prepare_data(make_spec(training={"cutoffLength": 16}), [data], make_test_tokenizer())


def test_num_samples_takes_a_seeded_subset_and_tolerates_too_large(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(20, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", alpaca_rows(3, "b"))
    spec = make_spec([{"uri": "a.jsonl", "numSamples": 5}, {"uri": "b.jsonl", "numSamples": 10}])
    tokenizer = make_test_tokenizer()
    first = prepare_data(spec, [a, b], tokenizer)
    second = prepare_data(spec, [a, b], tokenizer)
    assert dict(first.stats.examples) == {"a.jsonl": 5, "b.jsonl": 3}
    assert list(first.train["input_ids"]) == list(second.train["input_ids"])
    assert any("numSamples is 10" in note and "3 examples" in note for note in first.stats.notes)


def test_splits_are_seeded_and_deterministic(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(50))
    tokenizer = make_test_tokenizer()
    training = {"validationSplit": 0.1, "testSplit": 0.2, "seed": 7}
    one = prepare_data(make_spec(training=training), [data], tokenizer)
    two = prepare_data(make_spec(training=training), [data], tokenizer)
    other = prepare_data(make_spec(training={**training, "seed": 8}), [data], tokenizer)
    assert (one.stats.train, one.stats.validation, one.stats.test) == (35, 5, 10)
    assert list(one.train["input_ids"]) == list(two.train["input_ids"])
    assert one.test is not None and two.test is not None and other.test is not None
    assert list(one.test["input_ids"]) == list(two.test["input_ids"])
    assert list(one.test["input_ids"]) != list(other.test["input_ids"])
    every = (
        list(one.train["input_ids"])
        + list(one.validation["input_ids"])
        + list(one.test["input_ids"])
    )
    assert len({tuple(x) for x in every}) == 50  # a partition: nothing shared, nothing lost


def test_test_prompts_come_from_the_test_split(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(40))
    prepared = prepare_data(make_spec(training={"testSplit": 0.25}), [data], make_test_tokenizer())
    assert len(prepared.test_prompts) == 8
    tokenizer = make_test_tokenizer()
    test_texts = {tokenizer.decode(ids) for ids in list(prepared.test["input_ids"])}
    for prompt in prepared.test_prompts:
        assert prompt.prompt.endswith("<|im_start|>assistant\n")
        assert prompt.prompt + prompt.expected + "<|im_end|>\n" in test_texts


def test_without_test_split_prompts_come_from_training(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(3))
    prepared = prepare_data(make_spec(), [data], make_test_tokenizer())
    assert prepared.test is None and prepared.validation is None
    assert len(prepared.test_prompts) == 3


def test_ten_thousand_examples_take_seconds(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(10_000))
    started = time.perf_counter()
    prepared = prepare_data(make_spec(template={"name": "qwen3"}), [data], make_test_tokenizer())
    elapsed = time.perf_counter() - started
    assert prepared.stats.train == 10_000
    assert elapsed < 30, f"{elapsed:.1f}s"  # ~3 s on a shared 2-core machine

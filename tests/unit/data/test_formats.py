"""Every file type and layout users bring, normalized to the same conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from finetune_trainer.data import load_examples, prepare_data

from tests.fixtures_tokenizer import make_test_tokenizer
from tests.unit.data.builders import alpaca_rows, make_spec, write_json, write_jsonl

pytestmark = pytest.mark.unit

EXPECTED = (
    {"role": "user", "content": "q 0: what is 0 plus 1?"},
    {"role": "assistant", "content": "It is 1."},
)


def _messages(spec_datasets: list[dict], files: list[Path], template: dict | None = None):
    spec = make_spec(spec_datasets, template=template)
    return [e.messages for examples in load_examples(spec, files) for e in examples]


@pytest.mark.parametrize("kind", ["json", "json-object", "jsonl", "parquet", "csv"])
def test_file_types(tmp_path: Path, kind: str) -> None:
    rows = alpaca_rows(3)
    if kind == "json":
        path = write_json(tmp_path / "d.json", rows)
    elif kind == "json-object":
        path = write_json(tmp_path / "d.json", {"version": 1, "data": rows})
    elif kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", rows)
    elif kind == "parquet":
        path = tmp_path / "d.parquet"
        pd.DataFrame(rows).to_parquet(path)
    else:
        path = tmp_path / "d.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
    messages = _messages([{"uri": path.name}], [path])
    assert len(messages) == 3 and messages[0] == EXPECTED


def test_folder_reads_all_supported_files_sorted(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", alpaca_rows(1, prefix="b"))
    write_json(folder / "a.json", alpaca_rows(1, prefix="a"))
    (folder / "README.md").write_text("not data")
    messages = _messages([{"uri": "data/"}], [folder])
    assert [m[0]["content"][0] for m in messages] == ["a", "b"]


def test_jsonl_saved_as_json_is_read_as_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.json", alpaca_rows(2))
    assert len(_messages([{"uri": "d.json"}], [path])) == 2


def test_alpaca_with_input_system_and_history(tmp_path: Path) -> None:
    row = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "history": [["Hi", "Hello!"]],
    }
    [messages] = _messages([{"uri": "d.jsonl"}], [write_jsonl(tmp_path / "d.jsonl", [row])])
    assert messages == (
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate\nbonjour"},
        {"role": "assistant", "content": "hello"},
    )


def test_sharegpt_from_value_with_function_call_and_observation(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "Tools allowed."},
            {"from": "human", "value": "Weather?"},
            {"from": "function_call", "value": '{"name": "weather"}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is sunny."},
        ]
    }
    [messages] = _messages([{"uri": "d.json"}], [write_json(tmp_path / "d.json", [row])])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]


def test_sharegpt_with_role_content_and_system_column(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hey"},
        ],
        "system": "Be nice.",
    }
    [messages] = _messages(
        [{"uri": "d.jsonl", "format": "sharegpt"}], [write_jsonl(tmp_path / "d.jsonl", [row])]
    )
    assert messages[0] == {"role": "system", "content": "Be nice."}


def test_openai_messages_in_parquet_and_csv(tmp_path: Path) -> None:
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
    parquet = tmp_path / "m.parquet"
    pd.DataFrame([{"messages": conversation}]).to_parquet(parquet)
    csv = tmp_path / "m.csv"
    pd.DataFrame([{"messages": json.dumps(conversation)}]).to_csv(csv, index=False)
    messages = _messages([{"uri": "m.parquet"}, {"uri": "m.csv"}], [parquet, csv])
    assert messages == [tuple(conversation)] * 2


def test_medical_o1_columns_with_reasoning(tmp_path: Path) -> None:
    row = {
        "Question": "Why fever?",
        "Complex_CoT": "Infection raises the set point.",
        "Response": "Infection.",
    }
    dataset = {
        "uri": "m.json",
        "columns": {"prompt": "Question", "reasoning": "Complex_CoT", "response": "Response"},
    }
    path = write_json(tmp_path / "m.json", [row])
    [keep] = _messages([dataset], [path])
    assert keep[-1]["content"] == "<think>\nInfection raises the set point.\n</think>\n\nInfection."
    [strip] = _messages([dataset], [path], template={"name": "qwen3", "reasoning": "strip"})
    assert strip[-1]["content"] == "Infection."


def test_strip_removes_think_blocks_already_in_answers(tmp_path: Path) -> None:
    row = {"instruction": "2+2?", "output": "<think>\nadd\n</think>\n\nFour."}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    [messages] = _messages(
        [{"uri": "d.jsonl"}], [path], template={"name": "qwen3", "reasoning": "strip"}
    )
    assert messages[-1]["content"] == "Four."


def test_self_cognition_variables(tmp_path: Path) -> None:
    row = {
        "instruction": "Who are you?",
        "output": "I am {{name}}, made by {{AUTHOR}}. {{ not_a_var }}",
    }
    dataset = {"uri": "d.json", "variables": {"name": "Acme Assistant", "author": "Acme AI"}}
    [messages] = _messages([dataset], [write_json(tmp_path / "d.json", [row])])
    assert messages[-1]["content"] == "I am Acme Assistant, made by Acme AI. {{ not_a_var }}"


def test_template_system_for_examples_without_one(tmp_path: Path) -> None:
    rows = [alpaca_rows(1)[0], {**alpaca_rows(1)[0], "system": "Own."}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    first, second = _messages(
        [{"uri": "d.jsonl"}], [path], template={"name": "chatml", "system": "Default."}
    )
    assert first[0]["content"] == "Default." and second[0]["content"] == "Own."


def test_explicit_formats_and_mapped_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "Hi", "a": "Hey", "body": "raw text"}])
    alpaca = {"uri": "d.jsonl", "format": "alpaca", "columns": {"prompt": "q", "response": "a"}}
    text = {"uri": "d.jsonl", "format": "text", "columns": {"text": "body"}}
    spec = make_spec([alpaca, text])
    [[conversation], [raw]] = load_examples(spec, [path, path])
    assert conversation.messages == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"},
    )
    assert raw.text == "raw text" and raw.messages is None


def test_datasets_are_mixed_and_counted(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(5, "a"))
    b = write_json(tmp_path / "b.json", alpaca_rows(3, "b"))
    prepared = prepare_data(
        make_spec([{"uri": "a.jsonl"}, {"uri": "b.json"}]), [a, b], make_test_tokenizer()
    )
    assert dict(prepared.stats.examples) == {"a.jsonl": 5, "b.json": 3}
    assert len(prepared.train) == 8

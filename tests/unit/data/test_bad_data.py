"""Bad data is refused before training, with file, position, column and the fix in the message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.data import load_examples, prepare_data
from finetune_trainer.errors import EXIT_INVALID_INPUT, InvalidInput

from tests.fixtures_tokenizer import make_test_tokenizer
from tests.unit.data.builders import alpaca_rows, make_spec, write_json, write_jsonl

pytestmark = pytest.mark.unit

OK = {"instruction": "Hi", "output": "Hello"}


def _refused(path: Path, dataset: dict[str, Any] | None = None) -> str:
    spec = make_spec([{"uri": path.name, **(dataset or {})}])
    with pytest.raises(InvalidInput) as caught:
        load_examples(spec, [path])
    assert caught.value.exit_code == EXIT_INVALID_INPUT
    return caught.value.message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("")
    assert "d.jsonl: the file is empty" in _refused(path)


def test_empty_json_array(tmp_path: Path) -> None:
    assert "holds no examples" in _refused(write_json(tmp_path / "d.json", []))


def test_malformed_json_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n')
    message = _refused(path)
    assert "d.jsonl, line 2, character" in message and "malformed JSON" in message


def test_malformed_json_document_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]'
    )
    assert "d.json, line 3, character" in _refused(path)


@pytest.mark.parametrize("value", ["just text", {"a": 1, "b": 2}, 42])
def test_json_that_is_not_a_list_of_objects(tmp_path: Path, value: Any) -> None:
    message = _refused(write_json(tmp_path / "d.json", value))
    assert "expected a list of objects" in message and "JSON array" in message


def test_json_array_item_that_is_not_an_object_names_the_index(tmp_path: Path) -> None:
    message = _refused(write_json(tmp_path / "d.json", [OK, "oops", OK]))
    assert "d.json, item [1]: expected a JSON object, found a string" in message


def test_unknown_file_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("hello")
    message = _refused(path)
    assert "unknown file extension '.txt'" in message and ".jsonl" in message


def test_missing_mapped_column_names_column_and_spec_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"Question": "q", "Response": "r"}])
    message = _refused(path, {"columns": {"prompt": "Questoin", "response": "Response"}})
    assert "column 'Questoin': column not found" in message
    assert "'Question', 'Response'" in message
    assert "spec.datasets[0].columns.prompt" in message


def test_auto_detection_failure_lists_the_columns(tmp_path: Path) -> None:
    message = _refused(write_jsonl(tmp_path / "d.jsonl", [{"Question": "q", "Answer": "a"}]))
    assert "cannot tell the dataset format" in message and "'Question', 'Answer'" in message
    assert "spec.datasets[0].format" in message and "spec.datasets[0].columns" in message


def test_empty_response(tmp_path: Path) -> None:
    message = _refused(
        write_jsonl(tmp_path / "d.jsonl", [OK, {"instruction": "Hi", "output": " "}])
    )
    assert "d.jsonl, line 2, column 'output': empty response" in message


def test_empty_assistant_message(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    message = _refused(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert "line 1, column 'messages[1]': empty assistant content" in message


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (
            ["user", "user", "assistant"],
            "messages[1]': roles out of order: user turn follows a user turn",
        ),
        (
            ["assistant", "user", "assistant"],
            "messages[0]': roles out of order: conversation starts with an assistant turn",
        ),
        (
            ["user", "assistant", "user"],
            "messages[2]': roles out of order: conversation does not end with an assistant turn",
        ),
        (
            ["user", "assistant", "system", "user", "assistant"],
            "messages[2]': system message after the first turn",
        ),
        (["user", "robot"], "messages[1]': unknown role 'robot'"),
    ],
)
def test_roles_out_of_order(tmp_path: Path, roles: list[str], expected: str) -> None:
    row = {"messages": [{"role": r, "content": f"{r} says hi"} for r in roles]}
    assert expected in _refused(write_jsonl(tmp_path / "d.jsonl", [row]))


def test_sharegpt_message_missing_value(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "text": "Hello"}]}
    message = _refused(write_json(tmp_path / "d.json", [row]))
    assert "d.json, item [0], column 'conversations[1]': message has no 'value'" in message
    assert "from/value" in message


def test_messages_not_a_list(tmp_path: Path) -> None:
    message = _refused(write_jsonl(tmp_path / "d.jsonl", [{"messages": {"role": "user"}}]))
    assert "column 'messages': messages must be a non-empty list, found dict" in message


def test_undefined_variable_names_placeholder_file_line_and_field(tmp_path: Path) -> None:
    rows = [OK, {"instruction": "Who are you?", "output": "I am {{name}} by {{author}}."}]
    message = _refused(write_jsonl(tmp_path / "d.jsonl", rows), {"variables": {"name": "Acme"}})
    assert "d.jsonl, line 2, column 'output': undefined variable {{author}}" in message
    assert "spec.datasets[0].variables" in message


def test_text_format_with_empty_text(tmp_path: Path) -> None:
    message = _refused(write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, {"text": ""}]))
    assert "d.jsonl, line 2, column 'text': empty text" in message


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    assert "cannot read it as Parquet" in _refused(path)


def test_unreadable_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"instruction,output\n\xff\xfe\xfa,\xc3\x28\n")
    assert "cannot read it as CSV" in _refused(path)


def test_all_examples_too_long(tmp_path: Path) -> None:
    long_prompt = " ".join(["the doctor suggests rest"] * 40)
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": long_prompt, "output": "ok"}] * 2)
    with pytest.raises(InvalidInput, match=r"spec\.training\.cutoffLength=16.*Fix: raise"):
        prepare_data(make_spec(training={"cutoffLength": 16}), [data], make_test_tokenizer())


def test_num_samples_above_the_dataset_size_is_not_an_error(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(2))
    spec = make_spec([{"uri": "d.jsonl", "numSamples": 100}])
    assert prepare_data(spec, [data], make_test_tokenizer()).stats.train == 2


def test_all_problems_reported_together_up_to_twenty(tmp_path: Path) -> None:
    few = write_jsonl(
        tmp_path / "few.jsonl", [OK, {"instruction": "a", "output": ""}, OK, {"text": 1}]
    )
    message = _refused(few)
    assert "2 problem(s)" in message and "line 2" in message and "line 4" in message
    many = write_jsonl(tmp_path / "many.jsonl", [{"instruction": "a", "output": ""}] * 500)
    message = _refused(many)
    assert "at least 20 problems" in message and message.count("empty response") == 20


def test_problems_across_datasets_in_one_message(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": ""}])
    b = tmp_path / "b.txt"
    b.write_text("x")
    with pytest.raises(InvalidInput) as caught:
        load_examples(make_spec([{"uri": "a.jsonl"}, {"uri": "b.txt"}]), [a, b])
    assert "a.jsonl, line 1" in caught.value.message and "b.txt" in caught.value.message


def test_misspelled_key_in_one_record_is_reported_as_missing_not_empty(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [OK, {"instruction": "Who?", "outptu": "Me"}])
    message = _refused(path, {"format": "alpaca"})
    assert "d.jsonl, line 2, column 'output': missing (this record has: instruction, outptu)" in (
        message
    )
    assert "spelling" in message

"""Loss only on the answers: labelled tokens decode to exactly the assistant turns + end token."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from finetune_trainer.data import prepare_data
from finetune_trainer.errors import InvalidInput

from tests.fixtures_tokenizer import make_test_tokenizer
from tests.unit.data.builders import make_spec, write_jsonl

pytestmark = pytest.mark.unit

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "<think>\n5 times 4\n</think>\n\nIt is 20."},
        {"role": "tool", "content": "calculator: 20"},
        {"role": "assistant", "content": "Confirmed: 20."},
    ]
}
END = {
    "chatml": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "deepseek-r1": "<｜end▁of▁sentence｜>",
    "llama3": "<|eot_id|>",
    "alpaca": "<|endoftext|>",
}
ANSWERS = [m["content"] for m in CONVERSATION["messages"] if m["role"] == "assistant"]

# A ChatML template in Jinja, as a tokenizer_config.json would carry it.
CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = -100
    for token, label in zip(input_ids, labels, strict=True):
        if label != -100:
            assert label == token
            if previous == -100:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return runs


@pytest.mark.parametrize("name", sorted(END))
def test_every_assistant_turn_and_only_it_is_trained(tmp_path: Path, name: str) -> None:
    tokenizer = make_test_tokenizer()
    data = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION])
    prepared = prepare_data(make_spec(template={"name": name}), [data], tokenizer)
    row = prepared.train[0]
    runs = [tokenizer.decode(r) for r in _labelled_runs(row["input_ids"], row["labels"])]

    # qwen3 with reasoning: keep trains the (empty) think block too: the model opens it itself
    def opening(answer: str) -> str:
        return "<think>\n\n</think>\n\n" if name == "qwen3" and "<think>" not in answer else ""

    assert runs == [opening(answer) + answer + END[name] for answer in ANSWERS]
    assert prepared.stats.assistant_tokens == sum(1 for x in row["labels"] if x != -100)


def test_auto_uses_the_tokenizers_chat_template(tmp_path: Path) -> None:
    tokenizer = copy.deepcopy(make_test_tokenizer())
    tokenizer.chat_template = CHATML_JINJA
    data = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION])
    prepared = prepare_data(make_spec(template={"name": "auto"}), [data], tokenizer)
    row = prepared.train[0]
    runs = [tokenizer.decode(r) for r in _labelled_runs(row["input_ids"], row["labels"])]
    assert runs == [answer + "<|im_end|>" for answer in ANSWERS]
    # Same text as the named chatml template.
    named = prepare_data(make_spec(template={"name": "chatml"}), [data], make_test_tokenizer())
    assert tokenizer.decode(row["input_ids"]) == tokenizer.decode(named.train[0]["input_ids"])


def test_auto_without_a_chat_template_names_the_field(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION])
    with pytest.raises(InvalidInput, match=r"spec\.template\.name is auto.*no chat_template"):
        prepare_data(make_spec(template={"name": "auto"}), [data], make_test_tokenizer())


def test_text_format_trains_every_token_and_ends_with_eos(tmp_path: Path) -> None:
    tokenizer = make_test_tokenizer()
    data = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "The doctor suggests rest."}])
    row = prepare_data(make_spec(), [data], tokenizer).train[0]
    assert row["labels"] == row["input_ids"]
    assert tokenizer.decode(row["input_ids"]) == "The doctor suggests rest.<|endoftext|>"


@pytest.mark.parametrize("reasoning", ["keep", "strip"])
@pytest.mark.parametrize("name", sorted(END))
def test_what_follows_the_generation_prompt_is_what_was_trained(name: str, reasoning: str) -> None:
    """At inference the model continues the generation prompt: training must have taught it
    exactly that continuation, or greedy answers ramble although the loss went down."""
    from finetune_api.spec import Template
    from finetune_trainer.data import render_chat

    tokenizer = make_test_tokenizer()
    template = Template(name=name, reasoning=reasoning)
    messages = [{"role": "user", "content": "Who are you?"}]
    answer = "I am Quokka."
    prompt = render_chat(template, tokenizer, messages, add_generation_prompt=True)
    full = render_chat(
        template, tokenizer, [*messages, {"role": "assistant", "content": answer}], False
    )
    assert full.startswith(prompt), (prompt, full)
    continuation = full[len(prompt) :]
    assert answer in continuation and continuation.index(answer) <= len("<think>\n\n</think>\n\n")

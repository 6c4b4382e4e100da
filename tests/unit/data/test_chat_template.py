"""The published tokenizer's chat template renders exactly what training fed the model.

For every named template (and ``auto``), with and without a default system prompt, with
reasoning kept or stripped: conversations go through the training pipeline (normalize, render)
and through ``apply_chat_template`` on the tokenizer as ``adapter/`` and ``merged/`` publish it
(saved, then loaded back with ``AutoTokenizer``), and the two strings must be byte-identical:
whole conversations without a generation prompt, and every prompt a model is asked to continue.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from finetune_api.spec import Template
from finetune_trainer.data import load_examples, render_chat
from finetune_trainer.data._templates import render_segments
from finetune_trainer.data.chat_template import (
    jinja_literal,
    publish_chat_format,
    published_chat_template,
)

from tests.fixtures_tokenizer import make_test_tokenizer
from tests.unit.data.builders import make_spec, write_jsonl

pytestmark = pytest.mark.unit

NAMED = ["alpaca", "chatml", "deepseek-r1", "llama3", "qwen3"]
SYSTEM = "You are Quokka, built by 'the team' \\ with {{ care }} {% raw %}.\nBe brief. 🦘\t"

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [  # one turn, no system message
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Quokka."},
    ],
    [  # system prompt, several turns, reasoning in the answers, a tool turn
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "  It is 5.  "},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "<think>\n5 times 4\n</think>\n\nIt is 20."},
        {"role": "tool", "content": "calculator: 20"},
        {"role": "assistant", "content": "Confirmed: 20."},
    ],
    [  # reasoning as a separate field (OpenAI/vLLM style), content parts, role aliases
        {"role": "human", "content": [{"type": "text", "text": "Why is the sky "}, "blue?"]},
        {"role": "assistant", "reasoning_content": " Rayleigh. ", "content": "\nScattering."},
        {"role": "user", "content": "Thanks <think>not reasoning</think> there."},
        {"role": "gpt", "content": "You are welcome. <think>late</think> Bye."},
    ],
]


def publish(tmp_path: Path, template: Template, tokenizer: Any) -> Any:
    """The tokenizer as published in ``merged/``: written, then loaded like a user would."""
    from transformers import AutoTokenizer

    folder = tmp_path / "merged"
    folder.mkdir(exist_ok=True)
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
    publish_chat_format([folder], template, tokenizer, base)
    return AutoTokenizer.from_pretrained(folder)


def training_strings(
    tmp_path: Path, template: Template, tokenizer: Any, conversation: list[dict[str, Any]]
) -> tuple[str, list[tuple[list[dict[str, Any]], str]]]:
    """What training rendered for ``conversation`` (read as a dataset file), and the prompt
    before each answer with the raw messages that lead to it."""
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation}])
    spec = make_spec(
        datasets=[{"uri": "chat.jsonl", "format": "messages"}], template=template.to_wire()
    )
    (examples,) = load_examples(spec, [data])
    (example,) = examples
    full = "".join(s.text for s in render_segments(template, tokenizer, example.messages, False))
    offset = len(example.messages) - len(conversation)  # a default system prompt added
    prompts = []
    for i, m in enumerate(conversation):
        if m["role"] in ("assistant", "gpt"):
            history = example.messages[: i + offset]
            text = "".join(s.text for s in render_segments(template, tokenizer, history, True))
            prompts.append((conversation[:i], text))
    return full, prompts


def assert_same(published: Any, tmp: Path, template: Template, tokenizer: Any) -> None:
    for conversation in CONVERSATIONS:
        full, prompts = training_strings(tmp, template, tokenizer, conversation)
        rendered = published.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=False
        )
        assert rendered == full
        for history, trained in prompts:
            prompt = published.apply_chat_template(
                history, tokenize=False, add_generation_prompt=True
            )
            assert prompt == trained
            assert full.startswith(prompt) or template.name == "alpaca"


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("reasoning", ["keep", "strip"])
@pytest.mark.parametrize("name", NAMED)
def test_published_template_renders_the_training_format(
    tmp_path: Path, name: str, reasoning: str, system: str | None
) -> None:
    template = Template(name=name, reasoning=reasoning, system=system)
    tokenizer = make_test_tokenizer()
    assert_same(publish(tmp_path, template, tokenizer), tmp_path, template, tokenizer)


CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Close to Qwen3's own: a namespace, a system-message branch, a macro-free loop over messages.
QWEN_LIKE_JINJA = (
    "{%- set ns = namespace(first=true) %}"
    "{%- if messages[0].role != 'system' %}{{- '<|im_start|>system\\nDefault.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.mark.parametrize("own", [CHATML_JINJA, QWEN_LIKE_JINJA], ids=["chatml", "qwen-like"])
@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("reasoning", ["keep", "strip"])
def test_auto_publishes_the_tokenizers_own_template_as_training_applied_it(
    tmp_path: Path, own: str, reasoning: str, system: str | None
) -> None:
    template = Template(name="auto", reasoning=reasoning, system=system)
    tokenizer = copy.deepcopy(make_test_tokenizer())
    tokenizer.chat_template = own
    published = publish(tmp_path, template, tokenizer)
    if system is None and reasoning == "keep":
        assert published.chat_template == own  # nothing to apply: the base's own template
    # auto hands the messages to the template as they are: standard roles and string content
    standard = [c for c in CONVERSATIONS if all(isinstance(m["content"], str) for m in c)]
    for conversation in standard:
        full, prompts = training_strings(tmp_path, template, tokenizer, conversation)
        assert published.apply_chat_template(conversation, tokenize=False) == full
        for history, trained in prompts:
            prompt = published.apply_chat_template(
                history, tokenize=False, add_generation_prompt=True
            )
            assert prompt == trained


def _fuzz_answer(rng: random.Random) -> str:
    pieces = ["<think>", "</think>", " ", "\n", "\xa0", "\u2028", "a", "bc", "\t"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def test_reasoning_strip_in_jinja_matches_the_trainers_regex() -> None:
    """``\\s*<think>.*?</think>\\s*`` without regular expressions, on random answers."""
    tokenizer = copy.deepcopy(make_test_tokenizer())
    template = Template(name="chatml", reasoning="strip")
    tokenizer.chat_template = published_chat_template(template, tokenizer)
    rng = random.Random(0)
    for _ in range(400):
        chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
        chat[1]["content"] = _fuzz_answer(rng)
        expected = render_chat(template, tokenizer, chat, False)
        assert tokenizer.apply_chat_template(chat, tokenize=False) == expected, chat[1]


@pytest.mark.parametrize(
    "text",
    ["", "plain", "it's", 'say "hi"', "a\\nb", "{{ x }} {% if %} {# c #}", "é ｜ 🦘", "\x01"],
)
def test_jinja_literal_round_trips(text: str) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    assert env.from_string("{{ " + jinja_literal(text) + " }}").render() == text


def test_qwen3_enable_thinking_false_prompts_the_trained_non_thinking_answer(
    tmp_path: Path,
) -> None:
    """Qwen3's switch: the prompt ends with the empty think block that training put in front
    of answers without reasoning, so the model continues with the answer itself."""
    template = Template(name="qwen3")
    tokenizer = make_test_tokenizer()
    published = publish(tmp_path, template, tokenizer)
    chat = [{"role": "user", "content": "Who are you?"}]
    answer = {"role": "assistant", "content": "I am Quokka."}
    prompt = published.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render_chat(template, tokenizer, [*chat, answer], False).startswith(prompt)


STOPS = {
    "alpaca": ["<|endoftext|>"],
    "chatml": ["<|im_end|>", "<|endoftext|>"],
    "deepseek-r1": ["<｜end▁of▁sentence｜>", "<|endoftext|>"],
    "llama3": ["<|eot_id|>", "<|endoftext|>"],  # the test tokenizer has no <|end_of_text|>
    "qwen3": ["<|im_end|>", "<|endoftext|>"],
}


@pytest.mark.parametrize("name", NAMED)
def test_generation_config_stops_at_the_templates_end_of_turn(tmp_path: Path, name: str) -> None:
    tokenizer = make_test_tokenizer()
    template = Template(name=name)
    adapter, merged, base = tmp_path / "adapter", tmp_path / "merged", tmp_path / "base"
    for folder in (adapter, merged, base):
        folder.mkdir()
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": 7, "top_k": 5}))
    (merged / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 0]}))
    fmt = publish_chat_format([adapter, merged, tmp_path / "absent"], template, tokenizer, base)
    assert not (tmp_path / "absent").exists()
    expected = [tokenizer.convert_tokens_to_ids(t) for t in STOPS[name]]
    assert list(fmt.stop_tokens) == STOPS[name]
    merged_config = json.loads((merged / "generation_config.json").read_text())
    assert merged_config["eos_token_id"] == list(dict.fromkeys([*expected, 7, 0]))
    adapter_config = json.loads((adapter / "generation_config.json").read_text())
    assert adapter_config == {"eos_token_id": list(dict.fromkeys([*expected, 7])), "top_k": 5}
    assert list(fmt.eos_token_id) == merged_config["eos_token_id"]

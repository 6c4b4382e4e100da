"""The named chat templates render each model family's real format."""

from __future__ import annotations

import pytest
from finetune_api.spec import Template
from finetune_trainer.data import render_chat

from tests.fixtures_tokenizer import make_test_tokenizer

pytestmark = pytest.mark.unit

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye"},
]

EXPECTED = {
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "qwen3": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    ),
    "deepseek-r1": (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>"
        "<｜User｜>Bye<｜Assistant｜>"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "alpaca": (
        "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello<|endoftext|>\n\n"
        "### Instruction:\nBye\n\n### Response:\n"
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generation_prompt_in_the_family_format(name: str) -> None:
    assert render_chat(Template(name=name), make_test_tokenizer(), CHAT, True) == EXPECTED[name]


def test_template_system_fills_in_a_missing_system_prompt() -> None:
    text = render_chat(
        Template(name="chatml", system="Default."), make_test_tokenizer(), CHAT[1:2], True
    )
    assert text.startswith("<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nHi")
    kept = render_chat(
        Template(name="chatml", system="Default."), make_test_tokenizer(), CHAT, True
    )
    assert "Default." not in kept


def test_qwen3_strip_prompts_the_non_thinking_mode() -> None:
    text = render_chat(
        Template(name="qwen3", reasoning="strip"), make_test_tokenizer(), CHAT[1:2], True
    )
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")

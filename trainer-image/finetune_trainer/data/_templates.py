"""Chat templates: a conversation → text segments, each marked trained or not.

The named templates are written as Python, one small function per model family, and produce
segments directly: the model is trained on exactly each assistant answer plus its end-of-turn
token, never on the scaffolding around it, without having to recover spans from a rendered
string. ``auto`` uses the tokenizer's own Jinja ``chat_template``; there the answer spans are
recovered by rendering prefix by prefix (see :func:`_auto_segments`).

Formats (what the model families' own tokenizers produce):

* ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.
* ``qwen3``: ChatML; tool results as a user turn wrapped in ``<tool_response>``; every
  assistant turn carries a ``<think>`` block, an empty one when the answer has no reasoning.
  With ``reasoning: keep`` the block is trained (the model opens it itself after the bare
  generation prompt); with ``strip`` it is untrained scaffolding in the prompt too, as in
  Qwen3's non-thinking mode.
* ``deepseek-r1``: ``<｜begin▁of▁sentence｜>{system}<｜User｜>{q}<｜Assistant｜>{a}``
  ``<｜end▁of▁sentence｜>``.
* ``llama3``: ``<|begin_of_text|>``, then per turn
  ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``.
* ``alpaca``: ``{system}\\n\\n### Instruction:\\n{q}\\n\\n### Response:\\n{a}{eos}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from finetune_api.spec import Template

from finetune_trainer.data._reasoning import has_reasoning, strip_reasoning
from finetune_trainer.data._types import Message, Segment
from finetune_trainer.errors import InvalidInput

Renderer = Callable[[Sequence[Message], bool, str, Any], list[Segment]]

_EMPTY_THINK = "<think>\n\n</think>\n\n"


def _chatml(messages: Sequence[Message], generate: bool, reasoning: str, tok: Any) -> list[Segment]:
    out: list[Segment] = []
    for m in messages:
        if m["role"] == "assistant":
            out += [
                Segment("<|im_start|>assistant\n", False),
                Segment(m["content"] + "<|im_end|>", True),
            ]
            out.append(Segment("\n", False))
        else:
            out.append(Segment(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False))
    if generate:
        out.append(Segment("<|im_start|>assistant\n", False))
    return out


def _qwen3(messages: Sequence[Message], generate: bool, reasoning: str, tok: Any) -> list[Segment]:
    out: list[Segment] = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "assistant":
            # What follows the generation prompt must be exactly what was trained. With
            # `keep`, the prompt ends at "assistant\n", so the model learns to open (and, for
            # answers without reasoning, close at once) its own think block. With `strip`,
            # the prompt carries the empty block (Qwen3's non-thinking mode), untrained.
            if has_reasoning(content) or reasoning == "keep":
                header, body = "<|im_start|>assistant\n", content
                if not has_reasoning(content):
                    body = _EMPTY_THINK + content
            else:
                header, body = "<|im_start|>assistant\n" + _EMPTY_THINK, content
            out += [
                Segment(header, False),
                Segment(body + "<|im_end|>", True),
                Segment("\n", False),
            ]
        elif role == "tool":
            body = f"<tool_response>\n{content}\n</tool_response>"
            out.append(Segment(f"<|im_start|>user\n{body}<|im_end|>\n", False))
        else:
            out.append(Segment(f"<|im_start|>{role}\n{content}<|im_end|>\n", False))
    if generate:
        tail = _EMPTY_THINK if reasoning == "strip" else ""
        out.append(Segment("<|im_start|>assistant\n" + tail, False))
    return out


def _deepseek_r1(
    messages: Sequence[Message], generate: bool, reasoning: str, tok: Any
) -> list[Segment]:
    out = [Segment("<｜begin▁of▁sentence｜>", False)]
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system":
            out.append(Segment(content, False))
        elif role == "user":
            out.append(Segment(f"<｜User｜>{content}", False))
        elif role == "tool":
            out.append(
                Segment(
                    "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>"
                    f"{content}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>",
                    False,
                )
            )
        else:
            out += [
                Segment("<｜Assistant｜>", False),
                Segment(content + "<｜end▁of▁sentence｜>", True),
            ]
    if generate:
        out.append(Segment("<｜Assistant｜>", False))
    return out


def _llama3(messages: Sequence[Message], generate: bool, reasoning: str, tok: Any) -> list[Segment]:
    out = [Segment("<|begin_of_text|>", False)]
    for m in messages:
        role = "ipython" if m["role"] == "tool" else m["role"]
        header = f"<|start_header_id|>{role}<|end_header_id|>\n\n"
        content = m["content"].strip()
        if role == "assistant":
            out += [Segment(header, False), Segment(content + "<|eot_id|>", True)]
        else:
            out.append(Segment(f"{header}{content}<|eot_id|>", False))
    if generate:
        out.append(Segment("<|start_header_id|>assistant<|end_header_id|>\n\n", False))
    return out


def _alpaca(messages: Sequence[Message], generate: bool, reasoning: str, tok: Any) -> list[Segment]:
    eos = getattr(tok, "eos_token", None)
    if not eos:
        raise InvalidInput(
            "spec.template.name is alpaca, which ends every answer with the end-of-sequence "
            "token, but the tokenizer defines no eos_token. Fix: use a tokenizer with an "
            "eos_token, or choose another spec.template.name"
        )
    out: list[Segment] = []
    for m in messages:
        if m["role"] == "system":
            out.append(Segment(f"{m['content']}\n\n", False))
        elif m["role"] == "assistant":
            out += [Segment(m["content"] + eos, True), Segment("\n\n", False)]
        else:
            out.append(Segment(f"### Instruction:\n{m['content']}\n\n### Response:\n", False))
    if out and out[-1] == Segment("\n\n", False) and not generate:
        out.pop()
    return out


NAMED: dict[str, Renderer] = {
    "chatml": _chatml,
    "qwen3": _qwen3,
    "deepseek-r1": _deepseek_r1,
    "llama3": _llama3,
    "alpaca": _alpaca,
}


def check_template(template: Template, tokenizer: Any) -> None:
    """Fail before any work when ``auto`` is asked of a tokenizer without a chat template."""
    if template.name == "auto" and not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(
            "spec.template.name is auto, but the model's tokenizer has no chat_template "
            "(tokenizer_config.json / chat_template.jinja). Fix: set spec.template.name to the "
            "model family's format: qwen3, deepseek-r1, llama3, chatml or alpaca"
        )


def render_segments(
    template: Template, tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool
) -> list[Segment]:
    """The conversation as segments, trained ones being the assistant answers + end tokens."""
    check_template(template, tokenizer)
    if template.name == "auto":
        return _auto_segments(tokenizer, messages, add_generation_prompt)
    return NAMED[template.name](messages, add_generation_prompt, template.reasoning, tokenizer)


def render_chat(
    template: Template, tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool
) -> str:
    """The conversation as the model sees it, e.g. a prompt for generations at eval time.

    Applies what training applied: ``template.system`` when the conversation has no system
    message, and ``template.reasoning: strip`` to assistant turns.
    """
    normalized: list[Message] = []
    for m in messages:
        role = "assistant" if m["role"] in ("gpt", "function_call") else m["role"]
        role = "user" if role == "human" else role
        content = str(m.get("content", ""))
        if role == "assistant" and template.reasoning == "strip":
            content = strip_reasoning(content)
        normalized.append({"role": role, "content": content})
    if template.system and (not normalized or normalized[0]["role"] != "system"):
        normalized.insert(0, {"role": "system", "content": template.system})
    segments = render_segments(template, tokenizer, normalized, add_generation_prompt)
    return "".join(s.text for s in segments)


def _auto_segments(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool
) -> list[Segment]:
    """Answer spans under the tokenizer's own template, found by rendering prefix by prefix.

    For assistant turn ``i``: ``G`` = messages before it with the generation prompt, ``H`` =
    messages up to and including it. When both are prefixes of the full rendering, the answer
    is ``H[len(G):]`` without trailing whitespace (the end-of-turn token stays, the newline
    that some templates put after it does not). Templates that rewrite earlier turns (e.g.
    Qwen3's drops reasoning from turns before the last question) are not prefix-stable there;
    such turns stay untrained rather than being trained on text the model never sees.
    """

    def render(msgs: Sequence[Message], generate: bool) -> str:
        text: str = tokenizer.apply_chat_template(
            list(msgs), tokenize=False, add_generation_prompt=generate
        )
        return text

    full = render(messages, add_generation_prompt)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        upto = render(messages[: i + 1], False)
        if upto.startswith(before) and full.startswith(upto):
            start = len(before)
            end = start + len(upto[start:].rstrip())
            if end > start and (not spans or start >= spans[-1][1]):
                spans.append((start, end))
    segments: list[Segment] = []
    cursor = 0
    for start, end in spans:
        if start > cursor:
            segments.append(Segment(full[cursor:start], False))
        segments.append(Segment(full[start:end], True))
        cursor = end
    if cursor < len(full):
        segments.append(Segment(full[cursor:], False))
    return segments

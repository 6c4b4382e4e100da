"""The training format as a Jinja chat template, and its stop tokens, for the published model.

A model trained with ``spec.template`` only answers well when it is prompted in exactly that
format. Serving stacks (``tokenizer.apply_chat_template``, vLLM, TGI, llama.cpp) take the
format from the tokenizer's ``chat_template`` and stop at ``generation_config.json``'s
``eos_token_id``, so the tokenizer published in ``adapter/`` and ``merged/`` carries a template
that renders byte for byte what :func:`~finetune_trainer.data._templates.render_segments` fed
the model, and the generation config carries the template's end-of-turn token.

The named templates are generated from the same rules as the Python renderers in
``_templates.py`` (one Jinja body per family), preceded by the normalization training applied
to every conversation (``_normalize.py``): role aliases (``human``, ``gpt``, ``observation``...),
OpenAI content parts, ``reasoning_content`` composed into a ``<think>`` block, reasoning
stripped from answers under ``reasoning: strip``, ``spec.template.system`` when the
conversation has no system message. ``auto`` trained with the tokenizer's own template: it is
published as it is, wrapped only to apply ``template.system`` and ``reasoning: strip`` first
(the two things training did before rendering with it). The unit tests render conversations
both ways and compare the strings.

Qwen3's ``enable_thinking=False`` (``apply_chat_template(..., enable_thinking=False)``) is
honoured by the ``qwen3`` template under ``reasoning: keep``: the generation prompt then ends
with the empty think block, which is how training wrote answers that have no reasoning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.spec import Template

from finetune_trainer.data._reasoning import THINK_CLOSE, THINK_OPEN

GENERATION_CONFIG = "generation_config.json"

# End-of-turn tokens first (what every trained answer ends with), then end-of-text tokens.
_STOP_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_end|>",),
    "qwen3": ("<|im_end|>", "<|endoftext|>"),
    "deepseek-r1": ("<｜end▁of▁sentence｜>",),
    "llama3": ("<|eot_id|>", "<|end_of_text|>"),
    "alpaca": (),  # the tokenizer's eos_token, added for every template
    "auto": (),
}


@dataclass(frozen=True)
class ChatFormat:
    """What the published tokenizer and generation config say about prompting the model."""

    template: str  # spec.template.name
    chat_template: str | dict[str, str] | None  # the Jinja source(s) the tokenizer carries
    stop_tokens: tuple[str, ...]  # the template's stop tokens that the vocabulary has
    eos_token_id: tuple[int, ...]  # generation_config.json's eos_token_id


def jinja_literal(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal (Jinja unescapes it like Python)."""
    escapes = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "'" + "".join(out) + "'"


def _normalize_block(template: Template) -> str:
    """Jinja that turns ``messages`` into ``ftj.messages`` the way training normalized data."""
    strip = template.reasoning == "strip"
    lines = [
        "{%- set ftj = namespace(messages=[]) %}",
        "{%- for message in messages %}",
        "{%- set role = (message.role | string).strip().lower() %}",
        "{%- set role = {'human': 'user', 'gpt': 'assistant', 'function_call': 'assistant', "
        "'observation': 'tool', 'function': 'tool'}.get(role, role) %}",
        "{%- if message.content is string %}",
        "{%- set content = message.content %}",
        "{%- elif message.content is none or message.content is not defined %}",
        "{%- set content = '' %}",
        "{%- elif message.content is mapping %}",
        "{%- set content = message.content | string %}",
        "{%- elif message.content is iterable %}",
        "{%- set parts = namespace(text='') %}",
        "{%- for part in message.content %}",
        "{%- set parts.text = parts.text + "
        "(part.get('text', '') if part is mapping else part | string) %}",
        "{%- endfor %}",
        "{%- set content = parts.text %}",
        "{%- else %}",
        "{%- set content = message.content | string %}",
        "{%- endif %}",
        "{%- if role == 'assistant' %}",
        "{%- set thought = message.reasoning_content or message.reasoning %}",
        "{%- if thought is string and thought.strip() %}",
        f"{{%- set content = {jinja_literal(THINK_OPEN + chr(10))} + thought.strip() + "
        f"{jinja_literal(chr(10) + THINK_CLOSE + chr(10) * 2)} + content.lstrip() %}}",
        "{%- endif %}",
    ]
    if strip:
        lines += _strip_reasoning_lines()
    lines += [
        "{%- endif %}",
        "{%- set ftj.messages = ftj.messages + [{'role': role, 'content': content}] %}",
        "{%- endfor %}",
    ]
    lines += _default_system_lines(template, "ftj.messages")
    return "\n".join(lines)


def _strip_reasoning_lines() -> list[str]:
    """Jinja for ``strip_reasoning(content)``: every ``\\s*<think>…</think>\\s*`` removed (the
    first ``</think>`` closes the block), an unclosed block kept, then ``strip()``; applied only
    when the answer contains ``<think>``, as in ``_reasoning.py``."""
    opening, closing = jinja_literal(THINK_OPEN), jinja_literal(THINK_CLOSE)
    return [
        f"{{%- if {opening} in content %}}",
        "{%- set cut = namespace(out='', open=false, block='') %}",
        f"{{%- for piece in content.split({opening}) %}}",
        "{%- if loop.first %}",
        "{%- set cut.out = piece %}",
        "{%- else %}",
        "{%- if not cut.open %}",
        "{%- set cut.open = true %}",
        "{%- set cut.block = '' %}",
        "{%- endif %}",
        f"{{%- set cut.block = cut.block + {opening} + piece %}}",
        f"{{%- if {closing} in piece %}}",
        f"{{%- set cut.out = cut.out.rstrip() + piece.split({closing}, 1)[1].lstrip() %}}",
        "{%- set cut.open = false %}",
        "{%- endif %}",
        "{%- endif %}",
        "{%- endfor %}",
        "{%- if cut.open %}",
        "{%- set cut.out = cut.out + cut.block %}",
        "{%- endif %}",
        "{%- set content = cut.out.strip() %}",
        "{%- endif %}",
    ]


def _default_system_lines(template: Template, target: str) -> list[str]:
    if not template.system:
        return []
    system = jinja_literal(template.system)
    return [
        f"{{%- if {target} | length == 0 or "
        f"({target}[0].role | string).strip().lower() != 'system' %}}",
        f"{{%- set {target} = [{{'role': 'system', 'content': {system}}}] + {target} %}}",
        "{%- endif %}",
    ]


def _qwen3_body(template: Template) -> list[str]:
    empty_think = jinja_literal("<think>\n\n</think>\n\n")
    if template.reasoning == "strip":
        tail = f"{{{{- {empty_think} }}}}"
    else:  # Qwen3's non-thinking switch, as the model family's own template spells it
        tail = (
            "{%- if enable_thinking is defined and enable_thinking is false %}"
            f"{{{{- {empty_think} }}}}{{%- endif %}}"
        )
    return [
        "{%- for message in ftj.messages %}",
        "{%- if message.role == 'assistant' %}",
        "{{- '<|im_start|>assistant\\n' }}",
        "{%- if not message.content.lstrip().startswith('<think>') %}",
        f"{{{{- {empty_think} }}}}",
        "{%- endif %}",
        "{{- message.content + '<|im_end|>\\n' }}",
        "{%- elif message.role == 'tool' %}",
        "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + "
        "'\\n</tool_response><|im_end|>\\n' }}",
        "{%- else %}",
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}",
        "{%- endif %}",
        "{%- endfor %}",
        "{%- if add_generation_prompt %}",
        "{{- '<|im_start|>assistant\\n' }}",
        tail,
        "{%- endif %}",
    ]


def _chatml_body(template: Template) -> list[str]:
    return [
        "{%- for message in ftj.messages %}",
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}",
        "{%- endfor %}",
        "{%- if add_generation_prompt %}",
        "{{- '<|im_start|>assistant\\n' }}",
        "{%- endif %}",
    ]


def _deepseek_r1_body(template: Template) -> list[str]:
    return [
        "{{- '<｜begin▁of▁sentence｜>' }}",
        "{%- for message in ftj.messages %}",
        "{%- if message.role == 'system' %}",
        "{{- message.content }}",
        "{%- elif message.role == 'user' %}",
        "{{- '<｜User｜>' + message.content }}",
        "{%- elif message.role == 'tool' %}",
        "{{- '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message.content + "
        "'<｜tool▁output▁end｜><｜tool▁outputs▁end｜>' }}",
        "{%- else %}",
        "{{- '<｜Assistant｜>' + message.content + '<｜end▁of▁sentence｜>' }}",
        "{%- endif %}",
        "{%- endfor %}",
        "{%- if add_generation_prompt %}",
        "{{- '<｜Assistant｜>' }}",
        "{%- endif %}",
    ]


def _llama3_body(template: Template) -> list[str]:
    return [
        "{{- '<|begin_of_text|>' }}",
        "{%- for message in ftj.messages %}",
        "{{- '<|start_header_id|>' + ('ipython' if message.role == 'tool' else message.role) + "
        "'<|end_header_id|>\\n\\n' + message.content.strip() + '<|eot_id|>' }}",
        "{%- endfor %}",
        "{%- if add_generation_prompt %}",
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}",
        "{%- endif %}",
    ]


def _alpaca_body(template: Template, eos: str) -> list[str]:
    # Training drops the "\n\n" after the last answer (or after an empty system prompt that
    # ends the conversation) unless a generation prompt follows.
    last = "loop.last and not add_generation_prompt"
    return [
        "{%- for message in ftj.messages %}",
        "{%- if message.role == 'system' %}",
        "{{- message.content }}",
        f"{{%- if not ({last} and message.content == '') %}}{{{{- '\\n\\n' }}}}{{%- endif %}}",
        "{%- elif message.role == 'assistant' %}",
        f"{{{{- message.content + {jinja_literal(eos)} }}}}",
        f"{{%- if not ({last}) %}}{{{{- '\\n\\n' }}}}{{%- endif %}}",
        "{%- else %}",
        "{{- '### Instruction:\\n' + message.content + '\\n\\n### Response:\\n' }}",
        "{%- endif %}",
        "{%- endfor %}",
    ]


def _tokenizer_eos(tokenizer: Any) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    return str(eos) if eos else ""


def named_chat_template(template: Template, tokenizer: Any) -> str:
    """The Jinja source of a named ``spec.template`` (not ``auto``) for ``tokenizer``.

    The tokenizer matters only for ``alpaca``, whose answers end with its ``eos_token``.
    """
    if template.name == "qwen3":
        body = _qwen3_body(template)
    elif template.name == "chatml":
        body = _chatml_body(template)
    elif template.name == "deepseek-r1":
        body = _deepseek_r1_body(template)
    elif template.name == "llama3":
        body = _llama3_body(template)
    elif template.name == "alpaca":
        body = _alpaca_body(template, _tokenizer_eos(tokenizer))
    else:
        raise ValueError(f"no named chat template {template.name!r}")
    header = (
        f"{{#- finetune-operator: spec.template {{name: {template.name}, "
        f"reasoning: {template.reasoning}}}; the format the model was trained in -#}}"
    )
    return "\n".join([header, _normalize_block(template), *body])


def _wrapped_own_template(template: Template, own: str) -> str:
    """The tokenizer's own template, after Jinja that applies ``template.system`` and
    ``reasoning: strip`` to ``messages`` (other message keys are kept)."""
    lines = [
        "{#- finetune-operator: spec.template {name: auto}: the tokenizer's own template, given "
        "the conversation as training normalized it -#}",
        "{%- set ftj = namespace(messages=[]) %}",
        "{%- for message in messages %}",
        "{%- set content = message.content %}",
    ]
    if template.reasoning == "strip":
        lines += [
            "{%- if message.role == 'assistant' and content is string %}",
            *_strip_reasoning_lines(),
            "{%- endif %}",
        ]
    lines += [
        "{%- set ftj.messages = ftj.messages + [dict(message, content=content)] %}",
        "{%- endfor %}",
        *_default_system_lines(template, "ftj.messages"),
        "{%- set messages = ftj.messages %}",
        own,
    ]
    return "\n".join(lines)


def published_chat_template(template: Template, tokenizer: Any) -> str | dict[str, str] | None:
    """The ``chat_template`` the published tokenizer carries for ``spec.template``.

    Named templates: generated Jinja. ``auto``: the tokenizer's own template(s), unchanged
    unless ``template.system`` or ``reasoning: strip`` must be applied first.
    """
    if template.name != "auto":
        return named_chat_template(template, tokenizer)
    own = getattr(tokenizer, "chat_template", None)
    if not own or (not template.system and template.reasoning != "strip"):
        return own if isinstance(own, (str, dict)) or own is None else str(own)
    if isinstance(own, dict):
        return {name: _wrapped_own_template(template, str(src)) for name, src in own.items()}
    return _wrapped_own_template(template, str(own))


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def stop_tokens(template: Template, tokenizer: Any) -> tuple[str, ...]:
    """The template's stop tokens that ``tokenizer`` has as single tokens, end-of-turn first."""
    vocab = tokenizer.get_vocab()
    wanted = [*_STOP_TOKENS[template.name], _tokenizer_eos(tokenizer)]
    return tuple(dict.fromkeys(t for t in wanted if t and t in vocab))


def stop_token_ids(template: Template, tokenizer: Any, existing: Any = None) -> tuple[int, ...]:
    """``eos_token_id`` for generation_config.json: the template's stop tokens, then the ids
    the base model's generation config already had (``existing``), without repeats."""
    vocab = tokenizer.get_vocab()
    ids = [int(vocab[t]) for t in stop_tokens(template, tokenizer)] + _as_ids(existing)
    return tuple(dict.fromkeys(ids))


def publish_chat_format(
    folders: Sequence[Path], template: Template, tokenizer: Any, base_model_dir: Path
) -> ChatFormat:
    """Write the training format into each existing folder of ``folders``: the tokenizer with
    its chat template, and ``generation_config.json`` with the stop tokens.

    A folder without a generation config (``adapter/``) gets the base model's, so whoever loads
    the adapter finds the stop tokens next to it too. ``tokenizer`` is left as it was.
    """
    source = published_chat_template(template, tokenizer)
    base_config = _read_json(base_model_dir / GENERATION_CONFIG)
    ids: tuple[int, ...] = ()
    for folder in folders:
        if not folder.is_dir():
            continue
        saved = tokenizer.chat_template
        tokenizer.chat_template = source
        try:
            tokenizer.save_pretrained(folder)
        finally:
            tokenizer.chat_template = saved
        config = _read_json(folder / GENERATION_CONFIG) or dict(base_config)
        ids = stop_token_ids(template, tokenizer, config.get("eos_token_id"))
        if ids:
            config["eos_token_id"] = list(ids)
        (folder / GENERATION_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not ids:
        ids = stop_token_ids(template, tokenizer, base_config.get("eos_token_id"))
    return ChatFormat(template.name, source, stop_tokens(template, tokenizer), ids)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text())
    return value if isinstance(value, dict) else {}

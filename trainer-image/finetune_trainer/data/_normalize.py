"""Raw records → normalized conversations, whatever the dataset's layout.

Every supported layout (alpaca, sharegpt, OpenAI-style messages, plain text) becomes one shape:
a list of ``{"role", "content"}`` messages with roles system/user/assistant/tool, or raw text.
Column names follow LLaMA-Factory's ``dataset_info.json`` (``spec.datasets[i].columns``) so
users can carry their mapping over. Everything a user can get wrong is checked here, with the
file, line/item/row and column in the message, before a single token is produced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from finetune_api.spec import DatasetSource, Template

from finetune_trainer.data._files import FileRecords, Record
from finetune_trainer.data._problems import ProblemLog, locate
from finetune_trainer.data._reasoning import compose, strip_reasoning
from finetune_trainer.data._types import Example, Message
from finetune_trainer.data._variables import UndefinedVariable, substitute

Layout = Literal["alpaca", "conversation", "text"]

# LLaMA-Factory's default column names per role of a column.
ALPACA_DEFAULTS: Mapping[str, str] = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
}
ROLE_ALIASES: Mapping[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
_PROMPT_SIDE = ("user", "tool")


class DatasetNormalizer:
    """Turns the records of ``spec.datasets[index]`` into :class:`Example` s."""

    def __init__(
        self, index: int, source: DatasetSource, template: Template, problems: ProblemLog
    ) -> None:
        self.index = index
        self.source = source
        self.template = template
        self.problems = problems
        self.field = f"spec.datasets[{index}]"

    # ---- layout and columns -------------------------------------------------------------

    def layout(self, records: FileRecords) -> tuple[Layout, dict[str, str]] | None:
        """The file's layout and the column for each role, or ``None`` (problem recorded)."""
        cols = self.source.columns
        found = set(records.columns)
        fmt: str | None = self.source.format
        if fmt == "auto":
            fmt = self._detect(found)
            if fmt is None:
                self.problems.add(
                    records.file,
                    "cannot tell the dataset format from its columns "
                    f"(found: {_names(records.columns)})",
                    f"set {self.field}.format (alpaca, sharegpt, messages or text) and map the "
                    f"columns in {self.field}.columns (e.g. prompt: Question, response: Answer)",
                )
                return None
        mapping: dict[str, str] = {}
        explicit = {k: v for k, v in cols.model_dump().items() if v is not None}
        if fmt == "alpaca":
            layout: Layout = "alpaca"
            mapping = {**ALPACA_DEFAULTS, **explicit}
            required = ["prompt", "response"] + [
                k for k in explicit if k in ALPACA_DEFAULTS or k == "reasoning"
            ]
        elif fmt in ("sharegpt", "messages"):
            layout = "conversation"
            default = "conversations" if fmt == "sharegpt" else "messages"
            if default not in found:
                other = "messages" if fmt == "sharegpt" else "conversations"
                default = other if other in found else default
            mapping = {"messages": default, **{k: v for k, v in explicit.items()}}
            mapping.setdefault("system", "system")
            required = ["messages"] + [k for k in explicit if k in ("system", "reasoning")]
        else:
            layout = "text"
            mapping = {"text": explicit.get("text", "text")}
            required = ["text"]
        ok = True
        for role in dict.fromkeys(required):
            column = mapping[role]
            if column not in found:
                ok = False
                self.problems.add(
                    locate(records.file, column=column),
                    f"column not found (columns found: {_names(records.columns)})",
                    f"rename the column in the file, or set {self.field}.columns.{role} to the "
                    "column that holds it",
                )
        return (layout, mapping) if ok else None

    def _detect(self, found: set[str]) -> str | None:
        cols = self.source.columns
        if cols.messages:
            return "messages"
        if cols.text:
            return "text"
        if cols.prompt or cols.response:
            return "alpaca"
        if "conversations" in found:
            return "sharegpt"
        if "messages" in found:
            return "messages"
        if "instruction" in found and "output" in found:
            return "alpaca"
        if "text" in found:
            return "text"
        return None

    # ---- records ------------------------------------------------------------------------

    def normalize(self, records: FileRecords) -> list[Example]:
        """All examples of one file (bad records are recorded as problems and skipped)."""
        resolved = self.layout(records)
        if resolved is None:
            return []
        layout, mapping = resolved
        convert = {
            "alpaca": self._alpaca,
            "conversation": self._conversation,
            "text": self._text,
        }[layout]
        examples = []
        for record in records.records:
            example = convert(record, mapping)
            if example is not None:
                examples.append(example)
        return examples

    def _text(self, record: Record, mapping: Mapping[str, str]) -> Example | None:
        column = mapping["text"]
        text = _as_text(record.data.get(column))
        if not text.strip():
            self._problem(record, column, "empty text", "remove the example or fill in its text")
            return None
        filled = self._fill(record, column, text)
        if filled is None:
            return None
        return Example(self.index, locate(record.file, record.position), text=filled)

    def _alpaca(self, record: Record, mapping: Mapping[str, str]) -> Example | None:
        data = record.data
        prompt = _as_text(data.get(mapping["prompt"]))
        query = _as_text(data.get(mapping["query"]))
        response = _as_text(data.get(mapping["response"]))
        if query.strip():
            prompt = f"{prompt}\n{query}" if prompt.strip() else query
        if not response.strip():
            if mapping["response"] not in data:
                # A key missing from one record (typically a typo) is not an empty answer.
                found = ", ".join(sorted(str(k) for k in data)) or "none"
                self._problem(
                    record,
                    mapping["response"],
                    f"missing (this record has: {found})",
                    "add the answer under that key, or fix the key's spelling",
                )
                return None
            self._problem(
                record,
                mapping["response"],
                "empty response",
                "write the answer the model should learn, or remove the example",
            )
            return None
        if not prompt.strip():
            self._problem(
                record,
                mapping["prompt"],
                "empty prompt",
                "write the instruction or remove the example",
            )
            return None
        reasoning_column = mapping.get("reasoning")
        if reasoning_column:
            reasoning = _as_text(data.get(reasoning_column))
            if reasoning.strip():
                response = compose(reasoning, response)
        messages: list[Message] = []
        sources: list[str] = []
        system = _as_text(data.get(mapping["system"]))
        if system.strip():
            messages.append({"role": "system", "content": system})
            sources.append(mapping["system"])
        history = data.get(mapping["history"])
        if history not in (None, "", []):
            turns = self._history(record, mapping["history"], history)
            if turns is None:
                return None
            messages.extend(turns)
            sources.extend(mapping["history"] for _ in turns)
        messages.append({"role": "user", "content": prompt})
        sources.append(
            mapping["prompt"] if not query.strip() else f"{mapping['prompt']}/{mapping['query']}"
        )
        messages.append({"role": "assistant", "content": response})
        sources.append(mapping["response"])
        return self._finish(record, sources, messages)

    def _history(self, record: Record, column: str, value: Any) -> list[Message] | None:
        if isinstance(value, str):
            value = _json_or_none(value)
        turns: list[Message] = []
        if isinstance(value, list):
            for pair in value:
                if (
                    isinstance(pair, (list, tuple))
                    and len(pair) == 2
                    and all(isinstance(x, str) for x in pair)
                ):
                    turns.append({"role": "user", "content": pair[0]})
                    turns.append({"role": "assistant", "content": pair[1]})
                else:
                    break
            else:
                return turns
        self._problem(
            record,
            column,
            "history must be a list of [prompt, response] pairs of strings",
            'write it as [["earlier question", "earlier answer"], ...] or leave it empty',
        )
        return None

    def _conversation(self, record: Record, mapping: Mapping[str, str]) -> Example | None:
        column = mapping["messages"]
        value = record.data.get(column)
        if isinstance(value, str):
            value = _json_or_none(value)
        tolist = getattr(value, "tolist", None)
        if callable(tolist):  # numpy arrays, when a caller read Parquet through pandas
            value = tolist()
        if not isinstance(value, list) or not value:
            self._problem(
                record,
                column,
                f"messages must be a non-empty list, found {type(value).__name__}",
                'write the conversation as [{"role": "user", "content": ...}, '
                '{"role": "assistant", "content": ...}]',
            )
            return None
        messages: list[Message] = []
        for j, item in enumerate(value):
            where = f"{column}[{j}]"
            if not isinstance(item, dict):
                self._problem(
                    record,
                    where,
                    "a message must be an object",
                    'use {"role": ..., "content": ...}',
                )
                return None
            sharegpt = "from" in item or ("value" in item and "role" not in item)
            role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
            if role_key not in item or content_key not in item:
                missing = [k for k in (role_key, content_key) if k not in item]
                self._problem(
                    record,
                    where,
                    f"message has no {' or '.join(repr(m) for m in missing)} "
                    f"(keys: {_names(tuple(item))})",
                    "give every message from/value (sharegpt) or role/content (messages)",
                )
                return None
            raw_role = str(item[role_key]).strip().lower()
            role = ROLE_ALIASES.get(raw_role)
            if role is None:
                self._problem(
                    record,
                    where,
                    f"unknown role {item[role_key]!r}",
                    f"use one of {', '.join(sorted(ROLE_ALIASES))}",
                )
                return None
            content = _as_text(item[content_key])
            thought = item.get("reasoning_content") or item.get("reasoning")
            if role == "assistant" and isinstance(thought, str) and thought.strip():
                content = compose(thought, content)
            messages.append({"role": role, "content": content})
        reasoning_column = mapping.get("reasoning")
        if reasoning_column and messages and messages[-1]["role"] == "assistant":
            reasoning = _as_text(record.data.get(reasoning_column))
            if reasoning.strip():
                messages[-1]["content"] = compose(reasoning, messages[-1]["content"])
        sources = [f"{column}[{j}]" for j in range(len(messages))]
        if not self._check_order(record, column, messages):
            return None
        system = _as_text(record.data.get(mapping["system"]))
        if system.strip() and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
            sources.insert(0, mapping["system"])
        return self._finish(record, sources, messages)

    def _check_order(self, record: Record, column: str, messages: list[Message]) -> bool:
        """System first (optional), then user/tool and assistant turns alternating, ending with
        an assistant turn with content."""
        fix = (
            "a conversation is an optional system message, then user (or observation/tool) and "
            "assistant turns alternating, ending with an assistant turn"
        )
        expect_prompt = True
        offset = 1 if messages[0]["role"] == "system" else 0
        for j, message in enumerate(messages):
            role = message["role"]
            where = f"{column}[{j}]"
            if role == "system":
                if j != 0:
                    self._problem(record, where, "system message after the first turn", fix)
                    return False
                continue
            if expect_prompt and role not in _PROMPT_SIDE:
                what = (
                    "starts with an assistant turn"
                    if j == offset
                    else "two assistant turns in a row"
                )
                self._problem(record, where, f"roles out of order: conversation {what}", fix)
                return False
            if not expect_prompt and role != "assistant":
                self._problem(
                    record,
                    where,
                    f"roles out of order: {role} turn follows a {messages[j - 1]['role']} turn",
                    fix,
                )
                return False
            if role == "assistant" and not message["content"].strip():
                self._problem(
                    record, where, "empty assistant content", "write the answer or remove the turn"
                )
                return False
            expect_prompt = role == "assistant"
        if not expect_prompt:
            self._problem(
                record,
                f"{column}[{len(messages) - 1}]",
                "roles out of order: conversation does not end with an assistant turn",
                fix,
            )
            return False
        return True

    def _finish(
        self, record: Record, sources: list[str], messages: list[Message]
    ) -> Example | None:
        """Variables, the template's default system prompt and reasoning stripping.

        ``sources[k]`` is the column (or ``messages[j]``) that message ``k`` came from.
        """
        for message, column in zip(messages, sources, strict=True):
            filled = self._fill(record, column, message["content"])
            if filled is None:
                return None
            message["content"] = filled
            if message["role"] == "assistant" and self.template.reasoning == "strip":
                message["content"] = strip_reasoning(message["content"])
                if not message["content"].strip():
                    self._problem(
                        record,
                        column,
                        "the answer is empty once its <think> reasoning is stripped",
                        "add an answer after </think>, or set spec.template.reasoning: keep",
                    )
                    return None
        if messages[0]["role"] != "system" and self.template.system:
            messages.insert(0, {"role": "system", "content": self.template.system})
        return Example(self.index, locate(record.file, record.position), messages=tuple(messages))

    def _fill(self, record: Record, column: str, text: str) -> str | None:
        try:
            return substitute(text, self.source.variables)
        except UndefinedVariable as exc:
            self._problem(
                record,
                column,
                f"undefined variable {{{{{exc.name}}}}}",
                f"define it in {self.field}.variables (e.g. {exc.name}: ...), or remove the "
                "placeholder from the data",
            )
            return None

    def _problem(self, record: Record, column: str, what: str, fix: str) -> None:
        self.problems.add(locate(record.file, record.position, column), what, fix)


def _as_text(value: Any) -> str:
    """A cell as text: missing/null → "", OpenAI content parts → their text joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in value
        )
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return str(value)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _names(columns: tuple[str, ...] | list[str]) -> str:
    return ", ".join(repr(c) for c in columns) if columns else "none"

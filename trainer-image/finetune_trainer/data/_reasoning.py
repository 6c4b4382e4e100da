"""Chain-of-thought in answers: composed as a ``<think>`` block, or stripped.

DeepSeek-R1 and Qwen3 emit ``<think>\\n…\\n</think>\\n\\n`` before the answer, so a reasoning
column is composed the same way. ``template.reasoning: strip`` trains a non-thinking model:
it drops the reasoning column and any ``<think>`` block already written into answers.
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"\s*<think>.*?</think>\s*", re.DOTALL)


def compose(reasoning: str, answer: str) -> str:
    """The answer with its reasoning in front, in the R1/Qwen3 layout."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{answer.lstrip()}"


def strip_reasoning(answer: str) -> str:
    """The answer without any ``<think>…</think>`` block."""
    if THINK_OPEN not in answer:
        return answer
    return _THINK_BLOCK.sub("", answer, count=0).strip()


def has_reasoning(answer: str) -> bool:
    """Whether the answer starts with a ``<think>`` block."""
    return answer.lstrip().startswith(THINK_OPEN)

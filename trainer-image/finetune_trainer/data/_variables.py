"""``{{name}}`` placeholders in the data, filled from ``spec.datasets[i].variables``.

Self-cognition datasets ship answers such as "I am {{name}}, made by {{author}}". Only the
tight form ``{{identifier}}`` is a placeholder: ``{{ x }}`` with spaces is left alone, because
code and template snippets inside ordinary data use it. Lookup is exact first, then
case-insensitive, since published datasets write ``{{NAME}}`` while specs say ``name``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")


class UndefinedVariable(Exception):
    """A placeholder with no value; ``name`` is the placeholder as written."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with every ``{{name}}`` replaced; raise :class:`UndefinedVariable` if unknown."""
    if "{{" not in text:
        return text
    folded = {k.lower(): v for k, v in variables.items()}

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        if name.lower() in folded:
            return folded[name.lower()]
        raise UndefinedVariable(name)

    return PLACEHOLDER.sub(value, text)

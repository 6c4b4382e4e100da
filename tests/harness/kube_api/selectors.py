"""Label and field selectors, as list and watch requests filter with them.

Why: the operator lists a Job's pods by label (``job-name=...``), kubectl filters events by
``involvedObject.name`` and kopf narrows watches by selectors, so the store must apply them
as kube-apiserver does
(https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors,
https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/). Field
selectors are accepted on any dotted path: upstream allows only a few per kind, and a test
that relies on one it rejects would fail against a real cluster, not here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tests.harness.kube_api.errors import ApiError

_SET_RE = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def label_selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Equality (``=``, ``==``, ``!=``), set (``in``, ``notin``) and existence selectors."""
    for term in _split_selector(selector or ""):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term and " in " not in term and " notin " not in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        else:
            match = _SET_RE.match(term)
            if not match:
                raise ApiError(400, f"unable to parse requirement: {term!r}")
            negated, key, op, values = match.groups()
            if op is None:
                if (key in labels) == bool(negated):
                    return False
                continue
            options = {v.strip() for v in values.split(",")}
            if op == "in" and labels.get(key) not in options:
                return False
            if op == "notin" and labels.get(key) in options:
                return False
    return True


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def field_selector_matches(selector: str | None, obj: Mapping[str, Any]) -> bool:
    """``a.b=c`` / ``a.b==c`` / ``a.b!=c`` terms on any dotted path (Kubernetes allows a few)."""
    for term in (selector or "").split(","):
        if not term.strip():
            continue
        if "!=" in term:
            path, value = term.split("!=", 1)
            if _field_value(obj, path.strip()) == value.strip():
                return False
        else:
            path, value = term.replace("==", "=").split("=", 1)
            if _field_value(obj, path.strip()) != value.strip():
                return False
    return True

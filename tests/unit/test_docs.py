"""Docs that must follow the code: the generated field reference, and troubleshooting.md
covering every condition reason the operator and trainer can set."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from finetune_cli.cmd_docs import render_reference

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
OBSERVE = REPO / "operator" / "finetune_operator" / "observe.py"
TRAINER_ERRORS = REPO / "trainer-image" / "finetune_trainer" / "errors.py"
CAMEL = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z]+)+$|^[A-Z][a-z]+[A-Z]{2,}[a-z]*$|^[A-Z][a-z]{3,}$")
CONDITION_TYPES = {"Running", "Suspended", "Succeeded", "Failed", "Interrupted", "Resumed"}
# The brief's list: these must always be documented, even before the code sets them.
REQUIRED = {
    "Unschedulable",
    "ImagePullBackOff",
    "ErrImagePull",
    "OOMKilled",
    "InvalidInput",
    "OutputConflict",
    "UnsupportedHardware",
    "DeadlineExceeded",
    "BackoffLimitExceeded",
    "Preempted",
    "Resumed",
    "StorageError",
}


def test_reference_is_current() -> None:
    committed = (REPO / "docs" / "reference.md").read_text()
    assert committed == render_reference(), (
        "docs/reference.md drifted: ftj docs --write docs/reference.md"
    )


def test_reference_covers_every_spec_field() -> None:
    from finetune_api import FineTuneJobSpec

    text = render_reference()
    for name, field in FineTuneJobSpec.model_fields.items():
        assert f"`spec.{field.alias or name}" in text


def _reasons_in_observe() -> set[str]:
    """Condition reasons observe.py sets: _Verdict(phase, REASON, ...), the reason slot of the
    (type, status, REASON, message) condition tuples, ``return REASON, message`` pairs, the
    reason sets it declares and the table in its docstring."""
    tree = ast.parse(OBSERVE.read_text())
    found: set[str] = set()

    def constants(node: ast.AST | None) -> set[str]:
        if node is None:
            return set()
        return {
            n.value
            for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and CAMEL.match(n.value)
        }

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "_Verdict"
            and len(node.args) > 1
        ):
            found |= constants(node.args[1])
        elif (
            isinstance(node, ast.Tuple)
            and len(node.elts) == 4
            and isinstance(node.elts[0], ast.Constant)
            and node.elts[0].value in CONDITION_TYPES
        ):
            found |= constants(node.elts[2])
        elif (
            isinstance(node, ast.Return)
            and isinstance(node.value, ast.Tuple)
            and len(node.value.elts) == 2
        ):
            found |= constants(node.value.elts[0])
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name)
            and t.id.endswith("_REASONS")
            or getattr(t, "id", "") == "WAITING_REASONS_SHOWN"
            for t in node.targets
        ):
            found |= constants(node.value)
    # The docstring's table (between its ===== rules): first column, one reason per line.
    table = (ast.get_docstring(tree) or "").split("=====")
    rows = "".join(table[1:-1]) if len(table) > 2 else ""
    for line in rows.splitlines():
        match = re.match(r"^([A-Z][A-Za-z]+),?(\s|$)", line)
        if match:
            found.add(match.group(1))
    # The phases the trainer reports are reasons of Running=True as well.
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "ACTIVE_PHASES" for t in node.targets
        ):
            found |= constants(node.value)
    return found


def _reasons_in_trainer_errors() -> set[str]:
    if not TRAINER_ERRORS.exists():
        return set()
    return set(re.findall(r'reason = "([A-Za-z]+)"', TRAINER_ERRORS.read_text()))


def test_observe_sets_reasons_the_test_can_find() -> None:
    if not OBSERVE.exists():
        pytest.skip("operator/finetune_operator/observe.py not written yet")
    assert {"Unschedulable", "OOMKilled"} <= _reasons_in_observe()


def test_troubleshooting_has_a_section_for_every_reason() -> None:
    headings = " ".join(
        line
        for line in (REPO / "docs" / "troubleshooting.md").read_text().splitlines()
        if line.startswith("#")
    )
    documented = set(re.findall(r"[A-Za-z]+", headings))
    reasons = REQUIRED | _reasons_in_trainer_errors()
    if OBSERVE.exists():
        reasons |= _reasons_in_observe()
    missing = sorted(reasons - documented)
    assert not missing, f"docs/troubleshooting.md has no section for: {missing}"


def test_every_ftj_variable_the_code_names_is_in_the_reference() -> None:
    """Operator settings, the trainer process's variables and the trainer's tuning switches:
    a name in operator/ or trainer-image/ that the generated reference does not list is a
    variable nobody can find out about."""
    named: set[str] = set()
    for root in ("operator", "trainer-image"):
        for path in (REPO / root).rglob("*.py"):
            named |= set(re.findall(r"\bFTJ_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert len(named) > 30  # the scan found the code
    listed = set(re.findall(r"`(FTJ_[A-Z0-9_]+)`", render_reference()))
    missing = sorted(named - listed)
    assert not missing, f"not in `ftj docs` (docs/reference.md): {missing}"


def _parameters(safetensors: Path) -> int:
    """Elements in a safetensors file, from its header alone (tied weights are stored once)."""
    import json
    import math

    with safetensors.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def test_quickstart_figures_agree_with_each_other_and_the_model() -> None:
    """The quickstart's duration is stated once per place a user reads it (README command,
    README prose, the example's header) and the same everywhere (tests/e2e/trainer times the
    run against the README's figure); the example's parameter count is its model's."""
    readme = (REPO / "README.md").read_text()
    example = (REPO / "examples" / "quickstart.yaml").read_text()
    figures = {
        "README command": re.search(r"ftj run examples/quickstart\.yaml .*\(~(\d+) s\)", readme),
        "README prose": re.search(r"after\s+~(\d+) s\s", readme),
        "examples/quickstart.yaml": re.search(r"CPU in about (\d+) seconds", example),
    }
    found = {place: m[1] for place, m in figures.items() if m}
    assert len(found) == len(figures), f"no figure found in {set(figures) - set(found)}"
    assert len(set(found.values())) == 1, f"the quickstart's duration differs: {found}"
    stated = re.search(r"a tiny \(about ([\d.]+)M parameters\)", example)
    assert stated, "examples/quickstart.yaml states no parameter count"
    actual = _parameters(REPO / "examples" / "quickstart" / "tiny-qwen3" / "model.safetensors")
    assert float(stated[1]) == round(actual / 1e6, 2), f"the model has {actual:,} parameters"

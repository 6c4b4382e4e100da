"""The conventions that a reviewer would otherwise check by hand: lint, format and strict types.

CONVENTIONS.md asks for `ruff check` and `ruff format` clean everywhere and `mypy --strict` on
the contract (finetune_api) and the operator (finetune_operator); the trainer (finetune_trainer)
is held to the same, with an ``Any`` only where a library without types forces it (pyproject's
mypy overrides name those libraries). CI enforces it here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_check_is_clean() -> None:
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout[-4000:]


def test_ruff_format_is_clean() -> None:
    done = _run("ruff", "format", "--check", ".")
    assert done.returncode == 0, done.stdout[-4000:]


def test_api_and_operator_pass_mypy_strict() -> None:
    done = _run("mypy", "--strict", "operator/finetune_api", "operator/finetune_operator")
    assert done.returncode == 0, done.stdout[-4000:]


def test_trainer_passes_mypy_strict() -> None:
    done = _run("mypy", "--strict", "trainer-image/finetune_trainer")
    assert done.returncode == 0, done.stdout[-4000:]

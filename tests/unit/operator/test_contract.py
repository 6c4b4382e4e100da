"""The operator's copy of the trainer contract matches the trainer's."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_operator import contract
from finetune_trainer import errors as trainer_errors

pytestmark = pytest.mark.unit


def test_invalid_input_exit_code_matches_the_trainer() -> None:
    assert contract.EXIT_INVALID_INPUT == trainer_errors.EXIT_INVALID_INPUT == 42


def test_operator_package_does_not_import_the_trainer() -> None:
    package = Path(contract.__file__).parent
    for module in package.glob("*.py"):
        text = module.read_text()
        assert "import finetune_trainer" not in text, module.name
        assert "from finetune_trainer" not in text, module.name

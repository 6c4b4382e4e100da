"""The kind tier's marker (tests/conftest.py registers the other tiers' markers)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kind: the kind tier (tests/kind): a kind cluster with a GPU worker; needs Docker, "
        "kind and the NVIDIA container toolkit, else only its Docker-free checks run",
    )

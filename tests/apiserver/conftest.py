"""Apiserver tier: report how many manifests the real server accepted and refused."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.apiserver.test_finetunejob_crd import TALLY

    if TALLY["accepted"] or TALLY["refused"]:
        terminalreporter.write_line(
            f"apiserver: the real Kubernetes API server accepted {TALLY['accepted']} "
            f"and refused {TALLY['refused']} FineTuneJob manifests"
        )

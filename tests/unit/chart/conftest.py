"""Render the Helm chart with its ci/ value sets (helm template), once per session."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "finetune-operator"
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "ftj", "finetune-system"

Render = Callable[..., list[dict[str, Any]]]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm, returning the finished process (check returncode yourself)."""
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def helm(kube_tools_bin: Path) -> Path:
    return kube_tools_bin / "helm"


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """``render(values_file=None, *set_args)``: the manifests helm template produces."""
    cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def _render(values_file: Path | None = None, *sets: str) -> list[dict[str, Any]]:
        key = (values_file, sets)
        if key not in cache:
            args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
            if values_file is not None:
                args += ["-f", str(values_file)]
            for item in sets:
                args += ["--set", item]
            done = run_helm(helm, *args)
            assert done.returncode == 0, done.stderr
            cache[key] = [d for d in yaml.safe_load_all(done.stdout) if d]
        return cache[key]

    return _render


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]

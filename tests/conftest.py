"""Shared pytest setup: tier markers and the session-wide real API server.

Tier-specific fixtures live in conftest files of the tier folders; this file only holds what
every tier may need.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.harness.apiserver import BinariesMissingError, KubeApiServer, tools_bin_dir

MARKERS = {
    "unit": "fast component tests: no cluster; at most a loopback S3 server or a subprocess",
    "apiserver": "needs the real apiextensions-apiserver + etcd (.ci/install-apiserver.sh)",
    "e2e": "operator end to end: kopf, trainer process, S3 server, kubectl/helm",
    "faults": "the fault suite: kills, SIGTERMs, a faulty S3 and injected OOMs (tests/faults)",
    "images": "the built images run as pods (buildah, bubblewrap; bash .ci/build-images.sh)",
    "kind": "a kind cluster with a GPU node (Docker, kind, NVIDIA container toolkit)",
    "gpu": "needs a CUDA GPU (the lent device machine)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def _missing(message: str) -> NoReturn:
    """Missing tools fail in CI (a silent skip would hide a whole tier) and skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeApiServer]:
    """A started apiextensions-apiserver + etcd, shared by the whole session."""
    try:
        server = KubeApiServer()
    except BinariesMissingError as exc:
        _missing(str(exc))
    with server:
        yield server


@pytest.fixture(scope="session")
def kube_tools_bin() -> Path:
    """Directory holding the ``kubectl`` and ``helm`` binaries."""
    bin_dir = tools_bin_dir()
    missing = [t for t in ("kubectl", "helm") if not os.access(bin_dir / t, os.X_OK)]
    if missing:
        _missing(f"missing {', '.join(missing)} in {bin_dir}: run .ci/install-kube-tools.sh")
    return bin_dir

"""The image tier's container runtime keeps Kubernetes' rules, so a pod spec that would break
in a cluster breaks here too.

The first tests need no image: they check the rules (command/args over the image's
entrypoint/cmd, which uid and groups run, runAsNonRoot). The last ones run the operator image.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness.cluster import expand_var_refs as _expand
from tests.harness.container_runtime import (
    ContainerConfigError,
    ContainerRuntime,
    ImageConfig,
    Mount,
    _container_argv,
    _identity,
)
from tests.images.conftest import OPERATOR_IMAGE

pytestmark = pytest.mark.images

IMAGE = ImageConfig(
    entrypoint=["python", "-m", "app"],
    cmd=["--serve"],
    env={"PATH": "/opt/venv/bin:/usr/bin"},
    user="1000:1000",
    working_dir="/tmp",
)


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({}, ["python", "-m", "app", "--serve"]),  # the image's entrypoint and cmd
        ({"args": ["--once"]}, ["python", "-m", "app", "--once"]),  # args replace cmd only
        ({"command": ["sh", "-c"]}, ["sh", "-c"]),  # command drops the image's cmd too
        ({"command": ["echo"], "args": ["$(WHO)", "$$(WHO)"]}, ["echo", "pod", "$(WHO)"]),
    ],
)
def test_command_and_args_follow_kubernetes(container: dict[str, object], argv: list[str]) -> None:
    assert _container_argv(container, IMAGE, {"WHO": "pod"}, _expand) == argv


def test_the_security_context_wins_over_the_image_user() -> None:
    assert _identity({}, {}, IMAGE) == (1000, 1000, [])
    pod = {"securityContext": {"runAsUser": 2000, "fsGroup": 3000, "supplementalGroups": [4]}}
    assert _identity(pod, {}, IMAGE) == (2000, 1000, [4, 3000])
    container = {"securityContext": {"runAsUser": 5000, "runAsGroup": 6000}}
    assert _identity(pod, container, IMAGE) == (5000, 6000, [4, 3000])


def test_run_as_non_root_refuses_a_root_user(runtime: ContainerRuntime, tmp_path: Path) -> None:
    pod = {"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}
    container = {"name": "c", "image": OPERATOR_IMAGE, "command": ["true"]}
    with pytest.raises(ContainerConfigError, match="runAsNonRoot and image will run as root"):
        runtime.command(pod, container, {}, [Mount("/tmp", tmp_path)], "p", _expand)


def test_a_writable_root_is_private_to_the_pod(runtime: ContainerRuntime, tmp_path: Path) -> None:
    """Without readOnlyRootFilesystem the pod may write its root, into its own layer: the
    next pod of the same image does not see the file."""
    container = {
        "name": "c",
        "image": OPERATOR_IMAGE,
        "command": ["sh", "-c", "echo hi > /tmp/../opt/mine && cat /opt/mine"],
        "securityContext": {"runAsUser": 0},
    }
    first = runtime.command({}, container, {}, [], "p1", _expand)
    assert subprocess.run(first, capture_output=True, text=True).stdout == "hi\n"
    look = {**container, "command": ["sh", "-c", "test -e /opt/mine && echo leaked || echo clean"]}
    second = runtime.command({}, look, {}, [], "p2", _expand)
    assert subprocess.run(second, capture_output=True, text=True).stdout == "clean\n"

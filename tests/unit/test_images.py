"""Every place that names the images or pins a version agrees with every other.

The chart's default repositories, the Dockerfiles, the build script, the operator's default
trainer image, the kind tier's values and the docs name the same two images with pyproject's
version; constraints.txt pins each dependency pyproject names, inside pyproject's range, and
the Dockerfiles, CI and the README install through it. A user who builds with the README's
command and installs with the chart gets images that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
REGISTRY = "ghcr.io/finetune-dev"
OPERATOR_IMAGE = f"{REGISTRY}/finetune-operator:{VERSION}"
TRAINER_IMAGE = f"{REGISTRY}/finetune-trainer:{VERSION}"
DOCKERFILES = {
    OPERATOR_IMAGE: REPO / "operator" / "Dockerfile",
    TRAINER_IMAGE: REPO / "trainer-image" / "Dockerfile",
}


def pins() -> dict[str, Version]:
    """``name -> version`` of every ``name==version`` line of constraints.txt."""
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            found[canonicalize_name(name)] = Version(version)
    return found


def test_the_chart_defaults_to_the_images_the_dockerfiles_build() -> None:
    chart = yaml.safe_load((REPO / "charts" / "finetune-operator" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "finetune-operator" / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION
    assert f"{values['image']['repository']}:{chart['appVersion']}" == OPERATOR_IMAGE
    trainer = values["trainer"]["image"]["repository"]
    assert f"{trainer}:{chart['appVersion']}" == TRAINER_IMAGE
    for image, dockerfile in DOCKERFILES.items():
        text = dockerfile.read_text()
        assert f"docker build -f {dockerfile.relative_to(REPO)} -t {image} ." in text
        assert f'org.opencontainers.image.version="{VERSION}"' in text


def test_the_operator_and_the_build_script_name_the_same_images() -> None:
    from finetune_operator.settings import DEFAULT_TRAINER_IMAGE

    assert DEFAULT_TRAINER_IMAGE == TRAINER_IMAGE
    script = (REPO / ".ci" / "build-images.sh").read_text()
    assert f'REGISTRY="{REGISTRY}"' in script
    assert 'OPERATOR_IMAGE="$REGISTRY/finetune-operator:$VERSION"' in script
    assert 'TRAINER_IMAGE="$REGISTRY/finetune-trainer:$VERSION"' in script


@pytest.mark.parametrize("doc", ["README.md", "docs/images.md"])
def test_the_docs_name_both_images(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert OPERATOR_IMAGE in text and TRAINER_IMAGE in text, doc
    stale = re.findall(rf"{REGISTRY}/(?!finetune-operator:|finetune-trainer:)[\w.-]+", text)
    assert not stale, f"{doc} names images that are not built: {stale}"


def test_every_dependency_is_pinned_inside_its_range() -> None:
    pinned = pins()
    wanted = list(PROJECT["dependencies"])
    for extra in ("operator", "trainer", "gpu"):
        wanted += PROJECT["optional-dependencies"][extra]
    problems = []
    for text in wanted:
        req = Requirement(text)
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not pinned in constraints.txt")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} is outside pyproject's {req.specifier}")
    assert not problems, "\n".join(problems)


def test_images_ci_and_readme_install_through_the_pins() -> None:
    for dockerfile in DOCKERFILES.values():
        text = dockerfile.read_text()
        installs = re.findall(r"^RUN pip install[^\n]*(?:\\\n[^\n]*)*", text, re.M)
        assert installs, dockerfile
        for command in installs:
            assert "-c /opt/finetune/constraints.txt" in command, (dockerfile, command)
        assert "COPY constraints.txt /opt/finetune/constraints.txt" in text
        assert "ARG BASE_IMAGE=debian:trixie-slim" in text
    ci = (REPO / ".ci" / "run").read_text()
    readme_install = (REPO / "README.md").read_text().split("\n```", 2)[1]
    for text in (ci, readme_install):
        assert "-c constraints.txt" in text

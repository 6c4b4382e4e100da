"""The API contract on the client side: examples, defaults, bad manifests, CRD drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from finetune_api import ManifestError, load_manifest, parse_manifest
from finetune_api.crd import build_crd, render_crd_yaml

from tests.cases.manifests import BAD_CASES, GOOD_CASES, BadCase, GoodCase, minimal_manifest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_there_are_examples_for_every_seed_scenario() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "quickstart",
        "self-cognition-qwen3-8b",
        "medical-cot-r1-distill-qwen-7b",
        "qlora-r1-distill-llama-8b",
        "dataset-mix",
        "multi-gpu-8",
        "multi-node-2",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_is_valid(path: Path) -> None:
    job = load_manifest(path)
    assert job.spec.datasets
    # credentials only ever appear as a Secret reference, never as values in an example
    for line in path.read_text().splitlines():
        code = line.split("#", 1)[0]
        assert "AWS_SECRET_ACCESS_KEY" not in code and "aws_secret" not in code.lower()


def test_minimal_manifest_gets_sensible_defaults() -> None:
    spec = parse_manifest(minimal_manifest()).spec
    assert spec.training.epochs == 3 and spec.training.max_steps is None
    assert spec.method.type == "lora" and spec.method.lora.r == 16 and spec.method.lora.alpha == 32
    assert spec.method.lora.target_modules == ["all-linear"]
    assert spec.template.name == "auto" and spec.template.reasoning == "keep"
    assert spec.output.merge is True and spec.output.overwrite is False
    assert spec.resources.gpus == 1 and spec.resources.gpu_resource_name == "nvidia.com/gpu"
    assert spec.training.precision == "auto" and spec.training.packing is True


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_manifest_is_refused_naming_the_field(case: BadCase) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(case.manifest(), "bad.yaml")
    assert case.fragment in str(caught.value), str(caught.value)


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda c: c.id)
def test_good_variation_is_accepted(case: GoodCase) -> None:
    parse_manifest(case.manifest(), "good.yaml")


def test_eight_bits_mean_float8_unless_int8_is_asked_for() -> None:
    from finetune_api.spec import Quantization

    assert Quantization(bits=8).resolved_format == "float8"
    assert Quantization(bits=8, format="int8").resolved_format == "int8"
    assert Quantization().resolved_format == "nf4"


def test_there_are_at_least_twenty_bad_cases() -> None:
    assert len(BAD_CASES) >= 20
    assert len({c.id for c in BAD_CASES}) == len(BAD_CASES)


def test_committed_crds_match_the_models() -> None:
    generated = render_crd_yaml()
    for copy in (
        "crds/finetune.dev_finetunejobs.yaml",
        "charts/finetune-operator/crds/finetune.dev_finetunejobs.yaml",
    ):
        assert (ROOT / copy).read_text() == generated, f"{copy} drifted: run `ftj crd --write .`"


def test_crd_declares_what_kubectl_users_see() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert "finetune" in crd["spec"]["names"]["categories"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Loss", "ETA", "Model", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def descriptions_missing(node: dict, path: str) -> list[str]:
        missing = [] if node.get("description") or path.endswith("]") else [path]
        for key, child in node.get("properties", {}).items():
            missing += descriptions_missing(child, f"{path}.{key}")
        if "items" in node and "properties" in node["items"]:
            missing += descriptions_missing(node["items"], f"{path}[]")
        return missing

    assert descriptions_missing(spec, "spec") == []


def test_ftj_validate_command_reports_field_and_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(BAD_CASES[1].manifest()))
    result = subprocess.run(
        [sys.executable, "-m", "finetune_cli.main", "validate", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "spec.model.uri" in result.stderr
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_cli.main",
            "validate",
            str(ROOT / "examples/quickstart.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    assert "valid FineTuneJob quickstart" in good.stdout

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
# Examples for `ftj run` on one machine: their local paths need no volume (see LOCAL_EXAMPLES in
# tests/apiserver/test_finetunejob_crd.py: the API server refuses them for the cluster).
LOCAL_EXAMPLES = {"quickstart"}


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
    job = load_manifest(path, cluster=path.stem not in LOCAL_EXAMPLES)
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
        parse_manifest(case.manifest(), "bad.yaml", cluster=True)
    assert case.fragment in str(caught.value), str(caught.value)


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda c: c.id)
def test_good_variation_is_accepted(case: GoodCase) -> None:
    parse_manifest(case.manifest(), "good.yaml", cluster=True)


def test_ftj_run_accepts_local_paths_a_cluster_job_may_not_use() -> None:
    """Local paths are refused only for the cluster: `ftj run` reads them on its machine."""
    local = [c for c in BAD_CASES if c.id in ("output-relative-path", "model-local-path")]
    assert len(local) == 2
    for case in local:
        parse_manifest(case.manifest(), "local.yaml")  # what ftj run does
        with pytest.raises(ManifestError, match="is a local path that no"):
            parse_manifest(case.manifest(), "local.yaml", cluster=True)
    quickstart = ROOT / "examples/quickstart.yaml"
    assert load_manifest(quickstart).spec.output.uri == "../out/quickstart"
    with pytest.raises(ManifestError, match="spec.output.uri is a local path"):
        load_manifest(quickstart, cluster=True)


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
            "--local",
            str(ROOT / "examples/quickstart.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    assert "valid FineTuneJob quickstart (for ftj run)" in good.stdout
    # For the cluster (the default, as kubectl apply checks it) its local output is refused.
    cluster = subprocess.run(
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
    assert cluster.returncode == 2
    assert "spec.output.uri is a local path that no durable volume" in cluster.stderr

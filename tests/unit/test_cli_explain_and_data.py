"""``ftj explain FIELD``, "did you mean" for unknown fields, and ``ftj validate --data``.

The data check runs the trainer's own data step on this machine with the quickstart's tiny
tokenizer (and, for S3, the moto server): the numbers it prints are compared with the
trainer's function run directly, and its refusals with the trainer's own messages.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_api import ManifestError, load_manifest
from finetune_api.spec import Training
from finetune_cli.main import main

from tests.harness.s3 import S3Server

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
TINY = ROOT / "examples" / "quickstart" / "tiny-qwen3"
IDENTITY = ROOT / "examples" / "quickstart" / "identity.json"
EXAMPLES = len(json.loads(IDENTITY.read_text()))
MALFORMED = '[{"instruction": "Who are you?", "output": "I am {{name}}."}, {"oops": 1'


def ftj(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``ftj ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def quickstart(tmp: Path, **training: Any) -> Path:
    """The quickstart manifest with absolute paths and ``training`` changes, written to tmp."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["model"]["uri"] = str(TINY)
    doc["spec"]["datasets"][0]["uri"] = str(IDENTITY)
    doc["spec"]["training"].update(training)
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- ftj explain ---------------------------------------------------------------------------------


def test_explain_prints_type_default_and_description_from_the_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    field = Training.model_fields["cutoff_length"]
    code, out, _ = ftj(capsys, "explain", "spec.training.cutoffLength")
    assert code == 0
    assert "FIELD:    spec.training.cutoffLength" in out
    assert "TYPE:     integer" in out
    assert f"DEFAULT:  {field.default}" in out
    assert " ".join(out.split("DESCRIPTION:")[1].split()) == field.description


def test_explain_takes_kubectl_style_paths_and_lists_sub_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = ftj(capsys, "explain", "ftj.spec.datasets[0].columns")
    assert code == 0
    assert "FIELD:    spec.datasets[].columns" in out
    listed = [line.split()[0] for line in out.split("FIELDS:")[1].strip().splitlines()]
    from finetune_api.spec import DatasetColumns

    assert listed == [f.alias for f in DatasetColumns.model_fields.values()]
    code, out, _ = ftj(capsys, "explain", "training")  # spec. may be left out
    assert code == 0 and "cutoffLength" in out and "learningRate" in out


def test_explain_an_unknown_field_suggests_the_close_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = ftj(capsys, "explain", "spec.training.cutoff_len")
    assert code == 2
    assert "Did you mean spec.training.cutoffLength?" in err


def test_unknown_fields_in_a_manifest_get_did_you_mean_and_the_explain_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(quickstart(tmp_path).read_text())
    doc["spec"]["training"]["cutoff_len"] = doc["spec"]["training"].pop("cutoffLength")
    doc["spec"]["datasets"][0]["colums"] = {"prompt": "q"}
    doc["spec"]["resorces"] = doc["spec"].pop("resources")
    doc["spec"]["zzz"] = 1
    path = tmp_path / "typos.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    problems = info.value.problems
    expected = [
        "spec.training.cutoff_len: unknown field (did you mean cutoffLength? "
        "`ftj explain spec.training` lists the fields)",
        "spec.datasets[0].colums: unknown field (did you mean columns? "
        "`ftj explain spec.datasets[0]` lists the fields)",
        "spec.resorces: unknown field (did you mean resources? `ftj explain spec` lists the "
        "fields)",
        "spec.zzz: unknown field (check the spelling; `ftj explain spec` lists the fields)",
    ]
    assert sorted(p for p in problems if "unknown field" in p) == sorted(expected)
    code, _, err = ftj(capsys, "validate", "--local", str(path))  # the same lines
    assert code == 2 and all(line in err for line in expected)


# -- ftj validate --data -------------------------------------------------------------------------


def test_validate_data_prints_what_the_trainer_will_make_of_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from finetune_trainer.data import prepare_data
    from finetune_trainer.model import load_tokenizer

    manifest = quickstart(tmp_path)
    code, out, err = ftj(capsys, "validate", "--local", str(manifest), "--data")
    assert code == 0, err
    assert f"tokenizer: file://{TINY} (spec.model.uri)" in out
    stats = prepare_data(
        load_manifest(manifest).spec, [IDENTITY], load_tokenizer(TINY)
    ).stats  # the trainer's own step, directly
    assert f"{IDENTITY}: {EXAMPLES} examples" in out
    assert f"split: {stats.train} train, {stats.validation} validation, {stats.test} test" in out
    lengths = stats.token_lengths
    assert (
        f"min {lengths['min']}, median {lengths['median']}, p95 {lengths['p95']}, "
        f"max {lengths['max']}" in out
    )
    assert lengths["min"] <= lengths["median"] <= lengths["p95"] <= lengths["max"]

    # A cutoff below the longest example truncates some: the count the trainer would see.
    cutoff = lengths["median"]
    short = quickstart(tmp_path, cutoffLength=cutoff)
    code, out, err = ftj(capsys, "validate", "--local", str(short), "--data")
    assert code == 0, err
    truncated = prepare_data(load_manifest(short).spec, [IDENTITY], load_tokenizer(TINY))
    assert 0 < truncated.stats.truncated < EXAMPLES
    assert (
        f"spec.training.cutoffLength {cutoff}: {truncated.stats.truncated} examples would be "
        "truncated" in out
    )


def test_validate_data_refuses_with_the_trainers_own_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from finetune_trainer.data import prepare_data
    from finetune_trainer.errors import InvalidInput
    from finetune_trainer.model import load_tokenizer

    bad = tmp_path / "broken.json"
    bad.write_text(MALFORMED)
    manifest = quickstart(tmp_path)
    # The DATA file replaces spec.datasets[0]; the manifest may come after --data.
    code, _, err = ftj(capsys, "validate", "--local", "--data", str(bad), str(manifest))
    assert code == 2
    spec = load_manifest(manifest).spec
    spec = spec.model_copy(
        update={"datasets": [spec.datasets[0].model_copy(update={"uri": str(bad)})]}
    )
    with pytest.raises(InvalidInput) as trainer:
        prepare_data(spec, [bad], load_tokenizer(TINY))
    assert f"data refused (InvalidInput): {trainer.value.message}" in err
    assert "broken.json, line 1" in err

    # A cutoff shorter than most prompts: examples with no answer token left are dropped.
    tiny_cutoff = quickstart(tmp_path, cutoffLength=16)
    code, out, err = ftj(capsys, "validate", "--local", str(tiny_cutoff), "--data")
    assert code == 0, err
    stats = prepare_data(load_manifest(tiny_cutoff).spec, [IDENTITY], load_tokenizer(TINY)).stats
    assert 0 < stats.dropped < EXAMPLES
    assert (
        f"cutoffLength 16: {stats.truncated} examples would be truncated, {stats.dropped} "
        "dropped (no answer token left)" in out
    )


def test_without_a_reachable_tokenizer_it_says_what_it_did_not_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(quickstart(tmp_path).read_text())
    doc["spec"]["model"]["uri"] = "/models/only-in-the-cluster"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = ftj(capsys, "validate", "--local", str(path), "--data")
    assert code == 0, err
    assert "tokenizer: none: the tokenizer at file:///models/only-in-the-cluster" in out
    assert "the template and token lengths were not" in out
    assert f"{IDENTITY}: {EXAMPLES} examples" in out
    code, out, err = ftj(
        capsys, "validate", "--local", str(path), "--data", "--tokenizer", str(TINY)
    )
    assert code == 0, err
    assert f"tokenizer: file://{TINY} (--tokenizer)" in out and "tokens per example" in out


@dataclass(frozen=True)
class S3Place:
    """A logging moto server and this test's bucket (moto's store is shared by the process)."""

    server: S3Server
    bucket: str


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Place]:
    """The tiny model and the data on S3; this shell's AWS_* variables point at it."""
    with S3Server(record=True) as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        bucket = f"ftj-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        client = server.client()
        for f in TINY.iterdir():
            client.upload_file(str(f), bucket, f"models/tiny-qwen3/{f.name}")
        client.upload_file(str(IDENTITY), bucket, "data/identity.json")
        yield S3Place(server, bucket)


def test_validate_data_on_s3_reads_the_tokenizer_not_the_weights(
    tmp_path: Path, s3: S3Place, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(QUICKSTART.read_text())
    bucket = s3.bucket
    doc["spec"]["model"]["uri"] = f"s3://{bucket}/models/tiny-qwen3"
    doc["spec"]["datasets"][0]["uri"] = f"s3://{bucket}/data/identity.json"
    doc["spec"]["output"]["uri"] = f"s3://{bucket}/results/quickstart"
    doc["spec"]["storage"] = {"s3": {"endpoint": s3.server.endpoint_url, "pathStyle": True}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = ftj(
        capsys, "validate", str(path), "--data", "--cache-dir", str(tmp_path / "cache")
    )
    assert code == 0, err
    assert "valid FineTuneJob quickstart (for the cluster)" in out
    assert f"tokenizer: s3://{bucket}/models/tiny-qwen3 (spec.model.uri)" in out
    assert f"s3://{bucket}/data/identity.json: {EXAMPLES} examples" in out
    assert s3.server.requests.bytes_served(f"/{bucket}/models/tiny-qwen3/tokenizer.json") > 0
    assert s3.server.requests.bytes_served(f"/{bucket}/models/tiny-qwen3/model.safetensors") == 0

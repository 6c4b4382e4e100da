"""Publishing artifacts with MANIFEST.json last, and verifying a published output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.storage import JobIdentity, Storage, publish_artifacts, verify_manifest

from tests.unit.storage.conftest import make_tree

pytestmark = pytest.mark.unit

SPEC = {"model": {"uri": "s3://models/tiny"}, "output": {"uri": "s3://out/run"}}
RUN = {
    "adapter/adapter_config.json": b'{"r": 16}',
    "adapter/adapter_model.safetensors": b"A" * 4096,
    "merged/model.safetensors": b"M" * 8192,
    "merged/tokenizer/tokenizer.json": b"{}",
    "metrics.json": b'{"loss": 1.0}',
    "loss.png": b"\x89PNG...",
}


def test_publish_to_s3_writes_everything_and_manifest_last(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    puts: list[str] = []
    storage.client.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: puts.append(params["Key"])
    )
    local = make_tree(tmp_path / "run", RUN)
    out = f"s3://{bucket}/runs/one"
    artifacts = publish_artifacts(storage, local, out, job=job, spec=SPEC, overwrite=False)

    assert artifacts == {
        "adapter": f"{out}/adapter",
        "merged": f"{out}/merged",
        "metrics": f"{out}/metrics.json",
        "lossPlot": f"{out}/loss.png",
        "manifest": f"{out}/MANIFEST.json",
    }
    assert puts[-1] == "runs/one/MANIFEST.json"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/one/MANIFEST.json")["Body"].read())
    assert manifest["job"] == {"namespace": "team-a", "name": "qwen-sft", "uid": "uid-1111"}
    assert manifest["spec"] == SPEC
    assert manifest["createdAt"]
    assert manifest["files"] == [
        {"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
        for p, b in sorted(RUN.items())
    ]
    assert verify_manifest(storage, out) == []


def test_verify_reports_a_tampered_and_a_missing_file(
    storage: Storage, s3: Any, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/runs/two"
    publish_artifacts(
        storage, make_tree(tmp_path / "run", RUN), out, job=job, spec=SPEC, overwrite=False
    )
    s3.put_object(Bucket=bucket, Key="runs/two/adapter/adapter_model.safetensors", Body=b"B" * 4096)
    s3.delete_object(Bucket=bucket, Key="runs/two/loss.png")
    problems = verify_manifest(storage, out)
    assert len(problems) == 2
    assert any(f"{out}/adapter/adapter_model.safetensors: sha256" in p for p in problems)
    assert any(p == f"{out}/loss.png: missing" for p in problems)


def test_verify_without_manifest(storage: Storage, bucket: str) -> None:
    assert "MANIFEST.json is missing" in verify_manifest(storage, f"s3://{bucket}/never")[0]


def test_publish_locally_is_atomic_copies(
    storage: Storage, tmp_path: Path, job: JobIdentity
) -> None:
    local = make_tree(tmp_path / "run", {k: v for k, v in RUN.items() if "merged" not in k})
    out = tmp_path / "published"
    artifacts = publish_artifacts(storage, local, str(out), job=job, spec=SPEC, overwrite=False)
    assert "merged" not in artifacts  # output.merge: false → no merged/ folder
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == b"A" * 4096
    assert not list(out.rglob("*.tmp"))
    assert verify_manifest(storage, f"file://{out}") == []
    (out / "metrics.json").write_bytes(b'{"loss": 0.0}')
    problems = verify_manifest(storage, str(out))
    assert len(problems) == 1
    assert problems[0].startswith(f"file://{out}/metrics.json: sha256")


def test_republish_by_same_job_replaces_old_files(
    storage: Storage, bucket: str, tmp_path: Path, job: JobIdentity
) -> None:
    out = f"s3://{bucket}/runs/again"
    publish_artifacts(
        storage, make_tree(tmp_path / "one", RUN), out, job=job, spec=SPEC, overwrite=False
    )
    second = dict(RUN)
    del second["merged/tokenizer/tokenizer.json"]
    second["merged/model.safetensors"] = b"N" * 100
    publish_artifacts(
        storage, make_tree(tmp_path / "two", second), out, job=job, spec=SPEC, overwrite=False
    )
    assert verify_manifest(storage, out) == []
    assert storage.list_files(f"{out}/merged") == ["model.safetensors"]

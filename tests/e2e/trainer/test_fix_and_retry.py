"""Fix and retry, with the real trainer on the tiny quickstart model and S3 (moto over HTTP).

What a user observes after ``kubectl delete`` + ``kubectl apply`` of a job with the same name
(the API server gives it a new uid): a run that failed on bad data left nothing in the output;
the re-created job takes its output over, resuming from the checkpoints there when the base
model, data and method match and starting fresh (saying so) when they don't; another name on
the same output is still refused. And a bad dataset fails before a byte of the weights is
downloaded: the S3 server counts what it served.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from finetune_api.contract import EXIT_INVALID_INPUT

from tests.e2e.trainer.test_trainer_runs import (
    QUICKSTART_DIR,
    kill_after_first_checkpoint,
    quickstart_manifest,
    run_trainer,
    trainer_env,
)
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.e2e

GOOD_DATA = (QUICKSTART_DIR / "identity.json").read_bytes()
# An alpaca file cut off in the middle of its second example.
MALFORMED = b'[{"instruction": "Who are you?", "output": "I am {{name}}."}, {"oops": 1'


class Buckets(S3Server):
    """A moto server that logs what it serves, with this test's own buckets: moto keeps one
    store per process, so bucket names are unique per test."""

    def __init__(self) -> None:
        super().__init__(record=True)
        suffix = uuid.uuid4().hex[:8]
        self.models, self.data, self.results = (
            f"{b}-{suffix}" for b in ("models", "data", "results")
        )


@pytest.fixture
def s3() -> Iterator[Buckets]:
    """Model, data and output buckets, the tiny model uploaded."""
    with Buckets() as server:
        for bucket in (server.models, server.data, server.results):
            server.create_bucket(bucket)
        client = server.client()
        for f in (QUICKSTART_DIR / "tiny-qwen3").iterdir():
            client.upload_file(str(f), server.models, f"tiny-qwen3/{f.name}")
        yield server


def s3_job(s3: Buckets, name: str, uid: str, **training: Any) -> dict[str, Any]:
    """The quickstart job named ``name`` (uid ``uid``: one object the API server made) reading
    the tiny model and identity.json from S3, publishing to ``s3://<results>/identity``."""
    manifest = quickstart_manifest(**training)
    manifest["metadata"].update(name=name, namespace="ml", uid=uid)
    spec = manifest["spec"]
    spec["model"]["uri"] = f"s3://{s3.models}/tiny-qwen3"
    spec["datasets"][0]["uri"] = f"s3://{s3.data}/identity.json"
    spec["output"]["uri"] = f"s3://{s3.results}/identity"
    spec["storage"] = {"s3": {"endpoint": s3.endpoint_url, "pathStyle": True}}
    return manifest


def output_keys(s3: Buckets) -> set[str]:
    """Every object key in the results bucket."""
    listing = s3.client().list_objects_v2(Bucket=s3.results)
    return {o["Key"] for o in listing.get("Contents", [])}


def owner(s3: Buckets) -> dict[str, Any]:
    """The output's OWNER.json."""
    body = s3.client().get_object(Bucket=s3.results, Key="identity/OWNER.json")["Body"].read()
    return dict(json.loads(body))


def checkpoint_times(s3: Buckets) -> dict[int, str]:
    """``{step: completedAt}`` of the complete checkpoints in the output."""
    client, found = s3.client(), {}
    for key in output_keys(s3):
        if key.endswith("/COMPLETE"):
            done = json.loads(client.get_object(Bucket=s3.results, Key=key)["Body"].read())
            found[int(done["step"])] = str(done["completedAt"])
    return found


def test_recreated_job_resumes_when_compatible_and_starts_fresh_when_not(
    s3: Buckets, tmp_path: Path
) -> None:
    from finetune_api.spec import S3Storage
    from finetune_trainer.storage import CheckpointStore, Storage

    client = s3.client()
    env = s3.env()

    # 1. The first apply has a broken dataset: refused, and nothing is left in the output.
    client.put_object(Bucket=s3.data, Key="identity.json", Body=MALFORMED)
    job = s3_job(s3, "identity", "uid-1", maxSteps=12, saveSteps=3, loggingSteps=3)
    code, message, log = run_trainer(trainer_env(tmp_path / "v1", job, **env))
    assert code == EXIT_INVALID_INPUT, log[-3000:]
    assert "identity.json" in message["message"]
    assert output_keys(s3) == set()  # no OWNER.json to block the fixed job

    # 2. Data fixed, job deleted and applied again (uid-2); its pod is killed after the first
    # checkpoint (the node went away, or the user deleted the job to change a setting).
    client.put_object(Bucket=s3.data, Key="identity.json", Body=GOOD_DATA)
    job = s3_job(s3, "identity", "uid-2", maxSteps=12, saveSteps=3, loggingSteps=3)
    os_env = trainer_env(tmp_path / "v2", job, **env)
    storage = Storage.from_spec(S3Storage(endpoint=s3.endpoint_url, path_style=True))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        store = CheckpointStore(storage, f"s3://{s3.results}/identity")
        step = kill_after_first_checkpoint(
            [sys.executable, "-m", "finetune_trainer"], os_env, store
        )
    assert 0 < step < 12
    assert owner(s3)["uid"] == "uid-2"
    assert owner(s3)["fingerprint"]["parts"]["model"]["uri"] == f"s3://{s3.models}/tiny-qwen3"

    # 3. Re-created again with the same recipe (uid-3): it takes over and resumes.
    job = s3_job(s3, "identity", "uid-3", maxSteps=12, saveSteps=3, loggingSteps=3)
    code, message, log = run_trainer(trainer_env(tmp_path / "v3", job, **env))
    assert code == 0, log[-4000:]
    assert message["resumedFromStep"] >= step
    assert "startedFresh" not in message["progress"]
    assert message["progress"]["step"] == 12
    assert owner(s3)["uid"] == "uid-3"
    manifest = json.loads(
        client.get_object(Bucket=s3.results, Key="identity/MANIFEST.json")["Body"].read()
    )
    assert manifest["job"] == {"namespace": "ml", "name": "identity", "uid": "uid-3"}
    before = checkpoint_times(s3)

    # 4. Another name pointed at the same output: refused in seconds, the output untouched.
    other = s3_job(s3, "someone-else", "uid-9", maxSteps=12, saveSteps=3)
    started = time.monotonic()
    code, message, log = run_trainer(trainer_env(tmp_path / "other", other, **env))
    refused_in = time.monotonic() - started
    assert code == EXIT_INVALID_INPUT, log[-3000:]
    assert message["reason"] == "OutputConflict"
    assert "ml/identity (uid uid-3)" in message["message"]
    assert "ml/identity" in message["message"] and "spec.output.overwrite" in message["message"]
    assert checkpoint_times(s3) == before and owner(s3)["uid"] == "uid-3"
    print(f"\nanother name refused in {refused_in:.1f} s")

    # 5. Re-created with other data (the last examples dropped from the file): it starts fresh
    # and says why, in its log and in the termination message the operator reads.
    changed = json.loads(GOOD_DATA)[:-5]
    client.put_object(Bucket=s3.data, Key="identity.json", Body=json.dumps(changed).encode())
    job = s3_job(s3, "identity", "uid-4", maxSteps=4, saveSteps=2, loggingSteps=2)
    started_at = datetime.now(timezone.utc).isoformat()
    code, message, log = run_trainer(trainer_env(tmp_path / "v4", job, **env))
    assert code == 0, log[-4000:]
    fresh = message["progress"]["startedFresh"]
    assert "spec.datasets[0] content" in fresh and "spec.training.maxSteps 12 → 4" in fresh
    assert "ml/identity (uid uid-3)" in fresh and "step 0" in fresh
    assert "starting fresh" in log
    assert "resumedFromStep" not in message
    after = checkpoint_times(s3)
    assert sorted(after) == [2, 4]  # the old run's checkpoints (steps 9, 12) are gone
    assert all(done > started_at for done in after.values())  # both written by this run

    # What the operator makes of that termination message: a condition and an Event.
    from finetune_operator.observe import observe_status

    from tests.unit.operator.fixtures import ftj, job_condition, k8s_job, pod, terminated

    finished = pod(phase="Succeeded", state=terminated(0, "Completed", message))
    update = observe_status(
        ftj(), k8s_job(job_condition("Complete", "CompletionsReached")), [finished], None,
        datetime.now(timezone.utc),
    )  # fmt: skip
    resumed = {c.type: c for c in update.status.conditions}["Resumed"]
    assert (resumed.status, resumed.reason) == ("False", "StartedFresh")
    assert "spec.datasets[0] content" in resumed.message
    assert ("Normal", "StartedFresh") in [(e.type, e.reason) for e in update.events]


def test_malformed_data_fails_before_any_weight_byte_is_downloaded(
    s3: Buckets, tmp_path: Path
) -> None:
    """The model folder on S3 holds a large weights file; the dataset is broken. The trainer
    reads the tokenizer's files, refuses the data, and the server never sent a byte of the
    weights."""
    weights_size = 64 * 1024 * 1024  # above the multipart threshold: a ranged download
    client = s3.client()
    for f in (QUICKSTART_DIR / "tiny-qwen3").iterdir():
        if f.name != "model.safetensors":
            client.upload_file(str(f), s3.models, f"big/{f.name}")
    big = tmp_path / "model.safetensors"
    with big.open("wb") as out:
        out.truncate(weights_size)  # sparse on disk; moto stores what it receives
    client.upload_file(str(big), s3.models, "big/model.safetensors")
    client.put_object(Bucket=s3.data, Key="identity.json", Body=MALFORMED)

    job = s3_job(s3, "bad-data", "uid-b", maxSteps=5)
    job["spec"]["model"]["uri"] = f"s3://{s3.models}/big"
    served_before = len(s3.requests.requests)
    started = time.monotonic()
    code, message, log = run_trainer(trainer_env(tmp_path / "run", job, **s3.env()))
    elapsed = time.monotonic() - started
    assert code == EXIT_INVALID_INPUT, log[-3000:]
    assert message["reason"] == "InvalidInput" and "identity.json" in message["message"]

    served = s3.requests.requests[served_before:]
    weights_bytes = sum(
        r.body_bytes for r in served if r.path == f"/{s3.models}/big/model.safetensors"
    )
    tokenizer_bytes = sum(
        r.body_bytes for r in served if r.path == f"/{s3.models}/big/tokenizer.json"
    )
    print(
        f"\nbad data refused in {elapsed:.1f} s; served {tokenizer_bytes} bytes of "
        f"tokenizer.json, {weights_bytes} of the {weights_size}-byte model.safetensors"
    )
    assert tokenizer_bytes == (QUICKSTART_DIR / "tiny-qwen3" / "tokenizer.json").stat().st_size
    assert weights_bytes == 0
    assert output_keys(s3) == set()


def test_an_edited_local_spec_starts_fresh_at_the_same_output(tmp_path: Path) -> None:
    """`ftj run` twice into one output with a changed recipe: the second run starts fresh and
    says what changed, never a silent resume from weights trained with the old settings."""
    out = tmp_path / "out"
    manifest = quickstart_manifest(maxSteps=2, saveSteps=2, loggingSteps=1)
    manifest["spec"]["output"]["uri"] = str(out)
    assert run_trainer(trainer_env(tmp_path / "a", manifest))[0] == 0
    edited = copy.deepcopy(manifest)
    edited["spec"]["training"]["learningRate"] = 0.001
    code, message, log = run_trainer(trainer_env(tmp_path / "b", edited))
    assert code == 0, log[-3000:]
    assert "spec.training.learningRate 0.005 → 0.001" in message["progress"]["startedFresh"]
    assert "resumedFromStep" not in message

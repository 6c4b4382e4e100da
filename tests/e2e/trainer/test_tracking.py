"""Experiment tracking with the real trainer on the tiny quickstart model and a real MLflow server.

What a user observes: a job with ``spec.tracking.mlflow`` ends with a run in MLflow holding the
recipe's parameters, a metric at every step the trainer logged, the loss plot and the artifact
URIs, and (with ``registeredModel``) a new model version pointing at the published model;
TensorBoard event files with the same steps are published in ``tensorboard/``. A tracking
server killed mid-run costs the training nothing: the job succeeds, the values wait, and they
arrive if the server comes back before the end; if it does not, the final report says so (the
operator turns it into the ``Tracking=False`` condition and a Warning Event:
tests/unit/operator/test_tracking_and_gpu_hours.py).

No mock: ``mlflow server`` (SQLite, local artifacts) and moto's S3 server run as real servers;
the trainer is ``python -m finetune_trainer`` in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.trainer.test_trainer_runs import QUICKSTART_DIR, quickstart_manifest, trainer_env
from tests.harness.mlflow_server import MlflowServer
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.e2e
pytest.importorskip("mlflow.server", reason="the mlflow package (the dev extra) runs the server")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """Model and data in S3, an output bucket: registered model versions point at s3:// URIs."""
    with S3Server() as server:
        for bucket in ("models", "data", "results"):
            server.create_bucket(bucket)
        client = server.client()
        for f in (QUICKSTART_DIR / "tiny-qwen3").iterdir():
            client.upload_file(str(f), "models", f"tiny-qwen3/{f.name}")
        client.upload_file(str(QUICKSTART_DIR / "identity.json"), "data", "identity.json")
        yield server


def tracked_manifest(
    s3: S3Server, name: str, tracking_uri: str, steps: int, **mlflow: Any
) -> dict[str, Any]:
    """The quickstart on S3, logging every 2 steps, sent to ``tracking_uri``."""
    manifest = quickstart_manifest(maxSteps=steps, saveSteps=10, evalSteps=10, loggingSteps=2)
    manifest["metadata"].update(name=name, namespace="ml-team", uid=f"uid-{name}")
    spec = manifest["spec"]
    spec["model"]["uri"] = "s3://models/tiny-qwen3"
    spec["datasets"][0]["uri"] = "s3://data/identity.json"
    spec["output"]["uri"] = f"s3://results/{name}"
    spec["storage"] = {"s3": {"endpoint": s3.endpoint_url, "pathStyle": True}}
    spec["tracking"] = {"mlflow": {"trackingUri": tracking_uri, **mlflow}}
    return manifest


def start_trainer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "finetune_trainer"], env=env, stdout=out, stderr=out
        )


def finish(proc: subprocess.Popen[bytes], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Wait for the trainer; its exit code must be 0; its termination message."""
    code = proc.wait(timeout=600)
    assert code == 0, log.read_text()[-4000:]
    return dict(json.loads(Path(env["FTJ_TERMINATION_LOG"]).read_text()))


def the_run(client: Any, experiment: str, run_name: str) -> Any:
    found = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
    )
    assert len(found) == 1, found
    return found[0]


def logged_steps(s3: S3Server, output: str) -> list[int]:
    """The steps at which the trainer logged a training loss (metrics.json's history)."""
    bucket, _, prefix = output[len("s3://") :].partition("/")
    body = s3.client().get_object(Bucket=bucket, Key=f"{prefix}/metrics.json")["Body"].read()
    return [e["step"] for e in json.loads(body)["logHistory"] if "loss" in e]


def test_tracked_run_holds_params_metrics_plot_artifacts_and_a_model_version(
    tmp_path: Path, s3: S3Server
) -> None:
    with MlflowServer(tmp_path / "mlflow") as mlflow:
        manifest = tracked_manifest(
            s3, "tracked", mlflow.uri, 20, registeredModel={"name": "quokka-chat"}
        )
        env = trainer_env(tmp_path / "run", manifest, **s3.env())
        message = finish(start_trainer(env, tmp_path / "log"), env, tmp_path / "log")
        check_tracked_run(mlflow.client(), s3, manifest, message, tmp_path)


def check_tracked_run(
    client: Any, s3: S3Server, manifest: dict[str, Any], message: dict[str, Any], tmp_path: Path
) -> None:
    """What the run in MLflow and the published event files hold (the server still up)."""
    run = the_run(client, "ml-team", "ml-team/tracked")
    artifacts = message["artifacts"]
    tracking = message["progress"]["tracking"]
    assert tracking["ok"] is True and tracking["reason"] == "Tracked", tracking
    # The recipe, as parameters.
    params = run.data.params
    assert params["training.learningRate"] == str(manifest["spec"]["training"]["learningRate"])
    assert params["training.maxSteps"] == "20"
    assert params["method.lora.r"] == str(manifest["spec"]["method"]["lora"]["r"])
    assert params["model.uri"] == "s3://models/tiny-qwen3"
    # A metric at every step the trainer logged: loss, learning rate, tokens/s.
    steps = logged_steps(s3, manifest["spec"]["output"]["uri"])
    assert steps and steps[-1] == 20
    for key in ("loss", "learning_rate", "tokens_per_second"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == steps, key
    assert client.get_metric_history(run.info.run_id, "eval_loss"), "no eval loss"
    # The loss plot and the artifact URIs.
    assert "loss.png" in {f.path for f in client.list_artifacts(run.info.run_id)}
    for key in ("adapter", "merged", "metrics", "manifest", "tensorboard"):
        assert run.data.tags[f"finetune.dev/artifact.{key}"] == artifacts[key]
    assert run.data.tags["finetune.dev/uid"] == "uid-tracked"
    assert run.info.status == "FINISHED"
    # The merged model as a new version of the registered model, from this run.
    (version,) = client.search_model_versions("name='quokka-chat'")
    assert version.source == artifacts["merged"] and version.run_id == run.info.run_id
    # The same steps in the published TensorBoard event files (listed in MANIFEST.json).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert artifacts["tensorboard"] == "s3://results/tracked/tensorboard"
    events = tmp_path / "tb"
    listing = s3.client().list_objects_v2(Bucket="results", Prefix="tracked/tensorboard/")
    for item in listing["Contents"]:
        target = events / Path(item["Key"]).name
        events.mkdir(exist_ok=True)
        s3.client().download_file("results", item["Key"], str(target))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss")] == steps


def test_server_killed_mid_run_then_back_gets_every_value_and_the_job_succeeds(
    tmp_path: Path, s3: S3Server
) -> None:
    mlflow = MlflowServer(tmp_path / "mlflow").start()
    try:
        manifest = tracked_manifest(s3, "outage", mlflow.uri, 40)
        env = trainer_env(tmp_path / "run", manifest, **s3.env())
        proc = start_trainer(env, tmp_path / "log")
        client = mlflow.client()
        # Kill the server as soon as the run has its first loss: the rest is logged while it
        # is down.
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached MLflow"
            experiment = client.get_experiment_by_name("ml-team")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                break
            time.sleep(0.2)
        mlflow.stop()
        time.sleep(3)  # training goes on meanwhile
        mlflow.start()  # back before the end (or during the trainer's final flush)
        message = finish(proc, env, tmp_path / "log")
        run = the_run(mlflow.client(), "ml-team", "ml-team/outage")
        history = mlflow.client().get_metric_history(run.info.run_id, "loss")
    finally:
        mlflow.stop()
    log = (tmp_path / "log").read_text()
    assert "MLflow at" in log and "training goes on" in log, log[-3000:]
    assert message["phase"] == "Succeeded"
    assert message["progress"]["tracking"]["reason"] == "Tracked", message["progress"]
    steps = logged_steps(s3, manifest["spec"]["output"]["uri"])
    assert sorted(m.step for m in history) == steps


def test_server_killed_for_good_leaves_the_job_succeeded_with_the_warning(
    tmp_path: Path, s3: S3Server
) -> None:
    mlflow = MlflowServer(tmp_path / "mlflow").start()
    try:
        manifest = tracked_manifest(s3, "gone", mlflow.uri, 30)
        env = trainer_env(tmp_path / "run", manifest, **s3.env())
        proc = start_trainer(env, tmp_path / "log")
        client = mlflow.client()
        deadline = time.monotonic() + 300
        while True:
            experiment = client.get_experiment_by_name("ml-team")
            if experiment and client.search_runs([experiment.experiment_id]):
                break
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached MLflow"
            time.sleep(0.2)
    finally:
        mlflow.stop()
    started = time.monotonic()
    message = finish(proc, env, tmp_path / "log")
    assert message["phase"] == "Succeeded" and message["artifacts"]["manifest"]
    tracking = message["progress"]["tracking"]
    assert tracking["ok"] is False and tracking["reason"] == "TrackingIncomplete", tracking
    assert "could not be sent" in tracking["message"] and mlflow.uri in tracking["message"]
    # The final flush is bounded: the outage delays the end by at most that, plus training.
    from finetune_trainer.tracking.mlflow_run import FINAL_FLUSH_SECONDS

    assert time.monotonic() - started < FINAL_FLUSH_SECONDS + 240

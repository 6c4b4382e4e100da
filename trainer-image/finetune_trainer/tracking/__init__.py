"""Experiment tracking (``spec.tracking``): the run's history, where a team compares runs.

:class:`ExperimentTracking` is one ``TrainerCallback`` (rank 0 only) that turns the trainer's
log records into per-step metrics (loss, eval loss, learning rate, grad norm, tokens/s) and
hands them to its sinks: TensorBoard event files in the output's ``tensorboard/``
(:mod:`.tensorboard`) and an MLflow run (:mod:`.mlflow_run`) holding the job's parameters, the
metrics, the loss plot and the artifact URIs, optionally registering the published model as a
new model version. A restarted pod replays the history its checkpoint restored, so both sinks
hold every step of every attempt. Tracking never fails the training; its state travels in the
progress snapshot (``tracking``) to the operator's ``Tracking`` condition.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetune_api.manifest import FineTuneJob
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.tracking.mlflow_run import MlflowRun, RunTarget
from finetune_trainer.tracking.tensorboard import TensorBoardLog

log = logging.getLogger("finetune_trainer")

TENSORBOARD_DIR = "tensorboard"
# Spec sections that are not the recipe (placement, pod plumbing, secrets' names, tracking).
_NOT_PARAMS = ("pod", "storage", "tracking", "suspend", "queueName", "resources")
# Artifact URIs (status.artifacts keys) recorded as run tags.
ARTIFACT_TAG_PREFIX = "finetune.dev/artifact."


def run_params(job: FineTuneJob) -> dict[str, str]:
    """The recipe as flat MLflow parameters: ``training.learningRate`` → ``0.0002``..."""
    spec = {k: v for k, v in job.spec.to_wire().items() if k not in _NOT_PARAMS}
    spec["resources.gpus"] = job.spec.resources.gpus
    spec["resources.nodes"] = job.spec.resources.nodes
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            for i, sub in enumerate(value):
                walk(f"{prefix}.{i}", sub)
        else:
            flat[prefix] = ",".join(map(str, value)) if isinstance(value, list) else str(value)

    walk("", spec)
    return flat


def step_metrics(logs: Mapping[str, Any], tokens_per_second: float | None) -> dict[str, float]:
    """The finite numbers of one trainer log record, plus the reporter's tokens/s."""
    values = {
        name: float(value)
        for name, value in logs.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(float(value))
    }  # fmt: skip
    if tokens_per_second is not None and "loss" in values:
        values["tokens_per_second"] = round(tokens_per_second, 1)
    return values


# metrics.json's headline numbers → the run's final metrics
FINAL_METRICS = {
    "trainLoss": "final_train_loss",
    "evalLoss": "final_eval_loss",
    "testLoss": "test_loss",
    "tokensPerSecond": "final_tokens_per_second",
    "trainRuntimeSeconds": "train_runtime_seconds",
}


def final_metrics(run_metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite headline numbers of metrics.json, under the run's metric names."""
    found = {
        name: float(run_metrics[key])
        for key, name in FINAL_METRICS.items()
        if isinstance(run_metrics.get(key), (int, float))
    }
    return {k: v for k, v in found.items() if math.isfinite(v)}


class ExperimentTracking(TrainerCallback):
    """The run's history into TensorBoard files and an MLflow run (see the module docstring).

    ``reporter``: the :class:`~finetune_trainer.progress.ProgressReporter` whose tokens/s go
    into the metrics and whose snapshot carries :attr:`report`.
    """

    def __init__(self, job: FineTuneJob, output_dir: Path, reporter: Any = None) -> None:
        tracking = job.spec.tracking
        self.reporter = reporter
        self.tensorboard = (
            TensorBoardLog(output_dir / TENSORBOARD_DIR) if tracking.tensorboard else None
        )
        self.mlflow: MlflowRun | None = None
        # (registered model name, which artifact): a new model version at the end
        self.registration: tuple[str, str] | None = None
        settings = tracking.mlflow
        if settings is not None:
            if settings.registered_model is not None:
                model = settings.registered_model
                self.registration = (model.name, model.artifact)
            meta = job.metadata
            namespace = meta.namespace or "default"
            self.mlflow = MlflowRun(
                RunTarget(
                    tracking_uri=settings.tracking_uri,
                    experiment=settings.experiment or namespace,
                    run_name=settings.run_name or f"{namespace}/{meta.name}",
                    uid=meta.uid or f"local-{namespace}-{meta.name}",
                    tags={
                        "finetune.dev/namespace": namespace,
                        "finetune.dev/name": meta.name,
                        "finetune.dev/output": job.spec.output.uri,
                        "finetune.dev/baseModel": job.spec.model.uri,
                    },
                )
            )
            self.mlflow.log_params(run_params(job))
        self._replayed = False
        self._publish_report()

    # -- trainer callbacks ----------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # A resumed run's state holds the history up to its checkpoint: replay it once, so the
        # published event files and the MLflow run cover every step, not only this attempt's.
        if not self._replayed and state.global_step > 0:
            for record in state.log_history:
                step = record.get("step")
                if isinstance(step, int) and step <= state.global_step:
                    self._log(step, step_metrics(record, None), replayed=True)
        self._replayed = True
        if self.mlflow is not None:
            self.mlflow.start()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        rate = getattr(getattr(self.reporter, "state", None), "tokens_per_second", None)
        self._log(state.global_step, step_metrics(logs or {}, rate))
        self._publish_report()

    def _log(self, step: int, values: Mapping[str, float], replayed: bool = False) -> None:
        if not values:
            return
        if self.tensorboard is not None:
            self.tensorboard.log_metrics(step, values)
        if self.mlflow is not None:
            self.mlflow.log_metrics(step, values, replayed=replayed)

    def _publish_report(self) -> None:
        if self.mlflow is not None and self.reporter is not None:
            self.reporter.set_tracking(dict(self.mlflow.report))

    # -- the end ------------------------------------------------------------------------------

    def close_files(self) -> None:
        """Close the event files: call before publishing the output."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def finish(
        self,
        artifacts: Mapping[str, str],
        run_metrics: Mapping[str, Any],
        step: int,
        loss_plot: Path | None,
    ) -> dict[str, Any] | None:
        """After publishing: the final numbers of ``run_metrics`` (metrics.json), the loss plot
        and the artifact URIs into the run, the published model registered as a new version
        (when the spec asks), the run ended. Returns the final report (None without MLflow)."""
        self.close_files()
        if self.mlflow is None:
            return None
        self.mlflow.log_metrics(step, final_metrics(run_metrics))
        self.mlflow.set_tags({ARTIFACT_TAG_PREFIX + k: v for k, v in artifacts.items()})
        if loss_plot is not None and loss_plot.is_file():
            self.mlflow.log_artifact(loss_plot)
        register = None
        if self.registration is not None and artifacts.get(self.registration[1]):
            register = (self.registration[0], artifacts[self.registration[1]])
        report = self.mlflow.finish(register)
        if self.reporter is not None:
            self.reporter.set_tracking(dict(report))
        if not report["ok"]:
            log.warning("%s", report["message"])
        return report

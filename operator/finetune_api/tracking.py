"""``spec.tracking`` and ``spec.limits``: where a run's history goes, and what it may cost.

Split from :mod:`finetune_api.spec` (one concern each, and spec.py stays readable). The trainer
reads ``spec.tracking`` (``finetune_trainer.tracking``); the operator renders the MLflow
credentials as ``secretKeyRef`` variables and enforces ``spec.limits`` from the GPU-hours it
counts (``finetune_operator.gpu_usage``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune_api._base import ApiModel
from finetune_api.fields import DNS_SUBDOMAIN_PATTERN

# http(s) only, and no user:password@ in the host part: credentials come from a Secret, and a
# URI is shown in status, events and logs.
TRACKING_URI_PATTERN = r"^https?://[^\s/@]+(/[^\s]*)?$"
# The variables the MLflow client reads its credentials from (basic auth, or a bearer token).
MLFLOW_CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


class MlflowCredentials(ApiModel):
    """A Secret holding MLflow credentials (the values never appear in status, events or logs).

    Each key is optional in the Secret: a Secret with a username and a password gives basic
    auth, one with a token gives a bearer token.
    """

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret name, same namespace.",
    )
    username_key: str = Field(
        default="MLFLOW_TRACKING_USERNAME",
        min_length=1,
        max_length=253,
        description="Key holding the user name (basic auth).",
    )
    password_key: str = Field(
        default="MLFLOW_TRACKING_PASSWORD",
        min_length=1,
        max_length=253,
        description="Key holding the password (basic auth).",
    )
    token_key: str = Field(
        default="MLFLOW_TRACKING_TOKEN",
        min_length=1,
        max_length=253,
        description="Key holding a bearer token (instead of a user name and password).",
    )


class RegisteredModel(ApiModel):
    """Register the published model as a new version of an MLflow registered model."""

    name: str = Field(
        min_length=1,
        max_length=256,
        description="Registered model name; created if it does not exist.",
    )
    artifact: Literal["merged", "adapter"] = Field(
        default="merged",
        description=(
            "What the version points to: the merged model (needs spec.output.merge) or the "
            "LoRA adapter, by its URI in spec.output (the model files are not copied)."
        ),
    )


class MlflowTracking(ApiModel):
    """An MLflow tracking server that receives the run: parameters, per-step metrics, the loss
    plot and the artifact URIs."""

    tracking_uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=TRACKING_URI_PATTERN,
        description=(
            "The tracking server, e.g. https://mlflow.example.com (no credentials in the URI: "
            "use credentialsSecret)."
        ),
    )
    experiment: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="Experiment name; created if it does not exist. Default: the job's namespace.",
    )
    run_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=250,
        description=(
            "Run name. Default: namespace/name of the FineTuneJob. A restarted pod continues "
            "the same run (found by the job's uid tag)."
        ),
    )
    credentials_secret: MlflowCredentials | None = Field(
        default=None,
        description=(
            "Secret with MLflow credentials, passed to the pod as MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN through secretKeyRefs."
        ),
    )
    registered_model: RegisteredModel | None = Field(
        default=None,
        description="Also register the published model as a new model version.",
    )


class Tracking(ApiModel):
    """Experiment tracking. A tracking server that is down never fails the training: the run's
    metrics are kept and sent when it is back (or at the end), and the job's Tracking
    condition says so."""

    mlflow: MlflowTracking | None = Field(
        default=None, description="Send the run to an MLflow tracking server."
    )
    tensorboard: bool = Field(
        default=True,
        description="Write TensorBoard event files of the run's metrics to <output>/tensorboard/.",
    )


class Limits(ApiModel):
    """What a job may use before the operator stops it."""

    max_gpu_hours: float | None = Field(
        default=None,
        alias="maxGPUHours",
        gt=0,
        le=10_000_000,
        description=(
            "Stop the job when status.gpuHours (GPUs x running time of every trainer pod, all "
            "attempts) reaches this: the trainer pods get SIGTERM and save a checkpoint, then "
            "the job fails with reason BudgetExceeded. The checkpoint stays in the output."
        ),
    )

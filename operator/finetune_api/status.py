"""The FineTuneJob status: what the operator reports (written only through /status)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune_api._base import ApiModel

Phase = Literal[
    "Pending",
    "Initializing",
    "Training",
    "Merging",
    "Uploading",
    "Succeeded",
    "Failed",
    "Suspended",
]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class Condition(ApiModel):
    """A condition in the shape of metav1.Condition."""

    type: str = Field(
        max_length=316, description="Condition type, e.g. Running, Succeeded, Failed."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        description="CamelCase reason, e.g. Unschedulable, OOMKilled, InvalidInput.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation this condition was computed for."
    )


class Progress(ApiModel):
    """Live training progress, reported by the trainer."""

    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Fractional epoch.")
    percent: float | None = Field(default=None, ge=0, le=100, description="step / totalSteps in %.")
    summary: str | None = Field(
        default=None,
        max_length=64,
        description="Step and percentage for people, e.g. 120/500 (24%).",
    )
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest validation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="Real (non-padding) tokens trained per second."
    )
    gpu_memory_gib: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Peak GPU memory the trainer has allocated (rank 0, GiB); compare with "
            "spec.resources.gpuMemoryBudget."
        ),
    )
    eta_seconds: int | None = Field(
        default=None, ge=0, description="Estimated seconds to finish training."
    )
    eta: str | None = Field(default=None, max_length=32, description="ETA for people, e.g. 1h05m.")
    updated_at: str | None = Field(
        default=None, description="When the trainer reported this (RFC 3339)."
    )


class Artifacts(ApiModel):
    """Where the published results are."""

    adapter: str | None = Field(default=None, description="URI of the LoRA adapter folder.")
    merged: str | None = Field(default=None, description="URI of the merged model folder.")
    metrics: str | None = Field(default=None, description="URI of metrics.json.")
    loss_plot: str | None = Field(default=None, description="URI of loss.png.")
    tensorboard: str | None = Field(
        default=None, description="URI of the TensorBoard event files (tensorboard/)."
    )
    manifest: str | None = Field(
        default=None, description="URI of MANIFEST.json; present only when the output is complete."
    )


class Cost(ApiModel):
    """What the GPU time cost, at the operator's price per GPU-hour (an estimate)."""

    amount: float = Field(ge=0, description="gpuHours x gpuHourPrice, rounded to cents.")
    currency: str = Field(max_length=16, description="Currency of the price, e.g. USD.")
    gpu_hour_price: float = Field(
        ge=0, description="Price of one GPU-hour the operator is configured with."
    )


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    phase: Phase | None = Field(default=None, description="Where the job is in its life.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Latest observations, metav1.Condition-shaped.",
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    artifacts: Artifacts | None = Field(default=None, description="Published artifact URIs.")
    start_time: str | None = Field(default=None, description="When training pods first started.")
    completion_time: str | None = Field(
        default=None, description="When the job succeeded or failed."
    )
    restarts: int | None = Field(default=None, ge=0, description="Trainer pod restarts so far.")
    gpu_hours: float | None = Field(
        default=None,
        ge=0,
        description=(
            "GPU-hours used so far: GPUs per pod x running time of every trainer pod, over "
            "every attempt."
        ),
    )
    gpu_hours_as_of: str | None = Field(
        default=None,
        description="Moment up to which gpuHours is counted (RFC 3339).",
    )
    cost: Cost | None = Field(
        default=None,
        description="Estimated cost of gpuHours, when the operator has a price per GPU-hour.",
    )
    job_name: str | None = Field(default=None, description="Name of the Kubernetes Job running it.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="Last spec generation acted on."
    )
    message: str | None = Field(
        default=None, max_length=32768, description="Latest human-readable message."
    )

"""One FineTuneJob, start to finish: the story of a run, read top to bottom.

    claim the output → fetch model and data → prepare the data (bad data fails here, before
    the weights are even loaded) → build model + LoRA → sample answers "before" → train,
    resuming from the newest complete checkpoint → evaluate, sample answers "after" →
    save the adapter, merge → metrics.json, loss.png → publish (MANIFEST.json last)

Each step is a call into a component that is tested alone (data, storage, model, train,
evaluate, merge, plot, progress); this module only decides their order, which rank does what,
and where files go. ``python -m finetune_trainer`` (pods) and ``ftj run`` (laptops) both come
here.

Multi-GPU: every rank trains; rank 0 alone claims the output, reports progress, generates
samples, merges and publishes. Downloads happen once per node (local rank 0 first, the others
then find them in the shared cache).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.manifest import FineTuneJob
from transformers import set_seed

from finetune_trainer.data import make_collator, prepare_data
from finetune_trainer.evaluate import generate_answers, held_out_loss
from finetune_trainer.merge import merge_adapter
from finetune_trainer.model import (
    Hardware,
    build_model,
    check_quantization,
    load_tokenizer,
    resolve_precision,
)
from finetune_trainer.plot import plot_losses
from finetune_trainer.progress import ProgressReporter, TokenCounter, is_main_process
from finetune_trainer.storage import (
    CheckpointStore,
    JobIdentity,
    Location,
    Storage,
    check_output_ownership,
    publish_artifacts,
)
from finetune_trainer.train import (
    CheckpointUploader,
    build_trainer,
    restore_checkpoint,
    run_training,
    sft_config,
)

log = logging.getLogger("finetune_trainer")


@dataclass(frozen=True)
class RunSettings:
    """Where this run reads and writes, from the environment the operator sets (internals.md)."""

    manifest_path: Path
    workdir: Path
    cache_dir: Path
    output_uri: str | None = None
    progress_host: str = "0.0.0.0"
    progress_port: int | None = 8080
    termination_log: Path | None = Path("/dev/termination-log")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunSettings:
        """Read ``FTJ_*`` variables; unset ones take the documented defaults."""
        env = os.environ if environ is None else environ
        manifest = env.get("FTJ_MANIFEST", "/etc/finetune/job.json")
        workdir = Path(env.get("FTJ_WORKDIR") or tempfile.mkdtemp(prefix="ftj-"))
        port = int(env.get("FTJ_PROGRESS_PORT", "8080"))
        return cls(
            manifest_path=Path(manifest),
            workdir=workdir,
            cache_dir=Path(env.get("FTJ_CACHE_DIR") or workdir / "cache"),
            output_uri=env.get("FTJ_OUTPUT_URI") or None,
            progress_host=env.get("FTJ_PROGRESS_HOST", "0.0.0.0"),
            progress_port=port or None,  # 0 disables the server
            termination_log=Path(env.get("FTJ_TERMINATION_LOG", "/dev/termination-log")),
        )


@dataclass
class RunResult:
    """What a finished run hands back: artifact URIs and the headline numbers."""

    output_uri: str
    artifacts: dict[str, str] = field(default_factory=dict)
    resumed_from_step: int | None = None
    global_step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def resolve_uri(uri: str, base_dir: Path) -> str:
    """A spec URI with relative paths made absolute against the manifest's folder."""
    return str(Location.parse(uri, base_dir))


def run_job(job: FineTuneJob, settings: RunSettings, reporter: ProgressReporter) -> RunResult:
    """Run ``job`` to published artifacts. Raises :class:`TrainerError` subclasses on failure."""
    from accelerate import PartialState

    spec = job.spec
    dist = PartialState()
    main = is_main_process()
    base_dir = settings.manifest_path.resolve().parent
    output_uri = resolve_uri(settings.output_uri or spec.output.uri, base_dir)
    identity = JobIdentity.of(job)
    local_root = settings.workdir / "output"  # what gets published
    checkpoints_dir = settings.workdir / "checkpoints"
    log.info("job %s → %s", identity, output_uri)

    # 1. Refuse impossible requests and foreign outputs before any download.
    hw = Hardware.detect()
    check_quantization(spec.method, hw)
    precision = resolve_precision(spec.training.precision, hw)
    storage = Storage.from_spec(spec.storage)
    if main:
        check_output_ownership(storage, output_uri, identity, spec.output.overwrite)

    # 2. Fetch the base model and the datasets (once per node).
    with dist.local_main_process_first():
        model_dir = storage.fetch(
            resolve_uri(spec.model.uri, base_dir), settings.cache_dir, revision=spec.model.revision
        )
        dataset_files = [
            storage.fetch(resolve_uri(d.uri, base_dir), settings.cache_dir) for d in spec.datasets
        ]

    # 3. Prepare the data with only the tokenizer loaded: bad data costs seconds, not a GPU.
    tokenizer = load_tokenizer(model_dir, spec.model.trust_remote_code)
    data = prepare_data(spec, dataset_files, tokenizer)
    log.info(
        "data: %d train, %d validation, %d test examples, %d train tokens (%d truncated, "
        "%d dropped)",
        data.stats.train,
        data.stats.validation,
        data.stats.test,
        data.stats.train_tokens,
        data.stats.truncated,
        data.stats.dropped,
    )

    # 4. The model with a fresh adapter, and how it answers before any training.
    mean_tokens = data.stats.train_tokens / max(data.stats.train, 1)
    set_seed(spec.training.seed)  # the adapter's initial weights are part of the recipe
    model = build_model(model_dir, spec, precision, hw, mean_example_tokens=mean_tokens)
    plan = getattr(model, "finetune_acceleration", None)
    before = generate_answers(model, tokenizer, data.test_prompts) if main else []

    # 5. Train, continuing from the newest complete checkpoint of this output.
    store = CheckpointStore(storage, output_uri)
    with dist.local_main_process_first():
        resumed_step, resume_dir = restore_checkpoint(store, checkpoints_dir)
    reporter.set_resumed_from(resumed_step)
    tokens = TokenCounter(make_collator(tokenizer, packing=spec.training.packing))
    reporter.tokens = tokens
    config = sft_config(
        spec.training,
        output_dir=checkpoints_dir,
        precision=precision,
        hw=hw,
        has_validation=data.validation is not None and len(data.validation) > 0,
        gradient_checkpointing=bool(getattr(model, "finetune_gradient_checkpointing", False)),
    )
    trainer = build_trainer(
        model, tokenizer, data, tokens, config, [reporter, CheckpointUploader(store)]
    )
    result = run_training(trainer, resume_dir, resumed_step)

    # 6. Evaluate: held-out losses (all ranks take part), sample answers (rank 0).
    eval_loss = held_out_loss(trainer, data.validation, "eval")
    test_loss = held_out_loss(trainer, data.test, "test")
    if not main:
        return RunResult(output_uri, resumed_from_step=resumed_step, global_step=result.global_step)
    after = generate_answers(trainer.model, tokenizer, data.test_prompts)

    # 7. Save the adapter; merge it into a fresh 16-bit copy of the base.
    reporter.set_phase("Merging")
    adapter_dir = local_root / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    del trainer, model
    if spec.output.merge:
        merge_adapter(
            model_dir,
            adapter_dir,
            local_root / "merged",
            dtype=spec.output.merge_dtype,
            tokenizer=tokenizer,
            trust_remote_code=spec.model.trust_remote_code,
        )

    # 8. metrics.json and loss.png.
    metrics = run_metrics(
        job,
        result.global_step,
        result.log_history,
        resumed_step=resumed_step,
        eval_loss=eval_loss,
        test_loss=test_loss,
        stats=asdict(data.stats),
        precision=precision,
        runtime_seconds=result.train_runtime_seconds,
        tokens_per_second=reporter.state.tokens_per_second,
        generations=pair_generations(before, after),
        acceleration=plan,
        gpu_memory_gib=reporter.state.gpu_memory_gib,
    )
    (local_root / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    plot_losses(result.log_history, local_root / "loss.png", title=f"{job.metadata.name} loss")

    # 9. Publish: adapter/, merged/, metrics.json, loss.png, then MANIFEST.json last.
    reporter.set_phase("Uploading")
    artifacts = publish_artifacts(
        storage,
        local_root,
        output_uri,
        job=identity,
        spec=spec.to_wire(),
        overwrite=spec.output.overwrite,
    )
    return RunResult(output_uri, artifacts, resumed_step, result.global_step, metrics)


def pair_generations(
    before: list[dict[str, str]], after: list[dict[str, str]]
) -> list[dict[str, str]]:
    """``[{prompt, expected, before, after}]``: the same prompts, side by side."""
    answers_before = {g["prompt"]: g["answer"] for g in before}
    return [
        {
            "prompt": g["prompt"],
            "expected": g["expected"],
            "before": answers_before.get(g["prompt"], ""),
            "after": g["answer"],
        }
        for g in after
    ]


def run_metrics(
    job: FineTuneJob,
    global_step: int,
    log_history: list[dict[str, Any]],
    *,
    resumed_step: int | None,
    eval_loss: float | None,
    test_loss: float | None,
    stats: dict[str, Any],
    precision: str,
    runtime_seconds: float,
    tokens_per_second: float | None,
    generations: list[dict[str, str]],
    acceleration: Any = None,
    gpu_memory_gib: float | None = None,
) -> dict[str, Any]:
    """The content of metrics.json: headline numbers first, the full history last."""
    train_losses = [e["loss"] for e in log_history if "loss" in e]
    return {
        "job": {"name": job.metadata.name, "namespace": job.metadata.namespace or "default"},
        "steps": global_step,
        "resumedFromStep": resumed_step,
        "trainLoss": train_losses[-1] if train_losses else None,
        "evalLoss": eval_loss,
        "testLoss": test_loss,
        "precision": precision,
        "trainRuntimeSeconds": runtime_seconds,
        "tokensPerSecond": tokens_per_second,
        "gpuMemoryGib": gpu_memory_gib,
        # How the run was made fast and how much memory that plan expected (acceleration.py).
        "acceleration": None if acceleration is None else acceleration.describe(),
        "data": stats,
        "generations": generations,
        "logHistory": log_history,
    }

"""Training: TRL's ``SFTTrainer`` on our tokenized data, with checkpoints that survive the pod.

The data arrives already tokenized, masked and (optionally) packed by
:mod:`finetune_trainer.data`, so TRL's own dataset preparation is switched off
(``dataset_kwargs={"skip_prepare_dataset": True}``) and our collator is used as is; TRL
still gives us its loss (token-weighted across gradient accumulation), metrics and
PEFT handling.

Checkpoints are the preemption story: every ``saveSteps`` the trainer writes a local
checkpoint, and :class:`CheckpointUploader` copies it to ``<output>/checkpoints/`` with a
COMPLETE marker last. A restarted pod downloads the newest complete one and continues from
its step, so the total number of steps trained is the plan, not the plan plus the rework.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.spec import FineTuneJobSpec, Training
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.acceleration import AccelerationPlan, DeviceInfo
from finetune_trainer.acceleration.sharding import fsdp_arguments
from finetune_trainer.model import build_model
from finetune_trainer.node import this_node, wait_for_every_rank
from finetune_trainer.storage import ModelFetch
from finetune_trainer.storage.background import STAGING_DIR, BackgroundUploads, stage_checkpoint

log = logging.getLogger("finetune_trainer")

LOCAL_CHECKPOINTS_KEPT = 2  # the newest for resuming, one spare while the next is written
REMOTE_CHECKPOINTS_KEPT = 2


def sft_config(
    training: Training,
    plan: AccelerationPlan,
    *,
    output_dir: Path,
    has_validation: bool,
    sharding: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The ``SFTConfig`` for ``spec.training`` run as ``plan`` says: one place maps our fields
    to TRL's. The plan owns what it decided (micro-step, accumulation, optimizer, precision);
    the spec the rest. Gradient checkpointing is off here: the plan has already set it per
    decoder layer (``apply_gradient_checkpointing``), and the Trainer would set it on all.

    ``sharding``: FSDP keywords (``sharding.fsdp_arguments``) when the plan shards the weights.
    ``overrides``: keywords that replace ours (tests: no checkpoints; the bench: TRL's
    activation offloading).
    """
    from trl.trainer.sft_config import SFTConfig

    duration: dict[str, Any] = (
        {"max_steps": training.max_steps}
        if training.max_steps is not None
        else {"num_train_epochs": training.epochs, "max_steps": -1}
    )
    evaluation: dict[str, Any] = (
        {"eval_strategy": "steps", "eval_steps": training.eval_steps}
        if has_validation
        else {"eval_strategy": "no"}
    )
    arguments: dict[str, Any] = dict(
        output_dir=str(output_dir),
        **duration,
        **evaluation,
        # Accumulation folded into larger micro-steps where memory allows (same examples per
        # optimizer step).
        per_device_train_batch_size=plan.per_device_batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # a float below 1 is a ratio of the total steps
        optim=plan.optimizer,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        seed=training.seed,
        data_seed=training.seed,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        gradient_checkpointing=False,
        logging_steps=training.logging_steps,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=LOCAL_CHECKPOINTS_KEPT,
        report_to="none",
        disable_tqdm=True,  # the ProgressReporter writes one readable line per loggingSteps
        # Our data is tokenized, masked and packed already; TRL must neither re-tokenize it
        # nor drop the columns our collator reads.
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        packing=False,
        padding_free=False,
        max_length=None,
        dataloader_num_workers=0,
        dataloader_pin_memory=plan.device.cuda,
        ddp_find_unused_parameters=False,
    )
    return SFTConfig(**{**arguments, **(sharding or {}), **(overrides or {})})


class CheckpointUploader(TrainerCallback):
    """Copies each local checkpoint to ``<output>/checkpoints/`` in the background, then prunes
    old ones (storage/background.py: training never waits for an upload). Local rank 0 of
    every node uploads: each node's disk holds its own ranks' files (node.py).

    ``on_save`` runs after the trainer has written the whole checkpoint folder, so the upload
    sees a finished checkpoint; the store writes the COMPLETE marker last, so a pod killed
    mid-upload leaves a checkpoint that is simply ignored on resume. :meth:`wait` blocks until
    the newest is uploaded (the end of the run, SIGTERM).
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.node = this_node()
        self.uploads = BackgroundUploads(self._upload)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        wait_for_every_rank()  # every rank's files of this checkpoint are on its node's disk
        if not self.node.local_main:
            return
        step = state.global_step
        assert args.output_dir is not None  # sft_config always sets it
        local = Path(args.output_dir) / f"checkpoint-{step}"
        self.uploads.submit(step, stage_checkpoint(local, Path(args.output_dir) / STAGING_DIR))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the newest checkpoint is uploaded; False if ``timeout`` passed first."""
        return self.uploads.wait(timeout)

    def _upload(self, step: int, staged: Path) -> None:
        self.store.save(step, staged, node=self.node.index, nodes=self.node.count)
        self.store.prune(keep=REMOTE_CHECKPOINTS_KEPT)


def restore_checkpoint(store: Any, checkpoints_dir: Path) -> tuple[int | None, Path | None]:
    """The newest COMPLETE checkpoint of this output, downloaded; ``(None, None)`` if none.

    A local copy from an earlier attempt in the same scratch volume is reused as is.
    """
    step: int | None = store.latest_complete()
    if step is None:
        return None, None
    local = checkpoints_dir / f"checkpoint-{step}"
    if not (local / "trainer_state.json").is_file():
        local = Path(store.restore(step, local))
    log.info("resuming from checkpoint %d", step)
    return step, local


@dataclass
class TrainResult:
    """What training leaves behind for evaluation, plotting and metrics.json."""

    global_step: int
    log_history: list[dict[str, Any]]
    train_runtime_seconds: float
    resumed_from_step: int | None
    metrics: dict[str, float] = field(default_factory=dict)


def build_trainer(
    model: Any,
    tokenizer: Any,
    data: Any,
    collator: Any,
    config: Any,
    callbacks: list[TrainerCallback],
) -> Any:
    """An ``SFTTrainer`` over the prepared splits with our collator and callbacks."""
    from transformers import PrinterCallback
    from trl.trainer.sft_trainer import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.validation if config.eval_strategy != "no" else None,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=callbacks,
    )
    # The ProgressReporter already logs one line per loggingSteps; the raw dict is noise.
    trainer.remove_callback(PrinterCallback)
    return trainer


@dataclass
class PreparedTraining:
    """A run ready to train: the model with its fresh adapter, the plan it was built to and
    the trainer around it (``trainer.model`` is ``model`` until training wraps it)."""

    model: Any
    plan: AccelerationPlan
    trainer: Any


def prepare_training(
    model_dir: Path,
    spec: FineTuneJobSpec,
    device: DeviceInfo,
    *,
    tokenizer: Any,
    data: Any,
    collator: Any,
    output_dir: Path,
    callbacks: Sequence[TrainerCallback] = (),
    mean_example_tokens: float | None = None,
    overrides: Mapping[str, Any] | None = None,
    plan: AccelerationPlan | None = None,
    weights: ModelFetch | None = None,
) -> PreparedTraining:
    """The one way a run is set up for training (``run_job``, the bench, the multi-rank
    tests): the seed, the plan and the model built to it (``build_model``), the trainer's
    arguments from the spec and the plan (``sft_config``), and the trainer.

    ``data``: the prepared splits (``train``, ``validation`` or None); ``collator``: the data
    collator (``make_collator``, or a wrapper counting tokens); ``overrides``: ``SFTConfig``
    keywords that replace ours (``sft_config``); ``plan``: build to this plan instead of
    making one (a re-plan after an out-of-memory error, oom_recovery.py); ``weights``: the
    model's fetch, when its weights may still be arriving from S3 (``Storage.fetch_model``).
    """
    from transformers import set_seed

    set_seed(spec.training.seed)  # the adapter's initial weights are part of the recipe
    model, plan = build_model(model_dir, spec, device, mean_example_tokens, plan, weights)
    config = sft_config(
        spec.training,
        plan,
        output_dir=output_dir,
        has_validation=data.validation is not None and len(data.validation) > 0,
        sharding=fsdp_arguments(model) if plan.fsdp else None,
        overrides=overrides,
    )
    trainer = build_trainer(model, tokenizer, data, collator, config, list(callbacks))
    return PreparedTraining(model, plan, trainer)


def finished_checkpoint(checkpoint: Path | None) -> bool:
    """Whether a checkpoint already holds the planned number of steps (``trainer_state.json``).

    A pod that dies after its last checkpoint but before publishing resumes from a checkpoint
    with nothing left to train; ``Trainer.train`` would still take one more step there.
    """
    if checkpoint is None or not (checkpoint / "trainer_state.json").is_file():
        return False
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    planned = int(saved.get("max_steps") or 0)
    return planned > 0 and int(saved.get("global_step", 0)) >= planned


def _load_finished(trainer: Any, checkpoint: Path, sharded: bool = False) -> None:
    """Put a finished checkpoint's adapter weights and state into ``trainer`` without a step.

    ``sharded``: the checkpoint holds the adapter as FSDP shards; every rank reads it whole,
    then the model is sharded as training would have done (``sharding.shard_untrained``).
    """
    from peft import set_peft_model_state_dict
    from transformers import TrainerState

    if sharded:
        from finetune_trainer.acceleration.sharding import load_sharded_adapter, shard_untrained

        set_peft_model_state_dict(trainer.model, load_sharded_adapter(trainer.model, checkpoint))
        shard_untrained(trainer)
    else:
        from safetensors.torch import load_file

        weights = load_file(str(checkpoint / "adapter_model.safetensors"))
        set_peft_model_state_dict(trainer.model, weights)
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    # Tell the callbacks (progress reporting) where the run stands, as a resumed run would.
    handler, args, state, control = (
        trainer.callback_handler,
        trainer.args,
        trainer.state,
        trainer.control,
    )
    handler.on_train_begin(args, state, control)
    handler.on_step_end(args, state, control)
    logged = [entry for entry in state.log_history if "loss" in entry]
    if logged:
        handler.on_log(args, state, control, logs=logged[-1])


def run_training(
    trainer: Any, resume_from: Path | None, resumed_step: int | None, *, sharded: bool = False
) -> TrainResult:
    """Train (continuing from ``resume_from`` when given) and collect the history.

    A finished checkpoint is loaded without a step (``Trainer.train`` would take one more);
    ``sharded``: its adapter is in FSDP shards (FSDP runs).
    """
    if resume_from is not None and finished_checkpoint(resume_from):
        log.info(
            "checkpoint %s already holds every planned step: nothing left to train", resumed_step
        )
        _load_finished(trainer, resume_from, sharded)
        state = trainer.state
        return TrainResult(
            global_step=state.global_step,
            log_history=list(state.log_history),
            train_runtime_seconds=0.0,
            resumed_from_step=resumed_step,
        )
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    return TrainResult(
        global_step=state.global_step,
        log_history=list(state.log_history),
        train_runtime_seconds=float(output.metrics.get("train_runtime", 0.0)),
        resumed_from_step=resumed_step,
        metrics={k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))},
    )


_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def local_checkpoint_steps(checkpoints_dir: Path) -> list[int]:
    """Steps of the checkpoint folders in ``checkpoints_dir``, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    steps = [
        int(m.group(1)) for p in checkpoints_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name))
    ]
    return sorted(steps)

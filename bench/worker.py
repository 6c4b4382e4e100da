"""One benchmark row in its own process: load, train a few steps, time, merge, report JSON.

Run by ``bench/run.py`` (a fresh process per row keeps peak-memory figures clean and lets one
crashing configuration leave the others standing).
"""

from __future__ import annotations

import time

T_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
for sub in ("", "trainer-image", "operator"):
    path = str(REPO / sub) if sub else str(REPO)
    if path not in sys.path:
        sys.path.insert(0, path)

from bench import synthetic  # noqa: E402

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
EXAMPLES_PER_STEP = 20  # ~15.6k real tokens per optimizer step at the spread's mean (~780)


from bench.meter import Meter  # noqa: E402


def lora_config(**overrides: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **{**LORA, **overrides})


def dataset(rows: list[dict[str, Any]], labels: bool = False) -> Any:
    from datasets import Dataset

    if labels:
        rows = [
            {**r, "attention_mask": [1] * len(r["input_ids"]), "labels": r["input_ids"]}
            for r in rows
        ]
    return Dataset.from_list(rows)


# ------------------------------------------------------------------------------------------
# Configurations
# ------------------------------------------------------------------------------------------


def shared_arguments(a: argparse.Namespace) -> dict[str, Any]:
    """Trainer arguments the baseline and the peers share, so they differ only where they mean
    to (padding, packing, kernels): precision, learning rate, steps, logging, seed."""
    import torch

    return {
        "bf16": True,
        # CPU dry runs only: transformers refuses bf16 without a GPU unless told it is the CPU.
        "use_cpu": not torch.cuda.is_available(),
        "learning_rate": 2e-4,
        "max_steps": a.steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": 42,
    }


def build_baseline(ckpt: Path, tok: Any, rows: list[dict[str, Any]], a: argparse.Namespace) -> Any:
    """Tutorial style: HF Trainer, padded batches of 4, gradient checkpointing, no fused kernels."""
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16)
    model = get_peft_model(model, lora_config())
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=EXAMPLES_PER_STEP // 4,
        gradient_checkpointing=True,
        **shared_arguments(a),
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    return Trainer(
        model=model, args=args, train_dataset=dataset(rows, labels=True), data_collator=collator
    )


def build_trl_peer(
    ckpt: Path, tok: Any, rows: list[dict[str, Any]], a: argparse.Namespace, attn: str, liger: bool
) -> Any:
    """TRL SFTTrainer with its own best-fit packing (padding-free) and Liger kernels."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(
        str(ckpt), dtype=torch.bfloat16, attn_implementation=attn
    )
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        packing=True,
        max_length=2048,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        use_liger_kernel=liger,
        **shared_arguments(a),
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset(rows),
        processing_class=tok,
        peft_config=lora_config(),
    )


UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def import_unsloth() -> dict[str, Any]:
    """Imports Unsloth before anything imports transformers, trl or peft (it patches them at
    import), offline and with its compile cache in the temporary directory; returns what the
    row should record about its stack. Unsloth's fast path is CUDA-only: on a machine without a
    GPU the row fails here, unless ``FTJ_BENCH_UNSLOTH_CPU=1`` asks for Unsloth's own CPU
    fallback (a dry run of the row's code, not a measurement)."""
    import torch

    if not torch.cuda.is_available() and os.environ.get("FTJ_BENCH_UNSLOTH_CPU") != "1":
        raise RuntimeError(
            "the unsloth rows need a CUDA GPU (Unsloth's kernels are Triton/CUDA); "
            "FTJ_BENCH_UNSLOTH_CPU=1 runs Unsloth's CPU fallback as a dry run of the row's code"
        )
    early = sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules)
    if early:
        raise RuntimeError(f"{', '.join(early)} imported before unsloth: Unsloth must patch first")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no hub ping (no network there)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault(
        "UNSLOTH_COMPILE_LOCATION", str(Path(tempfile.gettempdir()) / "unsloth_compiled_cache")
    )
    import unsloth

    recorded: dict[str, Any] = {"unsloth_version": unsloth.__version__}
    # Which attention kernels packed rows can reach: flash-attn's varlen, xformers' block-diagonal
    # mask, torch's varlen (2.12+), or else SDPA per packed segment. Loaded by the GPU path only.
    dispatch = sys.modules.get("unsloth.utils.attention_dispatch")
    if dispatch is not None:
        recorded["unsloth_attention"] = {
            "flash_attn": bool(getattr(dispatch, "HAS_FLASH_ATTENTION", False)),
            "xformers": bool(getattr(dispatch, "HAS_XFORMERS", False)),
            "torch_varlen": getattr(dispatch, "_TORCH_VARLEN_ATTN", None) is not None,
        }
    return recorded


def build_unsloth(
    ckpt: Path,
    tok: Any,
    rows: list[dict[str, Any]],
    a: argparse.Namespace,
    load_in_4bit: bool = False,
    dropout: float = LORA["lora_dropout"],
) -> Any:
    """Unsloth's own recipe (its Qwen2.5 notebooks): FastLanguageModel loads the checkpoint and
    wraps it in LoRA with Unsloth's offloaded gradient checkpointing; TRL's SFTTrainer (as
    Unsloth patches it) trains with packing (padding-free), the same trainer arguments, LoRA
    rank, alpha and targets as the TRL peers. ``import_unsloth`` ran first (``main``)."""
    import torch
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    t = time.perf_counter()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(ckpt),
        max_seq_length=synthetic.MAX_TOKENS,
        dtype=torch.bfloat16,
        load_in_4bit=load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=dropout,
        target_modules=UNSLOTH_TARGETS,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        packing=True,
        max_length=synthetic.MAX_TOKENS,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        **shared_arguments(a),
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset(rows), processing_class=tokenizer
    )
    trainer._ftj_load_s = load_s  # type: ignore[attr-defined]
    return trainer


def build_default_prototype(
    ckpt: Path, tok: Any, rows: list[dict[str, Any]], a: argparse.Namespace, **plan_overrides: Any
) -> Any:
    """The acceleration component driving TRL's SFTTrainer, as the trainer is to use it."""
    import dataclasses

    import torch
    from finetune_api.spec import Method, Quantization, Training
    from finetune_trainer import acceleration as acc
    from finetune_trainer.acceleration import choices
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    qlora_bits = plan_overrides.pop("qlora_bits", None)
    training = Training(
        max_steps=a.steps,
        batch_size=4,
        gradient_accumulation_steps=EXAMPLES_PER_STEP // 4,
        gradient_checkpointing=plan_overrides.pop("gradient_checkpointing", "auto"),
    )
    method = (
        Method(type="qlora", quantization=Quantization(bits=qlora_bits)) if qlora_bits else Method()
    )
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "device_map": "cuda"}
    if qlora_bits == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    elif qlora_bits == 8:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), **kwargs)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    mean = sum(len(r["input_ids"]) for r in rows) / len(rows)
    plan = acc.plan_acceleration(
        training,
        method,
        acc.ModelShape.from_config(model.config),
        acc.DeviceInfo.detect(),
        mean_example_tokens=mean,
        liger_available=choices.liger_available() and plan_overrides.pop("liger", True),
        memory_budget_bytes=plan_overrides.pop("memory_budget_bytes", None),
    )
    if plan_overrides:
        plan = dataclasses.replace(plan, **plan_overrides)
    print("plan:", plan.describe(), file=sys.stderr)
    applied = acc.apply_acceleration(model, plan)
    print("applied:", applied, file=sys.stderr)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        packing=False,
        padding_free=False,
        max_length=2048,
        per_device_train_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        gradient_checkpointing=False,
        optim=plan.optimizer,
        bf16=True,
        learning_rate=2e-4,
        max_steps=a.steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=42,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset(rows),
        processing_class=tok,
        peft_config=lora_config(),
        data_collator=DataCollatorForLanguageModeling(
            pad_token_id=synthetic.PAD_ID, padding_free=True
        ),
    )
    acc.apply_gradient_checkpointing(trainer.model, plan)
    trainer._ftj_plan = plan  # type: ignore[attr-defined]
    trainer._ftj_load_s = load_s  # type: ignore[attr-defined]
    return trainer


def build_trainer_path(
    ckpt: Path,
    tok: Any,
    rows: list[dict[str, Any]],
    a: argparse.Namespace,
    gradient_checkpointing: str = "auto",
    qlora_bits: int | None = None,
    qlora_format: str | None = None,
    activation_offloading: bool = False,
    dropout: float | None = None,
) -> Any:
    """The trainer's own code path (``finetune_trainer.run`` minus fetch/publish): spec →
    ``prepare_training`` (acceleration plan, loading, trainer arguments, trainer), on the
    synthetic data in the shape ``prepare_data`` leaves it."""
    from types import SimpleNamespace

    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.acceleration import DeviceInfo
    from finetune_trainer.data import make_collator
    from finetune_trainer.train import prepare_training

    method: dict[str, Any] = {"type": "lora"}
    if qlora_bits:
        quantization: dict[str, Any] = {"bits": qlora_bits}
        if qlora_format:
            quantization["format"] = qlora_format
        method = {"type": "qlora", "quantization": quantization}
    if dropout is not None:  # the spec's default LoRA dropout (0.05) unless a row says
        method["lora"] = {"dropout": dropout}
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": str(ckpt)},
            "datasets": [{"uri": "synthetic.jsonl"}],
            "method": method,
            "training": {
                "maxSteps": a.steps,
                "batchSize": 4,
                "gradientAccumulationSteps": EXAMPLES_PER_STEP // 4,
                "gradientCheckpointing": gradient_checkpointing,
                "loggingSteps": 1,
                "packing": True,
            },
            "output": {"uri": tempfile.mkdtemp()},
            "resources": {"gpus": 1},
        }
    )
    data = SimpleNamespace(
        train=dataset([{**r, "labels": r["input_ids"]} for r in rows]), validation=None
    )
    prepared = prepare_training(
        ckpt,
        spec,
        DeviceInfo.detect(),
        tokenizer=tok,
        data=data,
        collator=make_collator(tok, packing=True),
        output_dir=Path(tempfile.mkdtemp()),
        mean_example_tokens=sum(len(r["input_ids"]) for r in rows) / len(rows),
        # TRL's activation offloading (saved tensors to pinned host memory on a side stream).
        overrides={"activation_offloading": activation_offloading},
    )
    trainer = prepared.trainer
    trainer._ftj_plan = prepared.plan  # type: ignore[attr-defined]
    trainer._ftj_load_s = float("nan")  # type: ignore[attr-defined]
    return trainer


# Suffixes that only change the environment (run.py sets it): the row builds as its base config.
#   -nofp8: every GEMM in bf16, no FP8 tensor cores (FTJ_FP8_COMPUTE=0): a Float8 base's
#     weights dequantized, a 16-bit base's forward GEMMs in bf16 (the default before session 15)
#   -fp8fwd: a 16-bit base's forward GEMMs on FP8 tensor cores (FTJ_FP8_FORWARD_16BIT=1;
#     the default since session 17, so now the same as no suffix)
#   -bf16fwd: a 16-bit base's forward GEMMs in bf16 (FTJ_FP8_FORWARD_16BIT=0; the default
#     before session 17)
#   -fp8bwd: input gradients on FP8 tensor cores too (FTJ_FP8_BACKWARD=1: all of a Float8
#     base's; FTJ_FP8_BACKWARD_16BIT=1: a 16-bit base's MLP down projections', with its FP8
#     forward)
#   -bf16bwd: a 16-bit base's input gradients in bf16 while its forward runs in FP8
#     (FTJ_FP8_BACKWARD_16BIT=0, the default)
#   -dropfuse: the LoRA dropout inside the rank-r GEMMs (FTJ_FUSED_DROPOUT_GEMM=1)
#   -nodropfuse: ablation, a dropout kernel writes the dropped copies (FTJ_FUSED_DROPOUT_GEMM=0)
#   -profile: where one step's GPU time goes (its tokens/s includes the profiler)
#   -hostprofile: the same with the host's (CPU) time per op
#   -maskscan: transformers' packed-sequence scan at every forward, as before step 26
#   -nocast: 8-bit bitsandbytes layers without the plan's bf16 compute cast
#   -compile: decoder layers under torch.compile (FTJ_TORCH_COMPILE=1)
#   -noskip: recomputed layers redo their down projection too (FTJ_RECOMPUTE_SKIP=0)
#   -unpaired: the LoRA backward draws its two dropout masks in two kernels (FTJ_PAIRED_DROPOUT=0)
#   -nostream: no frozen weights streamed from host memory (FTJ_STREAM_WEIGHTS=0)
#   -draw4: four dropout numbers per Philox draw instead of eight (FTJ_DROPOUT_HALVES=1)
#   -trace: when one step's GPU waited, and why (bench/timeline.py)
# and suffixes that only change the data (main): every example at the spread's mean length
#   -samelen: so every step packs the same number of tokens
#   -samelen-jitter: give or take 48 tokens each, so the count changes every step
ENVIRONMENT_SUFFIXES = ("-nofp8", "-fp8fwd", "-bf16fwd", "-bf16bwd", "-fp8bwd", "-profile",
                        "-hostprofile", "-maskscan", "-nocast", "-compile", "-noskip",
                        "-unpaired", "-nostream", "-draw4", "-trace", "-samelen-jitter",
                        "-samelen", "-peftnf4", "-dropfuse", "-nodropfuse")  # fmt: skip


def split_config(config: str) -> tuple[str, frozenset[str]]:
    """``config``'s base config and the environment suffixes stacked on it (several may
    stack, e.g. ``default-dropfuse-fp8bwd``, so two levers can be measured together in one
    row). An unknown name comes back whole, with no suffixes."""
    name, suffixes = config, set()
    while name not in CONFIGS:
        suffix = next((s for s in ENVIRONMENT_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            return config, frozenset()
        suffixes.add(suffix)
        name = name.removesuffix(suffix)
    return name, frozenset(suffixes)


def builder(config: str) -> Any:
    """The function that builds ``config``'s trainer: its base config's (``split_config``)."""
    base, _ = split_config(config)
    if base not in CONFIGS:
        raise KeyError(f"unknown bench config {config!r}")
    return CONFIGS[base]


CONFIGS = {
    "baseline": lambda c, t, r, a: build_baseline(c, t, r, a),
    "trl-packing-liger": lambda c, t, r, a: build_trl_peer(c, t, r, a, "sdpa", True),
    "trl-packing-liger-flex": lambda c, t, r, a: build_trl_peer(c, t, r, a, "flex_attention", True),
    "trl-packing": lambda c, t, r, a: build_trl_peer(c, t, r, a, "sdpa", False),
    # The trainer's own code path, as a FineTuneJob with default training settings runs it.
    "default": lambda c, t, r, a: build_trainer_path(c, t, r, a),
    "default-ckpt-all": lambda c, t, r, a: build_trainer_path(
        c, t, r, a, gradient_checkpointing="always"
    ),
    # Ablation: peft's own LoRA forward instead of the fused one (run.py sets FTJ_FUSED_LORA=0).
    "default-unfused": lambda c, t, r, a: build_trainer_path(c, t, r, a),
    # The default as planned for an 80 GB H100 and for a 24 GB card (run.py sets the budget
    # and caps the allocator).
    "default-h100-80g": lambda c, t, r, a: build_trainer_path(c, t, r, a),
    "default-24g": lambda c, t, r, a: build_trainer_path(c, t, r, a),
    # The default with LoRA dropout 0 (peft's, Unsloth's and LLaMA-Factory's default): what
    # the bench's dropout 0.05 costs the trainer; not the workload the other rows compare on.
    "default-dropout0": lambda c, t, r, a: build_trainer_path(c, t, r, a, dropout=0.0),
    # The default planned for an 18 GiB budget (run.py sets FTJ_MEMORY_BUDGET_GIB=18).
    "default-18g": lambda c, t, r, a: build_trainer_path(c, t, r, a),
    "default-ckpt-all-18g": lambda c, t, r, a: build_trainer_path(
        c, t, r, a, gradient_checkpointing="always"
    ),
    # The default with TRL's activation offloading to pinned host memory, no recomputation.
    "default-offload": lambda c, t, r, a: build_trainer_path(
        c, t, r, a, gradient_checkpointing="never", activation_offloading=True
    ),
    "qlora-4bit": lambda c, t, r, a: build_trainer_path(c, t, r, a, qlora_bits=4),
    # 8 bits in the default format, float8 (float8_base.py); -18g: the 18 GiB budget.
    "qlora-8bit": lambda c, t, r, a: build_trainer_path(c, t, r, a, qlora_bits=8),
    "qlora-8bit-18g": lambda c, t, r, a: build_trainer_path(c, t, r, a, qlora_bits=8),
    # QLoRA as planned for a 24 GB card, with the allocator capped to prove it fits (run.py).
    "qlora-4bit-24g": lambda c, t, r, a: build_trainer_path(c, t, r, a, qlora_bits=4),
    "qlora-8bit-24g": lambda c, t, r, a: build_trainer_path(c, t, r, a, qlora_bits=8),
    # bitsandbytes' LLM.int8 (format int8): the 8-bit rows before the float8 format existed.
    "qlora-int8-24g": lambda c, t, r, a: build_trainer_path(
        c, t, r, a, qlora_bits=8, qlora_format="int8"
    ),
    # Ablations of the acceleration component outside the trainer (bench/NOTES.md).
    "proto-noliger": lambda c, t, r, a: build_default_prototype(c, t, r, a, liger=False),
    # Unsloth's own recipe on the same data and LoRA (bf16 base, dropout 0.05 as every row);
    # -dropout0: the dropout Unsloth's fused LoRA kernels need; -4bit: its tutorial's NF4 base
    # (-4bit-dropout0: the tutorial's defaults both). Import order: main calls import_unsloth.
    "unsloth": lambda c, t, r, a: build_unsloth(c, t, r, a),
    "unsloth-dropout0": lambda c, t, r, a: build_unsloth(c, t, r, a, dropout=0.0),
    "unsloth-4bit": lambda c, t, r, a: build_unsloth(c, t, r, a, load_in_4bit=True),
    "unsloth-4bit-dropout0": lambda c, t, r, a: build_unsloth(
        c, t, r, a, load_in_4bit=True, dropout=0.0
    ),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--examples", type=int, default=0)
    p.add_argument(
        "--full-merge",
        action="store_true",
        help="also time the trainer's merge: adapter to disk, merge_adapter from the base on disk",
    )
    a = p.parse_args()

    import torch

    row: dict[str, Any] = {"model": a.model, "config": a.config}
    try:
        if a.config.startswith("unsloth"):  # before the tokenizer below imports transformers
            row.update(import_unsloth())
        tok = synthetic.load_tokenizer(a.ckpt)
        vocab = json.loads((a.ckpt / "config.json").read_text())["vocab_size"]
        count = a.examples or (a.steps + 4) * EXAMPLES_PER_STEP * 2
        lengths = None
        suffixes = split_config(a.config)[1]
        if "-samelen" in suffixes:  # every step the same token count
            lengths = synthetic.even_lengths(count)
        elif "-samelen-jitter" in suffixes:  # the same, give or take 48 per example
            lengths = synthetic.even_lengths(count, jitter=48)
        rows = synthetic.examples(count, vocab, seed=1, lengths=lengths)
        trainer = builder(a.config)(a.ckpt, tok, rows, a)
        meter = Meter(a.warmup)
        meter.attach(trainer.model)
        trainer.add_callback(meter.callback())
        cap = os.environ.get("FTJ_BENCH_CAP_GIB")
        if cap:  # emulate a smaller card: allocations past the cap fail as OOM
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(float(cap) * 2**30 / total)
            row["memory_cap_gib"] = float(cap)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        row.update(meter.result())
        row["time_to_first_step_s"] = round(meter.first_step_end - T_PROCESS_START, 1)  # type: ignore[operator]
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0
        row["peak_reserved_gib"] = (
            round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else 0.0
        )
        row["losses"] = [round(x, 4) for x in meter.losses]
        if cuda:  # near a memory cap the caching allocator frees and retries (a device sync)
            stats = torch.cuda.memory_stats()
            row["alloc_retries"] = int(stats.get("num_alloc_retries", 0))
            row["device_mallocs"] = int(stats.get("num_device_alloc", 0))
        plan = getattr(trainer, "_ftj_plan", None)
        if plan is not None:
            row["plan"] = plan.describe()
        if hasattr(trainer, "_ftj_load_s"):
            row["load_s"] = round(trainer._ftj_load_s, 2)
        model = trainer.model
        work = Path(tempfile.mkdtemp(prefix="ftj-merge-"))  # local disk (/tmp)
        if a.full_merge:
            # As finetune_trainer.run step 7: the adapter is saved first (before the in-memory
            # merge below changes the weights), the training objects are dropped.
            t = time.perf_counter()
            model.save_pretrained(work / "adapter", safe_serialization=True)
            tok.save_pretrained(work / "adapter")
            row["adapter_save_s"] = round(time.perf_counter() - t, 2)
        streamer = getattr(model, "_ftj_weight_streamer", None)
        if streamer is not None:  # peft merges in place: every weight back on the GPU first
            streamer.remove()
        t = time.perf_counter()
        if (
            hasattr(model, "merge_and_unload")
            and not getattr(model, "is_loaded_in_4bit", False)
            and "qlora" not in a.config
            and not a.config.startswith("unsloth")  # its patched LoRA layers: not this row's point
        ):
            model.merge_and_unload()
            if cuda:
                torch.cuda.synchronize()
            row["merge_in_memory_s"] = round(time.perf_counter() - t, 2)
        if a.full_merge:
            from finetune_trainer.merge import merge_adapter

            del trainer, model
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            t = time.perf_counter()
            merge_adapter(
                a.ckpt, work / "adapter", work / "merged", dtype="bfloat16", tokenizer=tok
            )
            if cuda:
                torch.cuda.synchronize()
            row["merge_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            os.sync()  # the write above may still sit in the page cache
            row["merge_sync_s"] = round(time.perf_counter() - t, 2)
            row["merged_gib"] = round(
                sum(f.stat().st_size for f in (work / "merged").iterdir()) / 2**30, 2
            )
            row["merge_note"] = (
                "finetune_trainer.merge.merge_adapter: base reloaded from local disk (page "
                "cache warm from the training load), adapter merged on the GPU, bf16 safetensors "
                "written to local disk; merge_sync_s = os.sync() after it"
            )
        shutil.rmtree(work, ignore_errors=True)
    except Exception as exc:  # a failing row is reported, not fatal to the bench
        traceback.print_exc()
        row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    with a.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

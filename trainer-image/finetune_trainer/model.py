"""The base model, its tokenizer and the LoRA adapter around it.

Every decision that depends on the machine (precision, quantization, which layers recompute or
stream, whether the weights load through host memory or are sharded) is the acceleration
plan's (acceleration/plan.py), made from the model's config before a weight is read; the
loaders below only carry it out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from finetune_api.spec import FineTuneJobSpec, LoraSettings, Method

from finetune_trainer.acceleration import (
    AccelerationPlan,
    DeviceInfo,
    apply_acceleration,
    apply_gradient_checkpointing,
    local_rank,
    plan_for_model,
)
from finetune_trainer.acceleration.replan import MemoryLimits
from finetune_trainer.errors import InvalidInput
from finetune_trainer.storage.streaming import ModelFetch

log = logging.getLogger("finetune_trainer")

TORCH_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def lora_config(settings: LoraSettings) -> Any:
    """The peft ``LoraConfig`` for ``spec.method.lora``."""
    from peft import LoraConfig

    targets: str | list[str] = settings.target_modules
    if settings.target_modules == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False) -> Any:
    """The base model's tokenizer, with a pad token (padding-free rows still need one)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise InvalidInput(
            f"spec.model.uri: no usable tokenizer in {model_dir} ({err}). The model folder "
            "must hold tokenizer.json or tokenizer_config.json."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(method: Method, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes settings for QLoRA: NF4 with double quantization, or 8 bits."""
    from transformers import BitsAndBytesConfig

    bits = method.quantization.bits if method.quantization else 4
    # transformers leaves BitsAndBytesConfig's constructor untyped.
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_base_model(
    model_dir: Path,
    spec: FineTuneJobSpec,
    plan: AccelerationPlan,
    *,
    config: Any,
    weights: ModelFetch | None = None,
) -> Any:
    """The base model in the plan's precision (or quantized for QLoRA), where the plan says.

    Weights are kept in the compute dtype (bf16/fp16) on GPUs: the frozen base doesn't need
    fp32 master weights, only the adapter does, and the trainer keeps those in fp32.
    ``plan.loads_through_host``: load into host memory (a Float8 base that will reach the GPU
    quantized, or a model whose streamed layers stay there).
    ``config``: the model's config (``load_config``), already read by the caller.
    ``weights``: the fetch of ``model_dir`` when it may still be arriving from S3: each tensor
    is read as soon as its bytes are in (``streamed_load``); the call returns with the whole
    folder in.
    ``plan.fsdp``: FSDP will shard the model across the ranks; only rank 0 reads the weights
    (into host memory), the other ranks build the model with uninitialised parameters
    (``sharding.empty_model``) and receive their shards from rank 0 when the trainer wraps it
    (accelerate's ``cpu_ram_efficient_loading``): one copy in host memory per job, not one per
    GPU.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    dtype = TORCH_DTYPES[plan.precision]
    sharded = plan.fsdp
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.model.trust_remote_code}
    if spec.method.type == "qlora" and not spec.method.float8_base:
        kwargs["quantization_config"] = quantization_config(spec.method, dtype)
    if plan.device.cuda and not (plan.loads_through_host or sharded):
        kwargs["device_map"] = {"": local_rank()}  # safetensors straight onto this GPU
    try:
        if sharded and int(os.environ.get("RANK", "0")) != 0:
            from finetune_trainer.acceleration.sharding import empty_model

            log.info("sharded base: not read here; the shards arrive from rank 0")
            return empty_model(config, **kwargs)
        if sharded:
            log.info("sharded base: read into host memory, to be sharded over all ranks")
        if weights is not None and weights.arriving:
            from finetune_trainer import streamed_load

            if streamed_load.can_load_while_arriving(weights, kwargs):
                log.info("loading the base weights while they download")
                return streamed_load.load_while_arriving(weights, model_dir, config, kwargs)
            weights.wait()
        return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        raise InvalidInput(
            f"spec.model.uri: {model_dir} is not a causal language model transformers can load "
            f"({err}). Point it at a Hugging Face model folder with config.json and weights."
        ) from None


def load_config(model_dir: Path, spec: FineTuneJobSpec) -> Any:
    """The model's transformers config: the plan is made from it before any weight is read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=spec.model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise InvalidInput(
            f"spec.model.uri: {model_dir} has no usable config.json ({err}). Point it at a "
            "Hugging Face model folder with config.json and weights."
        ) from None


def plan_model(
    model_dir: Path,
    spec: FineTuneJobSpec,
    device: DeviceInfo,
    mean_example_tokens: float | None = None,
    limits: MemoryLimits | None = None,
) -> AccelerationPlan:
    """The acceleration plan for the model in ``model_dir``, from its config alone (no weight
    is read); ``limits`` narrow it after an out-of-memory error (acceleration/replan.py)."""
    limits = limits or MemoryLimits()
    return plan_for_model(
        load_config(model_dir, spec),
        spec,
        device,
        mean_example_tokens=mean_example_tokens,
        memory_budget=limits.memory_budget_bytes,
        micro_cap=limits.micro_cap,
    )


def build_model(
    model_dir: Path,
    spec: FineTuneJobSpec,
    device: DeviceInfo,
    mean_example_tokens: float | None = None,
    plan: AccelerationPlan | None = None,
    weights: ModelFetch | None = None,
) -> tuple[Any, AccelerationPlan]:
    """The base model wrapped with a fresh LoRA adapter, ready for the trainer, and the plan
    it was built to (which the trainer's arguments follow too): ``plan`` when given (a
    re-plan after an out-of-memory error), else :func:`plan_model`'s. ``weights``: the
    model's fetch, when its weights may still be arriving (:func:`load_base_model`).

    At initialisation LoRA's B matrices are zero, so this model still answers exactly like the
    base model: the "before" generations in metrics.json are taken from it.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    # Planned before loading: a sharded or streamed model loads differently.
    config = load_config(model_dir, spec)
    if plan is None:
        plan = plan_for_model(config, spec, device, mean_example_tokens=mean_example_tokens)
    log.info("acceleration: %s", plan.describe())
    for reason in plan.reasons:  # why: what the user can change is named here
        (log.warning if "exceeds" in reason else log.info)("  because %s", reason)
    model = load_base_model(model_dir, spec, plan, config=config, weights=weights)
    apply_acceleration(model, plan)
    checkpointing = plan.gradient_checkpointing
    bitsandbytes_base = spec.method.type == "qlora" and not spec.method.float8_base
    if bitsandbytes_base and not plan.fused_lora:
        # peft's recipe: the unquantized weights to fp32. A fused 4-bit base keeps them in bf16
        # like 16-bit LoRA does (nf4_base.py).
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]  # peft: untyped
            model, use_gradient_checkpointing=checkpointing
        )
    if checkpointing:
        apply_gradient_checkpointing(model, plan)  # only the layers memory needs
    model.config.use_cache = False
    try:
        model = get_peft_model(model, lora_config(spec.method.lora))
    except ValueError as err:
        raise InvalidInput(
            f"spec.method.lora.targetModules: {err}. Use all-linear, or names of linear layers "
            "of this model (e.g. q_proj, v_proj)."
        ) from None
    gpu = torch.device("cuda", local_rank()) if device.cuda else None
    if spec.method.float8_base:
        # After get_peft_model: peft gives a new adapter its base weight's dtype.
        from finetune_trainer.acceleration.float8_base import quantize_base_linears

        count = quantize_base_linears(model, device=gpu)
        through_host = plan.loads_through_host
        log.info(
            "float8 base: %d linears stored as e4m3%s",
            count,
            " (quantized on their way from host memory)" if through_host else "",
        )
        if through_host and gpu is not None:
            model.to(gpu)  # the rest follows the quantized linears: embeddings, norms, adapter
        if gpu is not None:
            torch.cuda.empty_cache()  # give the 16-bit weights' blocks back
    if plan.fused_lora:
        from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

        fp8_16bit = plan.fp8_forward and not plan.float8_base  # Float8 bases take FP8 anyway
        # The plan sets fp8_backward only for a 16-bit base with its FP8 forward.
        fp8_backward = plan.fp8_backward
        count = fuse_lora_linears(model, fp8_forward=fp8_16bit, fp8_backward=fp8_backward)
        log.info(
            "fused LoRA forward on %d linears%s",
            count,
            (
                ", base GEMMs on FP8 tensor cores (16-bit weights; "
                + ("forward and input gradients)" if fp8_backward else "forward only)")
            )
            if fp8_16bit
            else "",
        )
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "model: %s, %.1fM parameters, adapter %.2fM trainable (%.2f%%), %s%s",
        type(model.get_base_model()).__name__,
        total / 1e6,
        trainable / 1e6,
        100 * trainable / max(total, 1),
        plan.precision,
        ", gradient checkpointing" if checkpointing else "",
    )
    if plan.streamed_layers and gpu is not None:
        from finetune_trainer.acceleration.weight_streaming import stream_frozen_weights

        streamer = stream_frozen_weights(model, plan, gpu)
        log.info(
            "weight streaming: the frozen weights of %d recomputed layers wait in host memory "
            "(%.1f GiB pinned) and reach the GPU one layer ahead of use",
            len(streamer.order),
            streamer.host_bytes / 2**30,
        )
    return model, plan

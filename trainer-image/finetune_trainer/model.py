"""The base model, its tokenizer and the LoRA adapter around it.

Decisions that depend on the machine (precision, quantization, gradient checkpointing) are
pure functions of the spec and a :class:`Hardware` description, so they are tested without a
GPU; the loaders below only carry them out.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from finetune_api.spec import FineTuneJobSpec, LoraSettings, Method, Training

from finetune_trainer import acceleration, apply_plan
from finetune_trainer.errors import InvalidInput, UnsupportedHardware

log = logging.getLogger("finetune_trainer")

Precision = Literal["bf16", "fp16", "fp32"]
TORCH_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


@dataclass(frozen=True)
class Hardware:
    """What this process can use: enough to decide precision, quantization, checkpointing."""

    cuda: bool
    bf16: bool
    bitsandbytes: bool
    device_memory_bytes: int | None = None

    @classmethod
    def detect(cls) -> Hardware:
        """Look at this machine (the GPU of this rank, if any)."""
        cuda = torch.cuda.is_available()
        memory = None
        if cuda:
            memory = torch.cuda.get_device_properties(local_rank()).total_memory
        return cls(
            cuda=cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
            device_memory_bytes=memory,
        )


def local_rank() -> int:
    """This process's GPU index on its node (torchrun sets ``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_precision(requested: str, hw: Hardware) -> Precision:
    """``spec.training.precision`` → the precision actually used.

    auto: bf16 where the GPU supports it (no loss scaling needed), else fp16 on older GPUs,
    fp32 on CPUs (CPU half precision is slow and numerically fragile for training).
    """
    if requested == "auto":
        if hw.cuda:
            return "bf16" if hw.bf16 else "fp16"
        return "fp32"
    if requested == "fp16" and not hw.cuda:
        raise UnsupportedHardware(
            "spec.training.precision: fp16 needs a GPU (mixed precision with loss scaling); "
            "this machine has none. Use precision: auto or fp32."
        )
    if requested == "bf16" and hw.cuda and not hw.bf16:
        raise UnsupportedHardware(
            "spec.training.precision: bf16 is not supported by this GPU (it needs Ampere or "
            "newer). Use precision: auto or fp16."
        )
    return requested  # type: ignore[return-value]


def check_quantization(method: Method, hw: Hardware) -> None:
    """bitsandbytes QLoRA needs the package on a CUDA GPU: refuse clearly before any download.
    The Float8 base (8 bits, format float8) runs anywhere."""
    if method.type != "qlora" or method.float8_base:
        return
    if not hw.cuda:
        raise UnsupportedHardware(
            "spec.method.type: qlora needs a CUDA GPU (bitsandbytes 4/8-bit quantization runs "
            "on GPUs only) and this machine has none. Use type: lora on CPUs, or set "
            "spec.resources.gpus >= 1."
        )
    if not hw.bitsandbytes:
        raise UnsupportedHardware(
            "spec.method.type: qlora needs the bitsandbytes package, which is not installed in "
            "this trainer image. Use the default trainer image, or `pip install bitsandbytes`."
        )


def wants_gradient_checkpointing(
    setting: str,
    hw: Hardware,
    *,
    num_parameters: int,
    bytes_per_parameter: float,
    training: Training,
    hidden_size: int,
    num_layers: int,
) -> bool:
    """``spec.training.gradientCheckpointing`` → on or off.

    auto estimates peak memory as the weights plus the activations kept for backward (about
    34 bytes per token per hidden unit per layer at 16 bits, the Megatron estimate) and turns
    checkpointing on when that would exceed 70% of the GPU. On CPU there is no fixed memory
    wall worth the 30% slowdown, so auto is off there.
    """
    if setting == "always":
        return True
    if setting == "never" or not hw.cuda or not hw.device_memory_bytes:
        return False
    weights = num_parameters * bytes_per_parameter
    tokens = training.batch_size * training.cutoff_length
    activations = 34 * tokens * hidden_size * num_layers
    return weights + activations > 0.7 * hw.device_memory_bytes


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
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# A Float8 base is loaded straight onto the GPU in 16 bits and quantized there when the 16-bit
# weights take at most this share of the memory the plan may use; above it the 16-bit weights
# are read into host memory and go to the GPU one linear at a time, already quantized (a 14B
# on a 24 GB card: 28 GB of bf16 weights would not load, 14 GB of e4m3 ones train). A plan
# that streams weights from host memory loads there above this share of the card.
_DIRECT_LOAD_SHARE = 0.6


def loads_through_host(
    model_dir: Path, spec: FineTuneJobSpec, hw: Hardware, config: Any = None, plan: Any = None
) -> bool:
    """Whether the 16-bit weights are read into host memory rather than straight onto the GPU
    (see above): a Float8 base above the share of the plan's memory (quantized on its way), or
    a ``plan`` that streams weights (weight_streaming.py) above the share of the card or above
    ``resources.gpuMemoryBudget`` (the streamed layers' weights leave the GPU after loading
    otherwise, and until then a GPU shared under that budget would hold all of them).
    ``config``: the model's config when the caller has read it already."""
    streams = bool(getattr(plan, "streamed_layers", 0))
    if not ((spec.method.float8_base or streams) and hw.cuda and hw.device_memory_bytes):
        return False
    config = config or load_config(model_dir, spec)
    weights_16bit = acceleration.ModelShape.from_config(config).total_params * 2
    budget = acceleration.memory_budget_bytes(spec)
    if spec.method.float8_base:
        limit = budget or int(hw.device_memory_bytes * 0.85)
        return weights_16bit > _DIRECT_LOAD_SHARE * limit
    over_budget = budget is not None and weights_16bit > budget
    return over_budget or weights_16bit > _DIRECT_LOAD_SHARE * hw.device_memory_bytes


def load_base_model(
    model_dir: Path,
    spec: FineTuneJobSpec,
    precision: Precision,
    hw: Hardware,
    through_host: bool = False,
    sharded: bool = False,
    *,
    config: Any,
) -> Any:
    """The base model in the training precision (or quantized for QLoRA).

    Weights are kept in the compute dtype (bf16/fp16) on GPUs: the frozen base doesn't need
    fp32 master weights, only the adapter does, and the trainer keeps those in fp32.
    ``through_host``: load into host memory (a Float8 base that will reach the GPU quantized,
    or a model whose streamed layers stay there: ``loads_through_host``).
    ``config``: the model's config (``load_config``), already read by the caller.
    ``sharded``: the model does not fit one GPU and FSDP will shard it across the ranks; only
    rank 0 reads the weights (into host memory), the other ranks build the model with
    uninitialised parameters (``sharding.empty_model``) and receive their shards from rank 0
    when the trainer wraps it (accelerate's ``cpu_ram_efficient_loading``): one copy in host
    memory per job, not one per GPU.
    """
    from transformers import AutoModelForCausalLM

    dtype = TORCH_DTYPES[precision]
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.model.trust_remote_code}
    if spec.method.type == "qlora" and not spec.method.float8_base:
        kwargs["quantization_config"] = quantization_config(spec.method, dtype)
    if hw.cuda and not (through_host or sharded):  # safetensors straight onto this GPU
        kwargs["device_map"] = {"": local_rank()}
    try:
        if sharded and int(os.environ.get("RANK", "0")) != 0:
            from .sharding import empty_model

            log.info("sharded base: not read here; the shards arrive from rank 0")
            return empty_model(config, **kwargs)
        if sharded:
            log.info("sharded base: read into host memory, to be sharded over all ranks")
        return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as err:
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


def build_model(
    model_dir: Path,
    spec: FineTuneJobSpec,
    precision: Precision,
    hw: Hardware,
    mean_example_tokens: float | None = None,
) -> Any:
    """The base model wrapped with a fresh LoRA adapter, ready for the trainer.

    At initialisation LoRA's B matrices are zero, so this model still answers exactly like the
    base model: the "before" generations in metrics.json are taken from it.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    # Attention kernel, fused kernels, checkpointing, micro-batch size and whether the weights
    # are sharded: see acceleration.py. Planned before loading: a sharded model loads apart.
    config = load_config(model_dir, spec)
    plan = acceleration.plan_for_model(config, spec, mean_example_tokens)
    log.info("acceleration: %s", plan.describe())
    for reason in plan.reasons:  # why: what the user can change is named here
        (log.warning if "exceeds" in reason else log.info)("  because %s", reason)
    through_host = loads_through_host(model_dir, spec, hw, config, plan)
    model = load_base_model(
        model_dir, spec, precision, hw, through_host, sharded=plan.fsdp, config=config
    )
    apply_plan.apply_acceleration(model, plan)
    checkpointing = plan.gradient_checkpointing
    bitsandbytes_base = spec.method.type == "qlora" and not spec.method.float8_base
    if bitsandbytes_base and not plan.fused_lora:
        # peft's recipe: the unquantized weights to fp32. A fused 4-bit base keeps them in bf16
        # like 16-bit LoRA does (nf4_base.py).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if checkpointing:
        apply_plan.apply_gradient_checkpointing(model, plan)  # only the layers memory needs
    model.config.use_cache = False
    try:
        model = get_peft_model(model, lora_config(spec.method.lora))
    except ValueError as err:
        raise InvalidInput(
            f"spec.method.lora.targetModules: {err}. Use all-linear, or names of linear layers "
            "of this model (e.g. q_proj, v_proj)."
        ) from None
    if spec.method.float8_base:
        # After get_peft_model: peft gives a new adapter its base weight's dtype.
        from .float8_base import quantize_base_linears

        device = torch.device("cuda", local_rank()) if hw.cuda else None
        count = quantize_base_linears(model, device=device)
        log.info(
            "float8 base: %d linears stored as e4m3%s",
            count,
            " (quantized on their way from host memory)" if through_host else "",
        )
        if through_host and device is not None:
            model.to(device)  # the rest follows the quantized linears: embeddings, norms, adapter
        if device is not None:
            torch.cuda.empty_cache()  # give the 16-bit weights' blocks back
    if plan.fused_lora:
        from .lora_fused import fuse_lora_linears

        log.info("fused LoRA forward on %d linears", fuse_lora_linears(model))
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "model: %s, %.1fM parameters, adapter %.2fM trainable (%.2f%%), %s%s",
        type(model.get_base_model()).__name__,
        total / 1e6,
        trainable / 1e6,
        100 * trainable / max(total, 1),
        precision,
        ", gradient checkpointing" if checkpointing else "",
    )
    if plan.streamed_layers and hw.cuda:
        from .weight_streaming import stream_frozen_weights

        streamer = stream_frozen_weights(model, plan, torch.device("cuda", local_rank()))
        log.info(
            "weight streaming: the frozen weights of %d recomputed layers wait in host memory "
            "(%.1f GiB pinned) and reach the GPU one layer ahead of use",
            len(streamer.order),
            streamer.host_bytes / 2**30,
        )
    # Checkpointing is already set per layer; the Trainer would re-enable it on every layer.
    model.finetune_gradient_checkpointing = False
    model.finetune_acceleration = plan
    return model

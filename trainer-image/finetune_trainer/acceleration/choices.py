"""The plan's choices that need no memory estimate: precision, optimizer, attention kernel,
fused kernels and how the base model's weights are stored.

Each "auto" rule of the spec lives here once (:func:`resolve_precision`,
:func:`choose_optimizer`); :func:`plan_inputs` reduces the spec, the model's shape and the
device to :class:`PlanInputs`, what the micro-step search (search.py), the reasons (reasons.py)
and the plan (plan.py) all read, so they cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from finetune_api.spec import Method, Training

from finetune_trainer.acceleration import cost, nf4_base, recompute
from finetune_trainer.acceleration.device import DeviceInfo
from finetune_trainer.acceleration.shape import ModelShape
from finetune_trainer.errors import UnsupportedHardware

AttentionKind = Literal["ftj_varlen", "sdpa", "eager"]
Precision = Literal["bf16", "fp16", "fp32"]
DtypeName = Literal["bfloat16", "float16", "float32"]
DTYPE_NAMES: dict[Precision, DtypeName] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

_LIGER_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"})


def resolve_precision(requested: Precision | Literal["auto"], device: DeviceInfo) -> Precision:
    """``spec.training.precision`` → the precision actually used.

    auto: bf16 where the GPU supports it (no loss scaling needed), else fp16 on older GPUs,
    fp32 on CPUs (CPU half precision is slow and numerically fragile for training).
    """
    if requested == "auto":
        if device.cuda:
            return "bf16" if device.bf16 else "fp16"
        return "fp32"
    if requested == "fp16" and not device.cuda:
        raise UnsupportedHardware(
            "spec.training.precision: fp16 needs a GPU (mixed precision with loss scaling); "
            "this machine has none. Use precision: auto or fp32."
        )
    if requested == "bf16" and device.cuda and not device.bf16:
        raise UnsupportedHardware(
            "spec.training.precision: bf16 is not supported by this GPU (it needs Ampere or "
            "newer). Use precision: auto or fp16."
        )
    return requested


def choose_optimizer(setting: str, device: DeviceInfo) -> str:
    """``spec.training.optimizer`` → a transformers ``optim`` name (auto: fused AdamW on GPUs)."""
    if setting == "auto":
        return "adamw_torch_fused" if device.cuda else "adamw_torch"
    return setting


def liger_available() -> bool:
    """Whether liger-kernel can be imported (GPU images carry it; CPU installs need not)."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class PlanInputs:
    """The spec, model and device reduced to what the planner's later steps read: every
    choice that does not depend on memory (dtype, kernels, the base's bits, the budget, the
    micro-step candidates), made once so the search, the step-time model and the plan agree."""

    shape: ModelShape
    device: DeviceInfo
    on_gpu: bool
    packing: bool
    cutoff: int
    batch_size: int
    accumulation: int
    mean_tokens: float  # tokens per example, within [1, cutoff]
    precision: Precision
    attn: AttentionKind
    compile_layers: bool
    liger: bool
    weight_bits: int
    lora_r: int
    targets: tuple[str, ...]
    float8: bool
    fused: bool
    # The frozen base's forward GEMMs run on FP8 tensor cores: always for a Float8 base on
    # such a GPU; for a 16-bit base under precision auto, its weights quantized per call
    # (``float8_base.linear_16bit``: the weights themselves stay 16-bit).
    fp8_forward: bool
    # A 16-bit base's input-gradient GEMMs run on FP8 tensor cores too (_fp8_backward).
    fp8_backward: bool
    memory_budget_bytes: int
    mode: str  # gradient checkpointing: auto, always or never
    # Examples per micro-step to try (largest first), and the most worth trying
    # (``cost.MAX_MICRO_TOKENS``; the last candidate is tried regardless).
    candidates: list[int]
    max_micro_examples: int
    # A recomputed llama-style layer skips its down projection (recompute.py).
    skips_down: bool

    @property
    def dtype(self) -> DtypeName:
        return DTYPE_NAMES[self.precision]

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def layers(self) -> int:
        return self.shape.num_layers

    @property
    def layer_bytes(self) -> int:
        """One decoder layer's frozen weights: what streaming it takes off the GPU."""
        return self.shape.layer_params * self.weight_bits // 8

    @property
    def examples_per_step(self) -> int:
        """Fixed by the spec (batch x accumulation); the plan only chooses how many micro-steps
        carry them."""
        return self.batch_size * self.accumulation

    @property
    def host_room(self) -> int:
        """Host memory the streamed weights may pin."""
        return int(self.device.host_memory_bytes * cost.HOST_STREAM_SHARE)

    @property
    def host_link(self) -> float:
        """Bytes per second a streamed layer's copy crosses the host link at."""
        return cost.host_link_bytes_per_s(self.device.compute_capability)

    def micro_step_tokens(self, micro_examples: int) -> int:
        """Tokens of a micro-step as the memory estimate counts them (rounded up)."""
        if self.packing:
            return int(math.ceil(micro_examples * self.mean_tokens))
        return micro_examples * self.cutoff

    def estimated_bytes(
        self, micro_examples: int, ckpt_layers: int, ranks: int = 1, streamed: int = 0
    ) -> int:
        """``cost.estimate_memory_bytes`` for this plan's model, adapter and kernels: the one
        memory cost the search, the fallback and the plan's estimate all use."""
        return cost.estimate_memory_bytes(
            self.shape,
            micro_batch_tokens=self.micro_step_tokens(micro_examples),
            checkpointed_layers=ckpt_layers,
            weight_bits=self.weight_bits,
            lora_r=self.lora_r,
            lora_targets=self.targets,
            liger=self.liger,
            dtype_bytes=self.dtype_bytes,
            fused_lora=self.fused,
            float8_base=self.float8,
            fp8_forward=self.fp8_forward,
            shard_ranks=ranks,
            streamed_layers=streamed,
        )

    def step_time_model(self) -> cost.StepTimeModel:
        """The device's speed for this model, as the search trades options against it."""
        device, shape = self.device, self.shape
        # The down projection's share of a layer's GEMM work: a recomputed layer without it
        # repeats less of its forward, and its input gradient is the one FP8 backward speeds.
        down_share = shape.hidden_size * shape.intermediate_size / shape.layer_params
        recompute_work = 1.0 - (down_share if self.skips_down else 0.0)
        return cost.StepTimeModel(
            layers=self.layers,
            tokens_per_example=self.mean_tokens if self.packing else self.cutoff,
            examples_per_step=self.examples_per_step,
            matmul_params=shape.matmul_params,
            layer_bytes=self.layer_bytes,
            host_link=self.host_link,
            matmul_rate=cost.matmul_flops_per_s(device.compute_capability, device.sm_count),
            fp8_forward=self.fp8_forward,
            fp8_backward_share=down_share if self.fp8_backward else 0.0,
            recompute_work=recompute_work,
        )


def plan_inputs(
    training: Training,
    method: Method,
    shape: ModelShape,
    device: DeviceInfo,
    *,
    mean_example_tokens: float | None,
    liger_available: bool,
    memory_budget_bytes: int | None,
    torch_compile: bool,
    fused_lora: bool,
    fused_nf4: bool,
    recompute_skip: bool,
    micro_examples: int | None,
    micro_cap: int | None = None,
    fp8_compute: bool = True,
    fp8_16bit: bool = False,
    fp8_backward_16bit: bool = False,
) -> tuple[PlanInputs, list[str]]:
    """Read the spec and settle what needs no memory estimate, with the reasons for the
    kernels chosen (they come first in the plan's reasons). ``micro_cap``: at most this many
    examples per micro-step (a re-plan after an out-of-memory error, replan.py)."""
    on_gpu = device.cuda
    packing, cutoff = training.packing, training.cutoff_length
    batch_size, accumulation = training.batch_size, training.gradient_accumulation_steps
    mean_tokens = float(mean_example_tokens or cutoff / 2)
    mean_tokens = max(1.0, min(mean_tokens, float(cutoff)))
    precision = resolve_precision(training.precision, device)
    attn, reasons = _attention(packing, device, precision)
    compile_layers, liger, why = _fused_kernels(shape, device, torch_compile, liger_available)
    reasons += why
    weight_bits, float8, fused = _base(method, precision, fused_lora, fused_nf4)
    fp8_forward = _fp8_forward(
        device, fp8_compute, float8, fp8_16bit and fused, weight_bits, training.precision,
        precision,
    )  # fmt: skip
    # A 16-bit base's down projections' input gradients follow its forward onto FP8 tensor
    # cores when asked (lora_fused.fuse_lora_linears says why only those); a Float8 base has
    # its own ablation (FTJ_FP8_BACKWARD).
    fp8_backward = fp8_forward and not float8 and fp8_backward_16bit
    examples_per_step = batch_size * accumulation
    if memory_budget_bytes is None:
        memory_budget_bytes = int(device.total_memory_bytes * cost.MEMORY_SHARE) if on_gpu else 0
    # Candidate micro-batch sizes: divisors of the examples per optimizer step, largest first.
    candidates = [d for d in range(examples_per_step, 0, -1) if examples_per_step % d == 0]
    if not on_gpu:
        candidates = [batch_size]
    elif micro_examples and examples_per_step % micro_examples == 0:
        candidates = [micro_examples]
    if micro_cap is not None:
        # Divisors only, so the examples per optimizer step (the maths) stay the same; a
        # single candidate (the CPU's spec batch, a pinned micro-step) gives way to the largest
        # divisor under the cap.
        top = min(candidates[0], micro_cap)
        under = [d for d in range(top, 0, -1) if examples_per_step % d == 0]
        candidates = under if len(candidates) > 1 else under[:1]
    max_micro_examples = max(1, int(cost.MAX_MICRO_TOKENS // (mean_tokens if packing else cutoff)))
    targets = tuple(method.lora.target_modules)
    skips_down = (
        fused
        and not compile_layers
        and recompute_skip
        and recompute.skips_down_projection(shape.model_type)
        and bool({"all-linear", "down_proj"} & set(targets))
    )
    inputs = PlanInputs(
        shape=shape,
        device=device,
        on_gpu=on_gpu,
        packing=packing,
        cutoff=cutoff,
        batch_size=batch_size,
        accumulation=accumulation,
        mean_tokens=mean_tokens,
        precision=precision,
        attn=attn,
        compile_layers=compile_layers,
        liger=liger,
        weight_bits=weight_bits,
        lora_r=method.lora.r,
        targets=targets,
        float8=float8,
        fused=fused,
        fp8_forward=fp8_forward,
        fp8_backward=fp8_backward,
        memory_budget_bytes=memory_budget_bytes,
        mode=training.gradient_checkpointing,
        candidates=candidates,
        max_micro_examples=max_micro_examples,
        skips_down=skips_down,
    )
    return inputs, reasons


def _attention(
    packing: bool, device: DeviceInfo, precision: Precision
) -> tuple[AttentionKind, list[str]]:
    """The attention kernel, and why: packed rows need per-example borders, which the varlen
    kernel keeps without a dense mask where it runs."""
    # Attention: varlen FlashAttention needs a CUDA GPU (sm80+) and half precision.
    if packing and device.cuda and device.compute_capability >= (8, 0) and precision != "fp32":
        return "ftj_varlen", ["packed rows: FlashAttention varlen with per-example borders"]
    if packing:
        return "sdpa", ["packed rows: SDPA with a dense per-example mask (no varlen kernel here)"]
    return "sdpa", []


def _fused_kernels(
    shape: ModelShape, device: DeviceInfo, torch_compile: bool, liger_available: bool
) -> tuple[bool, bool, list[str]]:
    """Whether the decoder layers are compiled and Liger's kernels are on (``compile_layers``,
    ``liger``), and why: the two exclude each other, and both need a GPU."""
    on_gpu = device.cuda
    compile_layers = bool(torch_compile and on_gpu)
    liger = bool(on_gpu and liger_available and shape.model_type in _LIGER_MODEL_TYPES)
    reasons: list[str] = []
    if compile_layers:
        # Dynamo cannot trace Liger's Triton wrappers (bench/NOTES.md step 21); Inductor
        # generates the same fusions (norms, RoPE, SwiGLU) from the model's own torch code.
        liger = False
        reasons.append("torch.compile: decoder layers compiled (dynamic shapes), no Liger")
    elif on_gpu and not liger:
        reasons.append("liger-kernel unavailable for this model/device: plain kernels")
    return compile_layers, liger, reasons


def _fp8_forward(
    device: DeviceInfo,
    fp8_compute: bool,
    float8: bool,
    asked_16bit: bool,
    weight_bits: int,
    requested: Precision | Literal["auto"],
    precision: Precision,
) -> bool:
    """Whether the frozen base's forward GEMMs run on FP8 tensor cores (compute capability
    8.9+: Ada, Hopper and newer; ``FTJ_FP8_COMPUTE=0`` turns it off).

    A Float8 base always does (its weights are e4m3 already). A 16-bit base does too
    (``asked_16bit``: ``FTJ_FP8_FORWARD_16BIT``, default on, with the fused LoRA forward, which
    owns the base GEMM) under ``precision: auto`` in bf16: the weights stay bf16 and are
    quantized per output channel for each forward GEMM, the input per token, and every gradient
    is computed in bf16 against the bf16 weights. On by default since session 17: on an H100 it
    was faster in four of five same-call pairs (mean +6%), and tests/gpu/test_fp8_forward_gpu.py
    holds its loss curve inside a data draw's (gap 0.054 vs 0.088). ``precision: bf16`` (asked,
    not auto) or ``FTJ_FP8_FORWARD_16BIT=0`` keeps every GEMM in bf16."""
    if not (fp8_compute and device.cuda and device.compute_capability >= (8, 9)):
        return False
    if float8:
        return True
    return asked_16bit and weight_bits == 16 and requested == "auto" and precision == "bf16"


def _base(
    method: Method, precision: Precision, fused_lora: bool, fused_nf4: bool
) -> tuple[int, bool, bool]:
    """The base's bits per weight, whether it is Float8 and whether the fused LoRA forward
    runs: what the memory estimate needs of the method beyond the adapter's settings."""
    weight_bits = 16
    if method.type == "qlora":
        weight_bits = method.quantization.bits if method.quantization else 4
    if weight_bits == 16 and precision == "fp32":
        weight_bits = 32
    # A Float8 base (QLoRA 8 bits in format float8) is not bitsandbytes: the fused LoRA forward
    # drives its GEMMs, and nothing is cast to fp32.
    float8 = method.float8_base
    # bitsandbytes 8-bit bases keep peft's forward (their base layers are not plain
    # nn.Linear); 4-bit ones in bf16 take the fused forward (nf4_base.py).
    nf4_fused = fused_nf4 and nf4_base.uses_fused_forward(weight_bits, DTYPE_NAMES[precision])
    fusable_base = weight_bits >= 16 or float8 or nf4_fused
    fused = bool(fused_lora and fusable_base and not method.lora.use_dora)
    return weight_bits, float8, fused

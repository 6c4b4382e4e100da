"""The acceleration plan: every decision about how a run is made fast, made once, before any
weight is loaded.

``plan_acceleration`` is a pure function of the spec's ``training``/``method`` sections, the
model's shape and the device: precision, optimizer, attention kernel, fused kernels, how many
examples each micro-step carries, which decoder layers recompute their activations or stream
their weights from host memory, whether the weights are sharded and whether they load through
host memory. It imports nothing heavy, so it is planned and unit-tested on CPUs.
``plan_for_model`` makes the plan a run uses, from the model's config, the spec, the device
and the tuning switches (switches.py). The package docstring says why these choices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from finetune_api.spec import FineTuneJobSpec, Method, Resources, Training, quantity_value

from finetune_trainer import switches as trainer_switches
from finetune_trainer.acceleration import choices, reasons, search
from finetune_trainer.acceleration.choices import (
    DTYPE_NAMES,
    AttentionKind,
    DtypeName,
    Precision,
)
from finetune_trainer.acceleration.cost import MEMORY_SHARE, GiB
from finetune_trainer.acceleration.device import DeviceInfo
from finetune_trainer.acceleration.shape import ModelShape

# A Float8 base is loaded straight onto the GPU in 16 bits and quantized there when the 16-bit
# weights take at most this share of the memory the plan may use; above it the 16-bit weights
# are read into host memory and go to the GPU one linear at a time, already quantized (a 14B
# on a 24 GB card: 28 GB of bf16 weights would not load, 14 GB of e4m3 ones train). A plan
# that streams weights from host memory loads there above this share of the card.
DIRECT_LOAD_SHARE = 0.6


@dataclass(frozen=True)
class AccelerationPlan:
    """What ``apply_acceleration`` and the trainer's arguments will do, and why."""

    attn_implementation: AttentionKind
    liger: bool
    gradient_checkpointing: bool
    checkpointed_layers: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    micro_batch_tokens: int
    optimizer: str  # a transformers ``optim`` name
    precision: Precision
    torch_compile: bool
    estimated_peak_bytes: int
    memory_budget_bytes: int
    reasons: tuple[str, ...] = field(default_factory=tuple)
    # QLoRA 8-bit: the int8 base layers compute in ``dtype`` rather than the fp32 that
    # prepare_model_for_kbit_training leaves the activations in (module docstring).
    int8_half_compute: bool = False
    # Plain LoRA linears run as one autograd function keeping no dropout copies (lora_fused.py).
    fused_lora: bool = False
    # QLoRA 8 bits in format float8: the frozen linears are e4m3 (float8_base.py).
    float8_base: bool = False
    # The frozen base's forward GEMMs run on FP8 tensor cores (choices._fp8_forward); for a
    # 16-bit base its weights stay 16-bit and are quantized per GEMM.
    fp8_forward: bool = False
    # A 16-bit base's input-gradient GEMMs run on FP8 tensor cores too (gradients quantized
    # per token, weights per input channel: float8_base.grad_input_16bit).
    fp8_backward: bool = False
    # Base weights sharded with FSDP2 over all ranks (otherwise every rank holds the whole
    # model and DDP all-reduces the adapter's gradients). ``FTJ_SHARD_WEIGHTS=1`` forces it,
    # even on one rank (how the path is tested on a single GPU).
    fsdp: bool = False
    # The planner's prediction for one optimizer step on this device (0: CPUs, not predicted).
    predicted_step_s: float = 0.0
    # Recomputed decoder layers whose frozen weights stay in pinned host memory and are copied
    # to the GPU just before each use (weight_streaming.py); 0: every weight stays on the GPU.
    streamed_layers: int = 0
    # The 16-bit weights are read into host memory, not straight onto the GPU
    # (``loads_through_host``).
    loads_through_host: bool = False
    # The device the plan was made for.
    device: DeviceInfo = field(default_factory=DeviceInfo)

    @property
    def dtype(self) -> DtypeName:
        """The training dtype, by torch's name."""
        return DTYPE_NAMES[self.precision]

    @property
    def estimated_peak_gib(self) -> float:
        return self.estimated_peak_bytes / GiB

    def describe(self) -> str:
        """One log line for the run's start."""
        return (
            f"attention={self.attn_implementation} liger={self.liger} "
            f"checkpointing={self.checkpointed_layers if self.gradient_checkpointing else 0}"
            " layers "
            f"micro_batch={self.per_device_batch_size}x~{self.micro_batch_tokens} tokens "
            f"accumulation={self.gradient_accumulation_steps} optimizer={self.optimizer} "
            f"dtype={self.dtype} compile={self.torch_compile} "
            + (f"int8_compute={self.dtype} " if self.int8_half_compute else "")
            + f"fused_lora={self.fused_lora}"
            + (" base=float8" if self.float8_base else "")
            + (" fp8_forward=True" if self.fp8_forward else "")
            + (" fp8_backward=True" if self.fp8_backward else "")
            + (" fsdp=sharded" if self.fsdp else "")
            + (f" streamed={self.streamed_layers} layers" if self.streamed_layers else "")
            + (
                f" estimated_peak={self.estimated_peak_gib:.1f}GiB"
                f" of {self.memory_budget_bytes / GiB:.1f}GiB"
                if self.memory_budget_bytes  # CPUs: no device memory to plan for
                else ""
            )
        )


def plan_acceleration(
    training: Training,
    method: Method,
    shape: ModelShape,
    device: DeviceInfo,
    *,
    mean_example_tokens: float | None = None,
    liger_available: bool = True,
    memory_budget_bytes: int | None = None,
    torch_compile: bool = False,
    int8_half_compute: bool = True,
    fused_lora: bool = True,
    fused_nf4: bool = True,
    recompute_skip: bool = True,
    world_size: int = 1,
    shard_weights: bool | None = None,
    micro_examples: int | None = None,
    stream_weights: bool = True,
    stream_ddp: bool = False,
    micro_cap: int | None = None,
    fp8_compute: bool = True,
    fp8_16bit: bool = False,
    fp8_backward_16bit: bool = False,
) -> AccelerationPlan:
    """Decide how to run: a pure function of the spec, the model's shape and the device.

    ``mean_example_tokens`` is the mean tokenized example length (after truncation); it turns
    "examples per micro-step" into tokens. Without it the plan assumes half of
    ``cutoff_length``. ``memory_budget_bytes``: what the plan may use (None: ``MEMORY_SHARE``
    of the card). ``world_size`` ranks train together. The other keywords are the tuning
    switches of the same names (switches.py): ``torch_compile`` asks for the decoder layers to
    be compiled (GPU only); ``int8_half_compute=False`` leaves 8-bit base layers computing in
    the activations' dtype; ``fused_lora=False`` keeps peft's own LoRA forward, and
    ``fused_nf4=False`` keeps it for 4-bit bases; ``recompute_skip=False`` recomputes whole
    layers; ``shard_weights`` None shards the base weights (FSDP2) only when no unsharded plan
    fits one GPU, True always (where the base can be sharded), False never;
    ``micro_examples`` pins the examples per micro-step (a divisor of the examples per
    optimizer step); ``stream_weights=False`` keeps every weight on the GPU, and
    ``stream_ddp`` lets several DDP ranks stream. ``micro_cap``
    caps the examples per micro-step (a re-plan after an out-of-memory error: replan.py).
    ``fp8_compute=False`` keeps every GEMM out of FP8 tensor cores; ``fp8_16bit`` lets a
    16-bit base's forward GEMMs use them (choices._fp8_forward), and ``fp8_backward_16bit``
    its input-gradient GEMMs too.
    """
    inputs, why = choices.plan_inputs(
        training,
        method,
        shape,
        device,
        mean_example_tokens=mean_example_tokens,
        liger_available=liger_available,
        memory_budget_bytes=memory_budget_bytes,
        torch_compile=torch_compile,
        fused_lora=fused_lora,
        fused_nf4=fused_nf4,
        recompute_skip=recompute_skip,
        micro_examples=micro_examples,
        micro_cap=micro_cap,
        fp8_compute=fp8_compute,
        fp8_16bit=fp8_16bit,
        fp8_backward_16bit=fp8_backward_16bit,
    )
    step_time = inputs.step_time_model()
    requested = search.requested_sharding(inputs, world_size, shard_weights)
    streamable = search.streamable(inputs, stream_weights, requested.fsdp, world_size, stream_ddp)
    chosen, sharding, fits = search.choose_micro_step(
        inputs, step_time, requested, streamable, world_size, shard_weights
    )
    why += reasons.fit_reasons(inputs, step_time, chosen, sharding, fits, world_size, shard_weights)
    why += reasons.sharding_reasons(inputs, sharding, shard_weights)
    micro, ckpt_layers, streamed = chosen
    # Floored here; the memory estimate rounds a micro-step's tokens up.
    micro_tokens = int(micro * inputs.mean_tokens) if inputs.packing else micro * inputs.cutoff
    if inputs.on_gpu:
        why += reasons.micro_step_reasons(inputs, chosen, sharding)
    half_int8 = bool(
        int8_half_compute
        and inputs.weight_bits == 8
        and not inputs.float8
        and inputs.precision != "fp32"
    )
    why += reasons.base_compute_reasons(inputs, half_int8)
    return AccelerationPlan(
        attn_implementation=inputs.attn,
        liger=inputs.liger,
        gradient_checkpointing=ckpt_layers > 0,
        checkpointed_layers=ckpt_layers,
        per_device_batch_size=micro,
        gradient_accumulation_steps=inputs.examples_per_step // micro,
        micro_batch_tokens=micro_tokens,
        optimizer=choices.choose_optimizer(training.optimizer, device),
        precision=inputs.precision,
        torch_compile=inputs.compile_layers,
        estimated_peak_bytes=(
            inputs.estimated_bytes(micro, ckpt_layers, sharding.ranks, streamed)
            if inputs.on_gpu
            else 0
        ),
        memory_budget_bytes=inputs.memory_budget_bytes,
        reasons=tuple(why),
        int8_half_compute=half_int8,
        fused_lora=inputs.fused,
        float8_base=inputs.float8,
        fp8_forward=inputs.fp8_forward,
        fp8_backward=inputs.fp8_backward,
        fsdp=sharding.fsdp,
        predicted_step_s=(
            round(step_time.seconds(micro, ckpt_layers, streamed), 3) if inputs.on_gpu else 0.0
        ),
        streamed_layers=streamed,
        loads_through_host=loads_through_host(
            shape,
            device,
            float8_base=inputs.float8,
            streamed_layers=streamed,
            budget_bytes=memory_budget_bytes,
        ),
        device=device,
    )


def loads_through_host(
    shape: ModelShape,
    device: DeviceInfo,
    *,
    float8_base: bool,
    streamed_layers: int,
    budget_bytes: int | None,
) -> bool:
    """Whether the 16-bit weights are read into host memory rather than straight onto the GPU
    (``DIRECT_LOAD_SHARE``): a Float8 base above that share of the memory the plan may use
    (quantized on its way), or a plan that streams weights (weight_streaming.py) above that
    share of the card or above the memory budget (the streamed layers' weights leave the GPU
    after loading otherwise, and until then a GPU shared under that budget would hold all of
    them). ``budget_bytes``: the budget given (the spec's or the switch's), None without one."""
    card = device.total_memory_bytes
    if not ((float8_base or streamed_layers) and device.cuda and card):
        return False
    weights_16bit = shape.total_params * 2
    if float8_base:
        limit = budget_bytes or int(card * MEMORY_SHARE)
        return weights_16bit > DIRECT_LOAD_SHARE * limit
    over_budget = budget_bytes is not None and weights_16bit > budget_bytes
    return over_budget or weights_16bit > DIRECT_LOAD_SHARE * card


def memory_budget_bytes(
    resources: Resources, switches: trainer_switches.TrainerSwitches
) -> int | None:
    """The GPU memory the plan may use: ``FTJ_MEMORY_BUDGET_GIB`` (the bench's override), else
    ``spec.resources.gpuMemoryBudget``, else ``None`` (``MEMORY_SHARE`` of the card)."""
    if switches.memory_budget_gib is not None:
        return int(switches.memory_budget_gib * GiB)
    budget = resources.gpu_memory_budget
    return None if budget is None else int(quantity_value(budget))


def plan_for_model(
    model_config: object,
    spec: FineTuneJobSpec,
    device: DeviceInfo,
    *,
    mean_example_tokens: float | None = None,
    switches: trainer_switches.TrainerSwitches | None = None,
    memory_budget: int | None = None,
    micro_cap: int | None = None,
) -> AccelerationPlan:
    """The plan for a model (its transformers config) and a ``FineTuneJobSpec`` on ``device``,
    made before the weights are loaded (a sharded model loads differently), under the tuning
    switches in force (``switches.active()`` unless given) and ``WORLD_SIZE`` ranks.

    ``spec.resources.gpuMemoryBudget`` (or ``FTJ_MEMORY_BUDGET_GIB``) caps the memory the plan
    may use (a shared or time-sliced GPU, or proving that a run fits a smaller card).
    ``memory_budget`` (bytes) and ``micro_cap`` narrow a re-plan after an out-of-memory error
    (replan.py); the budget given replaces both.
    """
    on = switches or trainer_switches.active()
    return plan_acceleration(
        spec.training,
        spec.method,
        ModelShape.from_config(model_config),
        device,
        mean_example_tokens=mean_example_tokens,
        liger_available=on.liger and choices.liger_available(),
        memory_budget_bytes=(
            memory_budget if memory_budget is not None else memory_budget_bytes(spec.resources, on)
        ),
        torch_compile=on.torch_compile,
        int8_half_compute=on.int8_half_compute,
        fused_lora=on.fused_lora,
        fused_nf4=on.fused_nf4,
        recompute_skip=on.recompute_skip,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        shard_weights=on.shard_weights,
        micro_examples=on.micro_examples,
        stream_weights=on.stream_weights,
        stream_ddp=on.stream_weights_ddp,
        micro_cap=micro_cap,
        fp8_compute=on.fp8_compute,
        fp8_16bit=on.fp8_forward_16bit,
        fp8_backward_16bit=on.fp8_backward_16bit,
    )

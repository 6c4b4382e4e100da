"""How a training run is made fast: the acceleration plan.

The plan is a pure function of the spec's ``training``/``method`` sections, the model's shape and
the device (``plan_acceleration``): which attention kernel, whether fused kernels (Liger) are on,
whether and how many decoder layers recompute their activations (gradient checkpointing), how
many tokens go into one micro-step, which optimizer. It imports nothing heavy, so it is planned
and unit-tested on CPUs. ``apply_plan.apply_acceleration`` then changes a loaded model
accordingly.

Why these choices (measurements in ``bench/NOTES.md``):

* Padding-free packing + document-masked attention. Packed rows carry ``position_ids`` that
  restart at every example. The ``ftj_varlen`` attention turns those into cumulative sequence
  lengths and calls PyTorch's own FlashAttention-2 varlen kernels (varlen_attention.py), so
  attention costs what each example costs alone and never crosses example borders, with no
  dense (T x T) mask and no extra package.
* Fused kernels: Liger's RMSNorm, SwiGLU and RoPE (fewer saved activations, fewer launches)
  where liger-kernel is installed; the LM head + cross-entropy is already chunked by TRL's fused
  LM head, so the (tokens x vocab) logits never exist.
* Micro-step size and gradient checkpointing ``auto``, chosen together: for each micro-step
  size, the fewest recomputed decoder layers that fit the memory budget (none on a large card),
  then the size with the least predicted step time. Recomputation costs a third more matrix
  work per checkpointed layer; a micro-step too small to keep the GPU busier than the host
  (~10 ms of launches and Python per layer) runs at the host's pace. On an 80 GB card the 7B's
  step runs as two micro-steps without recomputation rather than one with 8 layers recomputed.
  Gradient accumulation is folded into the micro-step where that is fastest; the tokens per
  optimizer step (and so the maths) stay the same.
* QLoRA 8-bit: ``prepare_model_for_kbit_training`` leaves the residual stream in fp32, and
  bitsandbytes' int8 matmul computes its input gradient in its input's dtype, so without help
  the backward pass runs fp32 GEMMs (no tensor cores). The 8-bit base layers take their input
  in the training dtype instead (as ``Linear4bit``'s ``compute_dtype`` does for 4 bits) and give
  their output back in the caller's dtype (``int8_half_compute``).
* QLoRA 4-bit in bf16 (``nf4_base.py``): the unquantized weights stay in bf16 instead of
  peft's fp32 recipe, and the LoRA layers take the fused forward below, each 4-bit weight
  dequantized per GEMM (1.81x on an 8B under a 24 GB card's plan, bench/NOTES.md step 34).
* Fused LoRA linears (``lora_fused.py``): peft's forward keeps a dropped-out copy of the input
  and a mask per adapted linear for the backward; the fused one redraws the mask from a seed,
  and a llama-style MLP recomputes ``silu(gate) * up`` instead of keeping it, so activations
  take ~40% of peft's memory and fewer layers need recomputing.
* Sharded weights (``shard_ranks > 1``): a bf16/fp16 model whose weights, adapter state and
  one example's activations do not fit one GPU trains under FSDP2 when the pod has several
  GPUs: each rank keeps ``1/N`` of the frozen weights and of the adapter's optimizer state and
  all-gathers one decoder layer at a time. A model that fits stays under DDP, which moves only
  the adapter's gradients (docs/multi-gpu.md).
* Frozen weights streamed from host memory (``streamed_layers``, weight_streaming.py): under a
  memory budget, on one GPU, the 16-bit weights of some recomputed layers stay in pinned host
  memory and are copied in one layer ahead of use. The planner picks micro-step, recomputed
  and streamed layers together; a copy costs only what the GPU's work does not hide (the 7B
  under 18 GiB: 8.0k -> 11.9k tok/s, bench/NOTES.md step 31).
* ``torch.compile`` of the decoder layers (``torch_compile``, ``FTJ_TORCH_COMPILE=1``): off by
  default. It runs and trains like eager, but measured no faster (the host still launches every
  GEMM) with ~13 GiB more on a 1.5B at 15k tokens, memory the planner does not model
  (bench/NOTES.md step 27).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from finetune_trainer import nf4_base, recompute

GiB = 1024**3

AttentionKind = Literal["ftj_varlen", "sdpa", "eager"]

# A decoder layer's saved activations per token, in units of the model's dtype size, measured as
# "hidden"-sized and "intermediate"-sized tensors (see bench/NOTES.md for the accounting):
# without checkpointing a LoRA layer keeps its norm inputs, q/k/v/o, the attention output and
# log-sum-exp, the MLP's gate/up/act outputs and, with peft's own LoRA forward, each LoRA
# dropout's output and mask.
_SAVED_HIDDEN_PER_TOKEN = 18.0  # calibrated on H200, bench/NOTES.md
_SAVED_INTER_PER_TOKEN = 5.0
# With the fused LoRA forward (lora_fused.py) the seven dropout copies and masks per layer are
# gone: six hidden-sized copies + masks and one intermediate-sized copy + mask. Calibrated on
# the H200 (7B, 15k tokens, 0 layers recomputed: 87.5 GiB = ~9.5 hidden + 3 intermediate per
# token and layer), rounded up; bench/NOTES.md step 11.
_FUSED_LORA_HIDDEN_SAVING = 8.0
_FUSED_LORA_INTER_SAVING = 1.0
# A llama-style gated MLP under the fused forward keeps only gate and up (lora_fused.py's
# SwiGLUDownFunction recomputes their product): two intermediate-sized tensors in all.
_FUSED_GATED_MLP_INTER = 2.0
_SILU_GATED_MLP_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
# With Liger's SwiGLU the activation is recomputed in the backward pass: one intermediate less.
_LIGER_INTER_SAVING = 1.0
# bitsandbytes' 8-bit matmul keeps each int8 linear's input on its autograd context as a plain
# attribute (``ctx.tensors``), outside checkpointing's reach: every layer's linear inputs stay
# alive until the backward, checkpointed or not. Bytes per input element, calibrated on H200
# (llama-3.1-8b, 3.85k tokens per micro-step, 31 of 32 layers checkpointed: 39.4 GiB measured
# against 20.3 GiB planned without this term; ~4.3 bytes/element, rounded up; 5.5 since the
# workspace and LM-head terms were tightened, so the estimate stays above that measurement).
_INT8_KEPT_BYTES_PER_ELEMENT = 5.5
# Workspace the allocator needs beyond the live tensors (fragmentation, cuBLAS/NCCL buffers).
# 2 GiB overestimated the 7B all-layers-recomputed run by 1.2 GiB (16.6 measured, 17.8 planned;
# bench/NOTES.md step 11); the 85% budget fraction keeps the headroom for spikes.
_WORKSPACE_BYTES = 1 * GiB
# Fraction of device memory the plan may use; the rest is headroom for fragmentation spikes.
_DEFAULT_MEMORY_FRACTION = 0.85
# Largest micro-step in tokens: past this, throughput no longer rises (matrices are large
# enough at a few thousand rows) while peak memory does.
_MAX_MICRO_TOKENS = 32_768
# The host's side of a micro-step, per decoder layer: kernel launches and the Python of the
# autograd functions, forward and backward. The GPU hides it only while its own work for the
# micro-step takes longer. Measured on the H200's host (bench/NOTES.md step 25): 7B micro-steps
# of 1.5k tokens took 0.29 s (16-bit) and 0.26 s (Float8) each with the GPU 40% busy: ~10 ms
# per layer, the same op count for any layer width. A recomputed layer runs its forward twice:
# 40% more host work.
_HOST_S_PER_LAYER = 0.010
_HOST_RECOMPUTE_SHARE = 0.4
# Exposed at every micro-step even when the GPU bounds it (splitting a 15k-token 7B step in 2
# and 4 added ~0.06 s per micro-step): per layer.
_MICRO_STEP_S_PER_LAYER = 0.0021
# A plan that splits the step into more micro-steps than the largest that fits must leave this
# much of the budget free: the memory model under-estimates small micro-steps without
# recomputation (7B, 1.5k tokens, Float8: 16.5 GiB estimated, 19.7 measured; bf16 at 3.8k
# and 7.5k tokens: 1.6-1.7 GiB low), while it over-estimates the large ones it was fitted on.
_SPLIT_STEP_MARGIN_BYTES = int(3.5 * GiB)
# Dense bf16 matmul rate per SM (TFLOP/s) by compute capability, times the share the trainer
# reaches (0.45: the 7B's one-micro-step bf16 rate on the H200 fits 440 TFLOP/s of 4N work).
_BF16_TFLOPS_PER_SM = {(10, 0): 15.2, (9, 0): 7.5, (8, 0): 2.9, (8, 9): 2.3, (8, 6): 1.7}
_REACHED_SHARE = 0.45
# Host-to-GPU copy rate of pinned memory (weight_streaming.py): PCIe Gen5 x16 on Hopper and
# Blackwell boards, Gen4 before; a bit under what a lone copy reaches, since the copies share
# the link with the step's other traffic.
_HOST_LINK_BYTES_PER_S = {(10, 0): 45e9, (9, 0): 45e9}
_HOST_LINK_DEFAULT_BYTES_PER_S = 22e9
# Share of the pod's host memory the streamed weights may pin: the rest holds the data, the
# Python process and, for a model larger than the GPU, its load through host memory.
_HOST_STREAM_SHARE = 0.75
# The host link's speed is the least certain input of a prediction (it varies by board and by
# what else crosses the link): a plan that streams must be predicted this much faster.
_STREAMING_MARGIN = 0.03
# A Float8 base's forward GEMMs on FP8 tensor cores, quantization included, against bf16
# (bench/NOTES.md step 16: 0.88 ms against 1.39 ms for 8192 x 3584 @ 3584 x 18944).
_FP8_FORWARD_SPEEDUP = 1.58


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory and FLOPs depend on."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    model_type: str = "llama"

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read the shape from a transformers config (or any object with its attribute names)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        return cls(
            hidden_size=int(text.hidden_size),
            intermediate_size=int(text.intermediate_size),
            num_layers=int(text.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            vocab_size=int(text.vocab_size),
            tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
            model_type=str(getattr(text, "model_type", "llama")),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (attention + gated MLP, norms ignored)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        return h * h * 2 + h * kv * 2 + 3 * h * i

    @property
    def total_params(self) -> int:
        """All parameters (embeddings counted once when tied)."""
        embed = self.vocab_size * self.hidden_size
        return self.num_layers * self.layer_params + embed * (1 if self.tie_word_embeddings else 2)

    @property
    def matmul_params(self) -> int:
        """N in "4N FLOPs per token": every parameter that takes part in a matrix product
        (the decoder layers and the LM head; the input embedding is a lookup)."""
        return self.num_layers * self.layer_params + self.vocab_size * self.hidden_size

    def lora_params(self, r: int, targets: tuple[str, ...] = ("all-linear",)) -> int:
        """Trainable LoRA parameters for rank ``r`` on the layers' linear modules."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        shapes = {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        names = set(shapes) if "all-linear" in targets else set(targets) & set(shapes)
        per_layer = sum(r * (a + b) for n, (a, b) in shapes.items() if n in names)
        return self.num_layers * per_layer


@dataclass(frozen=True)
class DeviceInfo:
    """The accelerator one rank trains on."""

    type: Literal["cuda", "cpu", "mps", "xpu"] = "cpu"
    name: str = "cpu"
    total_memory_bytes: int = 0
    bf16: bool = False
    compute_capability: tuple[int, int] = (0, 0)
    sm_count: int = 0  # streaming multiprocessors (0: unknown)
    # Host memory this process may use (a pod's memory limit, else the machine's RAM); what
    # frozen weights streamed from host memory may pin. 0: unknown, nothing is streamed.
    host_memory_bytes: int = 0

    @classmethod
    def detect(cls) -> DeviceInfo:
        """The current CUDA device, or the CPU when there is none (torch imported lazily)."""
        try:
            import torch
        except ImportError:  # pragma: no cover - the trainer always has torch
            return cls()
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            return cls(
                type="cuda",
                name=str(props.name),
                total_memory_bytes=int(props.total_memory),
                bf16=bool(torch.cuda.is_bf16_supported()),
                compute_capability=(int(props.major), int(props.minor)),
                sm_count=int(getattr(props, "multi_processor_count", 0)),
                host_memory_bytes=host_memory_bytes(),
            )
        return cls()


def host_memory_bytes() -> int:
    """The memory this process may use: its cgroup's limit (a pod's ``resources.limits.memory``)
    when lower than the machine's RAM, else the RAM; 0 when neither can be read."""
    import os
    from pathlib import Path

    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 0
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            return min(int(text), physical) if physical else int(text)
    return physical


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
    optimizer: str
    dtype: Literal["bfloat16", "float16", "float32"]
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
    # Base weights sharded with FSDP2 over all ranks (otherwise every rank holds the whole
    # model and DDP all-reduces the adapter's gradients). ``FTJ_SHARD_WEIGHTS=1`` forces it,
    # even on one rank (how the path is tested on a single GPU).
    fsdp: bool = False
    # The planner's prediction for one optimizer step on this device (0: CPUs, not predicted).
    predicted_step_s: float = 0.0
    # Recomputed decoder layers whose frozen weights stay in pinned host memory and are copied
    # to the GPU just before each use (weight_streaming.py); 0: every weight stays on the GPU.
    streamed_layers: int = 0

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
            + (" fsdp=sharded" if self.fsdp else "")
            + (f" streamed={self.streamed_layers} layers" if self.streamed_layers else "")
            + (
                f" estimated_peak={self.estimated_peak_gib:.1f}GiB"
                f" of {self.memory_budget_bytes / GiB:.1f}GiB"
                if self.memory_budget_bytes  # CPUs: no device memory to plan for
                else ""
            )
        )


def estimate_memory_bytes(
    shape: ModelShape,
    *,
    micro_batch_tokens: int,
    checkpointed_layers: int,
    weight_bits: int = 16,
    lora_r: int = 16,
    lora_targets: tuple[str, ...] = ("all-linear",),
    liger: bool = True,
    dtype_bytes: int = 2,
    fused_lora: bool = False,
    float8_base: bool = False,
    shard_ranks: int = 1,
    streamed_layers: int = 0,
) -> int:
    """Peak memory of one rank: frozen weights, LoRA state, activations of one micro-step.

    LoRA state: fp32 parameter, gradient and two Adam moments (16 bytes per trainable
    parameter). Activations: a checkpointed layer keeps only its input (one hidden vector per
    token) plus, during its backward, one layer's full activations; a plain layer keeps all
    of them. The LM head is chunked (TRL's fused head), so logits cost a few hundred MiB.
    ``float8_base``: 8-bit weights are e4m3 (float8_base.py), not bitsandbytes int8.
    ``shard_ranks``: FSDP2 over that many ranks keeps 1/N of the weights and of the LoRA state
    per rank, plus the all-gathered layers: the one computing and the one prefetched, and the
    root's embeddings and LM head (gathered for the whole forward and backward).
    ``streamed_layers``: that many layers' frozen weights live in host memory; at most two of
    them are on the GPU at once, the one computing and the one being copied in
    (weight_streaming.py).
    """
    weights = shape.total_params * weight_bits // 8
    # Bytes per unquantized weight and residual-stream element: fp32 under peft's QLoRA recipe.
    upcast = weight_bits < 16 and not float8_base and not (fused_lora and weight_bits == 4)
    unquantized = 4 if upcast else dtype_bytes
    float8_transient = 0
    if float8_base:
        # e4m3 decoder linears (+ an fp32 scale per output channel); embeddings and LM head stay
        # in the training dtype. Transients: the largest input quantized (a dtype-sized product
        # and its e4m3 copy) and the largest weight dequantized for an input gradient.
        embed = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
        weights = shape.num_layers * shape.layer_params + embed * dtype_bytes
        float8_transient = (
            micro_batch_tokens * shape.intermediate_size * (dtype_bytes + 1)
            + shape.hidden_size * shape.intermediate_size * dtype_bytes
        )
    elif weight_bits < 16:
        # Quantized bases keep embeddings and the LM head unquantized, and peft's
        # prepare_model_for_kbit_training casts them to fp32 (not a fused 4-bit base).
        embed = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
        weights = shape.num_layers * shape.layer_params * weight_bits // 8 + embed * unquantized
        weights = int(weights * 1.06)  # quantization constants (NF4 blocks, double quant)
    else:
        weights -= max(0, streamed_layers - 2) * shape.layer_params * weight_bits // 8
    lora = shape.lora_params(lora_r, lora_targets) * 16
    if shard_ranks > 1:
        embed = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
        gathered = (2 * shape.layer_params + embed) * weight_bits // 8
        weights = weights // shard_ranks + gathered
        lora //= shard_ranks
    int8_kept = 0.0
    if weight_bits == 8 and not float8_base:
        # q, k, v, o, gate, up take hidden-sized inputs, down an intermediate-sized one.
        inputs_per_token = 6 * shape.hidden_size + shape.intermediate_size
        int8_kept = (
            micro_batch_tokens * shape.num_layers * inputs_per_token * _INT8_KEPT_BYTES_PER_ELEMENT
        )
    inter_units = _SAVED_INTER_PER_TOKEN - (_LIGER_INTER_SAVING if liger else 0.0)
    hidden_units = _SAVED_HIDDEN_PER_TOKEN
    if fused_lora:
        inter_units -= _FUSED_LORA_INTER_SAVING
        hidden_units -= _FUSED_LORA_HIDDEN_SAVING
        if shape.model_type in _SILU_GATED_MLP_TYPES:
            inter_units = _FUSED_GATED_MLP_INTER
    per_layer_token = (
        hidden_units * shape.hidden_size + inter_units * shape.intermediate_size
    ) * dtype_bytes
    plain_layers = shape.num_layers - checkpointed_layers
    # peft's prepare_model_for_kbit_training keeps the residual stream in fp32, so on quantized
    # bases the layer inputs a checkpoint keeps (and the other hidden vectors) take 4 bytes.
    residual_bytes = unquantized
    activations = micro_batch_tokens * (
        plain_layers * per_layer_token
        + checkpointed_layers * shape.hidden_size * residual_bytes
        + (per_layer_token if checkpointed_layers else 0)
    )
    # Fused LM head (TRL's chunked log-prob): fp32 tiles of 4096 tokens x 32768 vocabulary
    # columns, one in the forward and one in the backward, plus the gathered hidden states.
    head = min(micro_batch_tokens, 4096) * min(shape.vocab_size, 32768) * 4 * 2
    head += micro_batch_tokens * shape.hidden_size * dtype_bytes
    # Embedding output, final norm, hidden-state gradients flowing back (a few hidden vectors).
    misc = micro_batch_tokens * shape.hidden_size * residual_bytes * 6
    return int(
        weights + lora + activations + int8_kept + float8_transient + head + misc + _WORKSPACE_BYTES
    )


def plan_acceleration(
    training: Any,
    method: Any,
    shape: ModelShape,
    device: DeviceInfo,
    *,
    mean_example_tokens: float | None = None,
    liger_available: bool = True,
    memory_fraction: float = _DEFAULT_MEMORY_FRACTION,
    memory_budget_bytes: int | None = None,
    torch_compile: bool = False,
    int8_half_compute: bool = True,
    fused_lora: bool = True,
    world_size: int = 1,
    shard_weights: bool | None = None,
    micro_examples: int | None = None,
    stream_weights: bool = True,
) -> AccelerationPlan:
    """Decide how to run: a pure function of the spec, the model's shape and the device.

    ``training`` and ``method`` are the spec's ``Training`` and ``Method`` models (any object with
    their attribute names works). ``mean_example_tokens`` is the mean tokenized example length
    (after truncation); it turns "examples per micro-step" into tokens. Without it the plan
    assumes half of ``cutoff_length``. ``torch_compile`` asks for the decoder layers to be
    compiled (GPU only); ``int8_half_compute=False`` leaves 8-bit base layers computing in the
    activations' dtype (an ablation, bench/NOTES.md); ``fused_lora=False`` keeps peft's own
    LoRA forward (an ablation). ``world_size`` ranks train together; ``shard_weights`` None
    shards the base weights (FSDP2) only when no unsharded plan fits one GPU, True always
    (where the base can be sharded), False never. ``micro_examples`` pins the examples per
    micro-step (a divisor of the examples per optimizer step; a bench ablation).
    """
    inputs, reasons = _plan_inputs(
        training,
        method,
        shape,
        device,
        mean_example_tokens=mean_example_tokens,
        liger_available=liger_available,
        memory_fraction=memory_fraction,
        memory_budget_bytes=memory_budget_bytes,
        torch_compile=torch_compile,
        fused_lora=fused_lora,
        micro_examples=micro_examples,
    )
    step_time = _StepTimeModel.of(inputs)
    requested = _requested_sharding(inputs, world_size, shard_weights)
    streamable = _streamable(inputs, stream_weights, world_size, requested.fsdp)
    chosen, sharding, why = _choose_micro_step(
        inputs, step_time, requested, streamable, world_size, shard_weights
    )
    reasons += why
    reasons += _sharding_reasons(inputs, sharding, shard_weights)
    micro, ckpt_layers, streamed = chosen
    accumulation_out = inputs.examples_per_step // micro
    # Floored here; the memory estimate rounds a micro-step's tokens up.
    micro_tokens = int(micro * inputs.mean_tokens) if inputs.packing else micro * inputs.cutoff
    if inputs.on_gpu:
        reasons += _micro_step_reasons(inputs, chosen, sharding)

    optimizer = str(getattr(training, "optimizer", "auto"))
    if optimizer == "auto":
        optimizer = "adamw_torch_fused" if inputs.on_gpu else "adamw_torch"
    half_int8 = bool(
        int8_half_compute
        and inputs.weight_bits == 8
        and not inputs.float8
        and inputs.dtype != "float32"
    )
    reasons += _base_compute_reasons(inputs, half_int8)
    return AccelerationPlan(
        attn_implementation=inputs.attn,
        liger=inputs.liger,
        gradient_checkpointing=ckpt_layers > 0,
        checkpointed_layers=ckpt_layers,
        per_device_batch_size=micro,
        gradient_accumulation_steps=accumulation_out,
        micro_batch_tokens=micro_tokens,
        optimizer=optimizer,
        dtype=inputs.dtype,
        torch_compile=inputs.compile_layers,
        estimated_peak_bytes=(
            _estimated_bytes(inputs, micro, ckpt_layers, sharding.ranks, streamed)
            if inputs.on_gpu
            else 0
        ),
        memory_budget_bytes=inputs.memory_budget_bytes,
        reasons=tuple(reasons),
        int8_half_compute=half_int8,
        fused_lora=inputs.fused,
        float8_base=inputs.float8,
        fsdp=sharding.fsdp,
        predicted_step_s=(
            round(step_time.seconds(micro, ckpt_layers, streamed), 3) if inputs.on_gpu else 0.0
        ),
        streamed_layers=streamed,
    )


@dataclass(frozen=True)
class _PlanInputs:
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
    dtype: Literal["bfloat16", "float16", "float32"]
    attn: AttentionKind
    compile_layers: bool
    liger: bool
    weight_bits: int
    lora_r: int
    targets: tuple[str, ...]
    float8: bool
    fused: bool
    memory_budget_bytes: int
    mode: str  # gradient checkpointing: auto, always or never
    # Examples per micro-step to try (largest first), and the most worth trying
    # (``_MAX_MICRO_TOKENS``; the last candidate is tried regardless).
    candidates: list[int]
    max_micro_examples: int

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

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
        return int(self.device.host_memory_bytes * _HOST_STREAM_SHARE)

    @property
    def host_link(self) -> float:
        """Bytes per second a streamed layer's copy crosses the host link at."""
        return _HOST_LINK_BYTES_PER_S.get(
            self.device.compute_capability, _HOST_LINK_DEFAULT_BYTES_PER_S
        )

    def micro_step_tokens(self, micro_examples: int) -> int:
        """Tokens of a micro-step as the memory estimate counts them (rounded up)."""
        if self.packing:
            return int(math.ceil(micro_examples * self.mean_tokens))
        return micro_examples * self.cutoff


def _plan_inputs(
    training: Any,
    method: Any,
    shape: ModelShape,
    device: DeviceInfo,
    *,
    mean_example_tokens: float | None,
    liger_available: bool,
    memory_fraction: float,
    memory_budget_bytes: int | None,
    torch_compile: bool,
    fused_lora: bool,
    micro_examples: int | None,
) -> tuple[_PlanInputs, list[str]]:
    """Read the spec and settle what needs no memory estimate, with the reasons for the
    kernels chosen (they come first in the plan's reasons)."""
    on_gpu = device.type == "cuda"
    packing = bool(getattr(training, "packing", True))
    cutoff = int(getattr(training, "cutoff_length", 2048))
    batch_size = int(getattr(training, "batch_size", 4))
    accumulation = int(getattr(training, "gradient_accumulation_steps", 1))
    mean_tokens = float(mean_example_tokens or cutoff / 2)
    mean_tokens = max(1.0, min(mean_tokens, float(cutoff)))
    dtype = _training_dtype(training, device)
    attn, reasons = _attention(packing, device, dtype)
    compile_layers, liger, why = _fused_kernels(shape, device, torch_compile, liger_available)
    reasons += why
    weight_bits, lora_r, targets, float8, fused = _adapter_and_base(method, dtype, fused_lora)
    examples_per_step = batch_size * accumulation
    if memory_budget_bytes is None:
        memory_budget_bytes = int(device.total_memory_bytes * memory_fraction) if on_gpu else 0
    mode = str(getattr(training, "gradient_checkpointing", "auto"))
    # Candidate micro-batch sizes: divisors of the examples per optimizer step, largest first.
    candidates = [d for d in range(examples_per_step, 0, -1) if examples_per_step % d == 0]
    if not on_gpu:
        candidates = [batch_size]
    elif micro_examples and examples_per_step % micro_examples == 0:
        candidates = [micro_examples]
    max_micro_examples = max(1, int(_MAX_MICRO_TOKENS // (mean_tokens if packing else cutoff)))
    inputs = _PlanInputs(
        shape=shape,
        device=device,
        on_gpu=on_gpu,
        packing=packing,
        cutoff=cutoff,
        batch_size=batch_size,
        accumulation=accumulation,
        mean_tokens=mean_tokens,
        dtype=dtype,
        attn=attn,
        compile_layers=compile_layers,
        liger=liger,
        weight_bits=weight_bits,
        lora_r=lora_r,
        targets=targets,
        float8=float8,
        fused=fused,
        memory_budget_bytes=memory_budget_bytes,
        mode=mode,
        candidates=candidates,
        max_micro_examples=max_micro_examples,
    )
    return inputs, reasons


def _training_dtype(training: Any, device: DeviceInfo) -> Literal["bfloat16", "float16", "float32"]:
    """The spec's precision; ``auto``: bf16 where the GPU has it, else fp16, fp32 on CPUs."""
    on_gpu = device.type == "cuda"
    precision = str(getattr(training, "precision", "auto"))
    dtype: Literal["bfloat16", "float16", "float32"]
    if precision == "auto":
        dtype = "bfloat16" if (on_gpu and device.bf16) else ("float16" if on_gpu else "float32")
    else:
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision]  # type: ignore[assignment]
    return dtype


def _attention(packing: bool, device: DeviceInfo, dtype: str) -> tuple[AttentionKind, list[str]]:
    """The attention kernel, and why: packed rows need per-example borders, which the varlen
    kernel keeps without a dense mask where it runs."""
    # Attention: varlen FlashAttention needs a CUDA GPU (sm80+) and half precision.
    on_gpu = device.type == "cuda"
    if packing and on_gpu and device.compute_capability >= (8, 0) and dtype != "float32":
        return "ftj_varlen", ["packed rows: FlashAttention varlen with per-example borders"]
    if packing:
        return "sdpa", ["packed rows: SDPA with a dense per-example mask (no varlen kernel here)"]
    return "sdpa", []


def _fused_kernels(
    shape: ModelShape, device: DeviceInfo, torch_compile: bool, liger_available: bool
) -> tuple[bool, bool, list[str]]:
    """Whether the decoder layers are compiled and Liger's kernels are on (``compile_layers``,
    ``liger``), and why: the two exclude each other, and both need a GPU."""
    on_gpu = device.type == "cuda"
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


def _adapter_and_base(
    method: Any, dtype: str, fused_lora: bool
) -> tuple[int, int, tuple[str, ...], bool, bool]:
    """The base's bits per weight, the adapter's rank and target modules, whether the base is
    Float8 and whether the fused LoRA forward runs: what the memory estimate needs of the
    method."""
    quant = (
        getattr(method, "quantization", None)
        if getattr(method, "type", "lora") == "qlora"
        else None
    )
    weight_bits = (
        int(getattr(quant, "bits", 4)) if getattr(method, "type", "lora") == "qlora" else 16
    )
    if weight_bits == 16 and dtype == "float32":
        weight_bits = 32
    lora = getattr(method, "lora", None)
    lora_r = int(getattr(lora, "r", 16))
    targets = tuple(getattr(lora, "target_modules", ("all-linear",)))
    use_dora = bool(getattr(lora, "use_dora", False))
    # A Float8 base (QLoRA 8 bits in format float8) is not bitsandbytes: the fused LoRA forward
    # drives its GEMMs, and nothing is cast to fp32.
    float8 = bool(getattr(method, "float8_base", False))
    # bitsandbytes 8-bit bases keep peft's forward (their base layers are not plain
    # nn.Linear); 4-bit ones in bf16 take the fused forward (nf4_base.py).
    fusable_base = weight_bits >= 16 or float8 or nf4_base.uses_fused_forward(weight_bits, dtype)
    fused = bool(fused_lora and fusable_base and not use_dora)
    return weight_bits, lora_r, targets, float8, fused


def _estimated_bytes(
    inputs: _PlanInputs, micro_examples: int, ckpt_layers: int, ranks: int = 1, streamed: int = 0
) -> int:
    """``estimate_memory_bytes`` for this plan's model, adapter and kernels: the one memory
    cost the search, the fallback and the plan's estimate all use."""
    return estimate_memory_bytes(
        inputs.shape,
        micro_batch_tokens=inputs.micro_step_tokens(micro_examples),
        checkpointed_layers=ckpt_layers,
        weight_bits=inputs.weight_bits,
        lora_r=inputs.lora_r,
        lora_targets=inputs.targets,
        liger=inputs.liger,
        dtype_bytes=inputs.dtype_bytes,
        fused_lora=inputs.fused,
        float8_base=inputs.float8,
        shard_ranks=ranks,
        streamed_layers=streamed,
    )


@dataclass(frozen=True)
class _StepTimeModel:
    """The device's speed as the planner models it, so micro-step sizes, recomputation and
    streaming can be traded against each other by predicted time rather than by rule."""

    inputs: _PlanInputs
    matmul_rate: float  # FLOP/s the trainer reaches
    fp8_forward: bool  # a Float8 base's forward runs on FP8 tensor cores
    recompute_work: float  # share of a layer's forward a recomputation repeats

    @classmethod
    def of(cls, inputs: _PlanInputs) -> _StepTimeModel:
        device = inputs.device
        per_sm = _BF16_TFLOPS_PER_SM.get(device.compute_capability, 2.0) * 1e12
        matmul_rate = per_sm * (device.sm_count or 100) * _REACHED_SHARE

        fp8_forward = inputs.float8 and inputs.on_gpu and device.compute_capability >= (8, 9)
        # A recomputed llama-style layer with the fused MLP skips its down projection
        # (recompute.py).
        shape = inputs.shape
        skips_down = (
            inputs.fused
            and not inputs.compile_layers
            and recompute.skips_down_projection(shape.model_type)
            and bool({"all-linear", "down_proj"} & set(inputs.targets))
        )
        recompute_work = 1.0 - (
            shape.hidden_size * shape.intermediate_size / shape.layer_params if skips_down else 0.0
        )
        return cls(inputs, matmul_rate, fp8_forward, recompute_work)

    def seconds(self, micro: int, ckpt_layers: int, streamed: int = 0) -> float:
        """One optimizer step: per micro-step, the longer of the GPU's matrix work (forward 2N
        and input gradients 2N per token, plus 2N per token for the recomputed layers' share;
        a Float8 forward runs faster; a recomputation without its down projection does less)
        and the host's work for it, plus what each micro-step boundary exposes. Streamed
        layers' weights cross the host link once in the forward and once for the backward's
        recomputation; each crossing hides behind that pass's GPU work when it is shorter."""
        inputs = self.inputs
        layers = inputs.layers
        per_example = inputs.mean_tokens if inputs.packing else inputs.cutoff
        recomputed = ckpt_layers / max(1, layers)
        speedup = _FP8_FORWARD_SPEEDUP if self.fp8_forward else 1.0
        first = 2 / speedup
        again = 2 * recomputed * self.recompute_work / speedup
        flops_per_unit = micro * per_example * inputs.shape.matmul_params / self.matmul_rate
        copies = streamed * inputs.layer_bytes / inputs.host_link
        gpu = max(first * flops_per_unit, copies) + max((again + 2) * flops_per_unit, copies)
        host = layers * _HOST_S_PER_LAYER * (1 + _HOST_RECOMPUTE_SHARE * recomputed)
        per_micro_step = max(gpu, host) + layers * _MICRO_STEP_S_PER_LAYER
        return (inputs.examples_per_step // micro) * per_micro_step


@dataclass(frozen=True)
class _Sharding:
    """Whether the base weights are sharded (FSDP2) and over how many ranks."""

    shardable: bool
    fsdp: bool
    ranks: int


def _requested_sharding(
    inputs: _PlanInputs, world_size: int, shard_weights: bool | None
) -> _Sharding:
    """Sharding as asked for (``shard_weights``) where the base allows it; the search may
    still shard a model that does not fit one GPU (``_choose_micro_step``)."""
    # Sharding needs plain 16/32-bit weights: bitsandbytes and e4m3 bases stay whole per rank.
    # Tied input/output embeddings are not sharded on GPUs either: under FSDP2 (torch 2.11) the
    # embedding met a still-sharded weight (TRL's fused LM head reads the tied weight directly);
    # only small models tie them, and those fit one GPU.
    shardable = inputs.weight_bits >= 16 and not (
        inputs.on_gpu and inputs.shape.tie_word_embeddings
    )
    fsdp = bool(shard_weights and shardable)
    return _Sharding(shardable=shardable, fsdp=fsdp, ranks=max(1, world_size) if fsdp else 1)


def _streamable(inputs: _PlanInputs, stream_weights: bool, world_size: int, fsdp: bool) -> bool:
    """Whether frozen weights may stream from host memory (weight_streaming.py): 16-bit bases
    on one CUDA GPU, in eager mode (its hooks are not traced), not under FSDP (which shards
    instead), and only with host memory known to hold them."""
    return bool(
        stream_weights
        and inputs.on_gpu
        and inputs.device.type == "cuda"
        and inputs.weight_bits == 16
        and not inputs.float8
        and not inputs.compile_layers
        and world_size == 1
        and not fsdp
        and inputs.device.host_memory_bytes > 0
    )


def _streamed_needed(
    inputs: _PlanInputs,
    micro: int,
    ckpt_layers: int,
    ranks: int,
    limit: int,
    streamable: bool,
) -> int | None:
    """The fewest streamed layers that bring (micro, ckpt_layers) under ``limit``: 0 when
    it fits as it is, None when even streaming every recomputed layer does not fit."""
    over = _estimated_bytes(inputs, micro, ckpt_layers, ranks) - limit
    if over <= 0:
        return 0
    if not streamable:  # one rank only: never under FSDP's ranks
        return None
    # Each streamed layer past the two on the GPU takes one layer's weights off it.
    layer_bytes = inputs.layer_bytes
    streamed = 2 + -(-over // layer_bytes)
    fits = streamed <= ckpt_layers and streamed * layer_bytes <= inputs.host_room
    return streamed if fits else None


def _search(
    inputs: _PlanInputs, step_time: _StepTimeModel, ranks: int, streamable: bool
) -> tuple[int, int, int] | None:
    """The fitting (micro-step, recomputed layers, streamed layers) predicted fastest.

    For each micro-step size and number of recomputed layers, the fewest layers whose
    weights must stream from host memory to fit; then the triple with the least predicted
    step time: recomputing a layer costs half its forward-and-input-gradient matrix work
    again, a streamed layer's copies cost only what the GPU's work does not hide, and a
    micro-step too small to hide the host's work runs at the host's pace
    (``_HOST_S_PER_LAYER``). Larger micro-steps win ties; streaming must win by
    ``_STREAMING_MARGIN``, and may pin at most ``_HOST_STREAM_SHARE`` of host memory.
    """
    candidates, layers, mode = inputs.candidates, inputs.layers, inputs.mode
    best: tuple[float, int, int, int] | None = None
    for micro in candidates:
        if micro > inputs.max_micro_examples and micro != candidates[-1]:
            continue
        if mode == "always":
            options = [layers]
        elif mode == "never":
            options = [0]
        else:
            options = list(range(0, layers + 1))
        # Once a larger micro-step fits, a smaller one must fit with the margin too.
        limit = inputs.memory_budget_bytes - (_SPLIT_STEP_MARGIN_BYTES if best is not None else 0)
        for ckpt in options:
            streamed = _streamed_needed(inputs, micro, ckpt, ranks, limit, streamable)
            if streamed is None:
                continue
            seconds = step_time.seconds(micro, ckpt, streamed)
            seconds *= 1 + (_STREAMING_MARGIN if streamed else 0.0)
            if best is None or seconds < best[0] * 0.995:
                best = (seconds, micro, ckpt, streamed)
            if streamed == 0:  # more recomputation only costs time from here
                break
    return None if best is None else best[1:]


def _choose_micro_step(
    inputs: _PlanInputs,
    step_time: _StepTimeModel,
    requested: _Sharding,
    streamable: bool,
    world_size: int,
    shard_weights: bool | None,
) -> tuple[tuple[int, int, int], _Sharding, list[str]]:
    """The (micro-step, recomputed layers, streamed layers) to run, the sharding it runs
    under, and why. CPUs keep the spec's batch (nothing to fit). On a GPU: the search under
    the requested sharding; if nothing fits and sharding was left to the planner, the search
    again with the weights sharded over every rank; if still nothing fits, the smallest
    micro-step with every layer recomputed (the run will tell whether it fits)."""
    layers, mode = inputs.layers, inputs.mode
    sharding = requested
    reasons: list[str] = []
    chosen: tuple[int, int, int] | None
    if not inputs.on_gpu:
        chosen = (inputs.batch_size, {"always": layers, "never": 0}.get(mode, 0), 0)
        return chosen, sharding, reasons
    chosen = _search(inputs, step_time, sharding.ranks, streamable)
    if chosen is None and shard_weights is None and sharding.shardable and world_size > 1:
        sharded = _search(inputs, step_time, world_size, streamable)
        if sharded is not None:
            chosen = sharded
            sharding = replace(sharding, fsdp=True, ranks=world_size)
    if chosen is not None:
        reasons.append(
            f"predicted {step_time.seconds(*chosen):.2f} s per optimizer step: the "
            "fastest micro-step size that fits (recomputation against per-micro-step cost)"
        )
    else:
        chosen = (inputs.candidates[-1], layers if mode != "never" else 0, 0)
        reasons.append(
            "even one example per micro-step exceeds the memory estimate"
            + (
                ""
                if sharding.ranks > 1
                else _why_not_sharded(world_size, sharding.shardable, shard_weights)
            )
        )
    return chosen, sharding, reasons


def _sharding_reasons(
    inputs: _PlanInputs, sharding: _Sharding, shard_weights: bool | None
) -> list[str]:
    """Why the weights are sharded, or why a request to shard them was not followed."""
    if sharding.fsdp:
        whole = inputs.shape.total_params * inputs.weight_bits // 8
        return [
            f"FSDP: base weights ({whole / GiB:.1f} GiB) sharded over {sharding.ranks} rank(s), "
            "one decoder layer gathered at a time"
            + ("" if shard_weights else " (the model does not fit one GPU)")
        ]
    if shard_weights and not sharding.shardable:
        why = "quantized bases" if inputs.weight_bits < 16 else "models with tied embeddings"
        return [f"FSDP requested, but {why} are not sharded: DDP"]
    return []


def _micro_step_reasons(
    inputs: _PlanInputs, chosen: tuple[int, int, int], sharding: _Sharding
) -> list[str]:
    """A GPU plan's micro-step, recomputation and streaming, explained; and, where recomputing
    16-bit layers, how few a Float8 base would recompute (a choice left to the user, since it
    changes the stored weights)."""
    micro, ckpt_layers, streamed = chosen
    layers, mode = inputs.layers, inputs.mode
    accumulation_out = inputs.examples_per_step // micro
    reasons: list[str] = []
    if micro != inputs.batch_size:
        reasons.append(
            f"micro-step of {micro} examples x {accumulation_out} accumulation "
            f"(spec: {inputs.batch_size} x {inputs.accumulation}; "
            "same examples per optimizer step)"
        )
    grad_ckpt = ckpt_layers > 0
    reasons.append(
        "gradient checkpointing: "
        + (f"{ckpt_layers} of {layers} layers" if grad_ckpt else "off (memory allows)")
        + f" [{mode}]"
    )
    if streamed:
        layer_bytes, host_link = inputs.layer_bytes, inputs.host_link
        reasons.append(
            f"frozen weights of {streamed} recomputed layers stay in host memory "
            f"({streamed * layer_bytes / GiB:.1f} GiB pinned) and reach the GPU one layer "
            f"ahead of use (~{1000 * layer_bytes / host_link:.0f} ms per layer's copy); "
            "the pod needs that much host memory besides its own"
        )
    if (
        grad_ckpt
        and inputs.weight_bits == 16
        and not sharding.fsdp
        and inputs.device.compute_capability >= (8, 9)
    ):
        as_float8 = replace(inputs, weight_bits=8, float8=True, fused=True)
        with_float8 = [
            c
            for c in range(ckpt_layers)
            if _estimated_bytes(as_float8, micro, c) <= inputs.memory_budget_bytes
        ]
        if with_float8:
            reasons.append(
                f"hint: a Float8 base (method: {{type: qlora, quantization: {{bits: 8}}}}) "
                f"would recompute {with_float8[0]} of {layers} layers here instead of "
                f"{ckpt_layers} (7B under 18 GiB: 11.9k -> 13.6k tok/s, bench/NOTES.md); it "
                "stores the frozen base as FP8, so it is yours to choose"
            )
    return reasons


def _base_compute_reasons(inputs: _PlanInputs, half_int8: bool) -> list[str]:
    """How a quantized base computes: 4-bit NF4 fused or under peft's fp32 recipe, Float8's
    GEMMs, or bitsandbytes int8 in the training dtype."""
    reasons: list[str] = []
    if inputs.weight_bits == 4 and inputs.fused:
        reasons.append(
            "4-bit base: unquantized weights kept in bf16, fused LoRA forward dequantizing "
            "each weight per GEMM (not peft's fp32 recipe)"
        )
    elif inputs.weight_bits == 4 and inputs.on_gpu:
        why = (
            f"4-bit base in {inputs.dtype}: peft's QLoRA recipe "
            "(norms, embeddings, LM head in fp32)"
        )
        if inputs.device.bf16 and inputs.dtype == "float16":
            why += "; precision: bf16 takes the fused 4-bit path, ~1.8x faster"
        reasons.append(why)
    if inputs.float8:
        reasons.append(
            "8-bit base: float8 e4m3 weights"
            + (
                ", FP8 tensor-core forward"
                if inputs.on_gpu and inputs.device.compute_capability >= (8, 9)
                else ", dequantized GEMMs"
            )
        )
    if half_int8:
        reasons.append(f"8-bit base layers compute in {inputs.dtype} (not fp32)")
    return reasons


def _why_not_sharded(world_size: int, shardable: bool, shard_weights: bool | None) -> str:
    """The fix to suggest when even one example does not fit one rank."""
    if not shardable:
        return " (this base is not sharded: a smaller model, 4 bits, or a larger GPU)"
    if shard_weights is False:
        return " (FTJ_SHARD_WEIGHTS=0 keeps the weights whole on every rank)"
    if world_size > 1:
        return " even with the weights sharded over every GPU"
    return " (resources.gpus > 1 would shard the weights with FSDP, or use QLoRA)"


def memory_budget_bytes(spec: Any) -> int | None:
    """The GPU memory the plan may use: ``FTJ_MEMORY_BUDGET_GIB`` (the bench's override), else
    ``spec.resources.gpuMemoryBudget``, else ``None`` (85% of the card)."""
    import os

    from finetune_api.spec import quantity_value

    override = os.environ.get("FTJ_MEMORY_BUDGET_GIB")
    if override:
        return int(float(override) * GiB)
    budget = getattr(getattr(spec, "resources", None), "gpu_memory_budget", None)
    return None if budget is None else int(quantity_value(budget))


def plan_for_model(
    model_config: Any, spec: Any, mean_example_tokens: float | None = None
) -> AccelerationPlan:
    """The plan for a model (its transformers config) and a ``FineTuneJobSpec`` on this
    process's device, made before the weights are loaded (a sharded model loads differently).

    ``spec.resources.gpuMemoryBudget`` (or ``FTJ_MEMORY_BUDGET_GIB``) caps the memory the plan
    may use (a shared or time-sliced GPU, or proving that a run fits a smaller card).
    ``FTJ_SHARD_WEIGHTS=1``/``0`` forces FSDP on or off (auto: only when the model does not fit
    one GPU). ``FTJ_MICRO_EXAMPLES=N`` pins the examples per micro-step (bench ablation).
    ``FTJ_TORCH_COMPILE=1`` compiles the decoder layers; ``FTJ_INT8_HALF_COMPUTE=0``
    turns the 8-bit compute cast off, ``FTJ_FUSED_LORA=0`` the fused LoRA forward and
    ``FTJ_LIGER=0`` Liger's kernels and ``FTJ_STREAM_WEIGHTS=0`` streaming frozen weights from
    host memory (bench ablations).
    """
    import os

    def flag(name: str, default: bool | None) -> bool | None:
        value = os.environ.get(name, "").strip().lower()
        if not value:
            return default
        return value not in ("0", "false", "no", "off")

    return plan_acceleration(
        spec.training,
        spec.method,
        ModelShape.from_config(model_config),
        DeviceInfo.detect(),
        mean_example_tokens=mean_example_tokens,
        liger_available=bool(flag("FTJ_LIGER", True)) and liger_available(),
        memory_budget_bytes=memory_budget_bytes(spec),
        torch_compile=bool(flag("FTJ_TORCH_COMPILE", False)),
        int8_half_compute=bool(flag("FTJ_INT8_HALF_COMPUTE", True)),
        fused_lora=bool(flag("FTJ_FUSED_LORA", True)),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        shard_weights=flag("FTJ_SHARD_WEIGHTS", None),
        micro_examples=int(os.environ.get("FTJ_MICRO_EXAMPLES") or 0) or None,
        stream_weights=bool(flag("FTJ_STREAM_WEIGHTS", True)),
    )


_LIGER_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"})


def liger_available() -> bool:
    """Whether liger-kernel can be imported (GPU images carry it; CPU installs need not)."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:
        return False
    return True

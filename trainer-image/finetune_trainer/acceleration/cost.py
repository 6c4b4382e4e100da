"""What a plan costs: peak memory of one rank and the time of one optimizer step, as functions
of plain numbers (the model's shape, the micro-step's tokens, recomputed and streamed layers).

The constants are calibrations, each with the measurement it comes from (bench/NOTES.md). The
planner (plan.py) searches over these costs; nothing here reads the spec or the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_trainer.acceleration.shape import ModelShape

GiB = 1024**3

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
# bench/NOTES.md step 11); the 85% MEMORY_SHARE keeps the headroom for spikes.
_WORKSPACE_BYTES = 1 * GiB
# Share of device memory the plan may use without a budget; the rest is headroom for
# fragmentation spikes. The one place this share is written.
MEMORY_SHARE = 0.85
# Largest micro-step in tokens: past this, throughput no longer rises (matrices are large
# enough at a few thousand rows) while peak memory does.
MAX_MICRO_TOKENS = 32_768
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
SPLIT_STEP_MARGIN_BYTES = int(3.5 * GiB)
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
HOST_STREAM_SHARE = 0.75
# The host link's speed is the least certain input of a prediction (it varies by board and by
# what else crosses the link): a plan that streams must be predicted this much faster.
STREAMING_MARGIN = 0.03
# Two plans predicted within this share of each other's step time are a tie, and a tie goes
# to the plan needing at most LESS_MEMORY_SHARE of the other's memory
# (search._as_fast_in_less). The share is the model's resolution where it matters most, one
# micro-step recomputing layers against two recomputing none: on the 7B as planned for an
# 80 GB card it put the two 1.3% apart in favour of the one step, and the two steps measured
# 5-13% faster (bench/NOTES.md step 25).
SAME_SPEED_SHARE = 0.03
LESS_MEMORY_SHARE = 0.85
# A Float8 base's forward GEMMs on FP8 tensor cores, quantization included, against bf16
# (bench/NOTES.md step 16: 0.88 ms against 1.39 ms for 8192 x 3584 @ 3584 x 18944).
_FP8_FORWARD_SPEEDUP = 1.58
# The down projection's input gradient on FP8 tensor cores, both quantizations included,
# against bf16 (H100, 8192 x 3584 @ 3584 x 18944: 1.070 against 1.507 ms, and 1.086 against
# 1.425 ms on a second machine; bench/NOTES.md session 20, tests/gpu/test_fp8_forward_gpu.py).
_FP8_INPUT_GRADIENT_SPEEDUP = 1.36


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
    fp8_forward: bool = False,
) -> int:
    """Peak memory of one rank: frozen weights, LoRA state, activations of one micro-step.

    LoRA state: fp32 parameter, gradient and two Adam moments (16 bytes per trainable
    parameter). Activations: a checkpointed layer keeps only its input (one hidden vector per
    token) plus, during its backward, one layer's full activations; a plain layer keeps all
    of them. The LM head is chunked (TRL's fused head), so logits cost a few hundred MiB.
    ``float8_base``: 8-bit weights are e4m3 (float8_base.py), not bitsandbytes int8.
    ``fp8_forward`` on a 16-bit base: each forward GEMM makes an e4m3 copy of its input and of
    its weight (float8_base.linear_16bit), the largest ones transient at a time.
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
        if fp8_forward:  # e4m3 copies of the largest input and weight, one GEMM at a time
            float8_transient = (
                micro_batch_tokens * shape.intermediate_size
                + shape.hidden_size * shape.intermediate_size
            )
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


def host_link_bytes_per_s(compute_capability: tuple[int, int]) -> float:
    """Bytes per second a streamed layer's copy crosses the host link at, on this GPU."""
    return _HOST_LINK_BYTES_PER_S.get(compute_capability, _HOST_LINK_DEFAULT_BYTES_PER_S)


def matmul_flops_per_s(compute_capability: tuple[int, int], sm_count: int) -> float:
    """The dense 16-bit matmul rate the trainer reaches on this GPU (FLOP/s)."""
    per_sm = _BF16_TFLOPS_PER_SM.get(compute_capability, 2.0) * 1e12
    return per_sm * (sm_count or 100) * _REACHED_SHARE


@dataclass(frozen=True)
class StepTimeModel:
    """The device's speed as the planner models it, so micro-step sizes, recomputation and
    streaming can be traded against each other by predicted time rather than by rule."""

    layers: int
    tokens_per_example: float
    examples_per_step: int
    matmul_params: int  # N of "4N FLOPs per token"
    layer_bytes: int  # one decoder layer's frozen weights (what streaming copies)
    host_link: float  # bytes per second of a streamed layer's copy
    matmul_rate: float  # FLOP/s the trainer reaches
    fp8_forward: bool  # the base's forward GEMMs run on FP8 tensor cores
    recompute_work: float  # share of a layer's forward a recomputation repeats
    # The share of the input-gradient FLOPs on FP8 tensor cores (the down projections').
    fp8_backward_share: float = 0.0

    def seconds(self, micro: int, ckpt_layers: int, streamed: int = 0) -> float:
        """One optimizer step: per micro-step, the longer of the GPU's matrix work (forward 2N
        and input gradients 2N per token, plus 2N per token for the recomputed layers' share;
        FP8 forward GEMMs and the down projections' FP8 input gradients run faster; a
        recomputation without its down projection does less) and the host's work for it, plus
        what each micro-step boundary exposes. Streamed layers' weights cross the host link
        once in the forward and once for the backward's recomputation; each crossing hides
        behind that pass's GPU work when it is shorter."""
        layers = self.layers
        recomputed = ckpt_layers / max(1, layers)
        speedup = _FP8_FORWARD_SPEEDUP if self.fp8_forward else 1.0
        first = 2 / speedup
        again = 2 * recomputed * self.recompute_work / speedup
        fp8_share = self.fp8_backward_share
        backward = 2 * ((1 - fp8_share) + fp8_share / _FP8_INPUT_GRADIENT_SPEEDUP)
        flops_per_unit = micro * self.tokens_per_example * self.matmul_params / self.matmul_rate
        copies = streamed * self.layer_bytes / self.host_link
        gpu = max(first * flops_per_unit, copies) + max((again + backward) * flops_per_unit, copies)
        host = layers * _HOST_S_PER_LAYER * (1 + _HOST_RECOMPUTE_SHARE * recomputed)
        per_micro_step = max(gpu, host) + layers * _MICRO_STEP_S_PER_LAYER
        return (self.examples_per_step // micro) * per_micro_step

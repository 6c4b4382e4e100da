"""The plan's reasons: one line for each choice, in the user's words, with what they can change
(a field of the spec, a switch) where the choice is theirs to make."""

from __future__ import annotations

from dataclasses import replace

from finetune_trainer.acceleration.choices import PlanInputs
from finetune_trainer.acceleration.cost import GiB, StepTimeModel
from finetune_trainer.acceleration.search import Sharding


def fit_reasons(
    inputs: PlanInputs,
    step_time: StepTimeModel,
    chosen: tuple[int, int, int],
    sharding: Sharding,
    fits: bool,
    world_size: int,
    shard_weights: bool | None,
) -> list[str]:
    """Why this micro-step on a GPU: the fastest that fits, or none fits and what would help."""
    if not inputs.on_gpu:
        return []
    if fits:
        return [
            f"predicted {step_time.seconds(*chosen):.2f} s per optimizer step: the "
            "fastest micro-step size that fits (recomputation against per-micro-step cost)"
        ]
    return [
        "even one example per micro-step exceeds the memory estimate"
        + (
            ""
            if sharding.ranks > 1
            else _why_not_sharded(world_size, sharding.shardable, shard_weights)
        )
    ]


def sharding_reasons(
    inputs: PlanInputs, sharding: Sharding, shard_weights: bool | None
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


def micro_step_reasons(
    inputs: PlanInputs, chosen: tuple[int, int, int], sharding: Sharding
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
            if as_float8.estimated_bytes(micro, c) <= inputs.memory_budget_bytes
        ]
        if with_float8:
            reasons.append(
                f"hint: a Float8 base (method: {{type: qlora, quantization: {{bits: 8}}}}) "
                f"would recompute {with_float8[0]} of {layers} layers here instead of "
                f"{ckpt_layers} (7B under 18 GiB: 11.9k -> 13.6k tok/s, bench/NOTES.md); it "
                "stores the frozen base as FP8, so it is yours to choose"
            )
    return reasons


def base_compute_reasons(inputs: PlanInputs, half_int8: bool) -> list[str]:
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
        if inputs.device.bf16 and inputs.precision == "fp16":
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
    if inputs.fp8_forward and not inputs.float8:
        gemms, bf16_gradients = (
            ("forward GEMMs and down projections' input gradients", "other gradients")
            if inputs.fp8_backward
            else ("forward GEMMs", "gradients")
        )
        reasons.append(
            f"FP8 tensor cores: the frozen base's {gemms} run in FP8 (weights kept bf16 and "
            f"quantized per channel for each GEMM; {bf16_gradients} in bf16); "
            "precision: bf16 keeps every GEMM in bf16"
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

"""The micro-step search: how many examples each micro-step carries, how many decoder layers
recompute their activations, how many stream their frozen weights from host memory, and
whether the weights are sharded over the ranks, traded against each other by predicted time
under the memory budget (cost.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from finetune_trainer.acceleration import cost
from finetune_trainer.acceleration.choices import PlanInputs
from finetune_trainer.acceleration.cost import StepTimeModel


@dataclass(frozen=True)
class Sharding:
    """Whether the base weights are sharded (FSDP2) and over how many ranks."""

    shardable: bool
    fsdp: bool
    ranks: int


def requested_sharding(inputs: PlanInputs, world_size: int, shard_weights: bool | None) -> Sharding:
    """Sharding as asked for (``shard_weights``) where the base allows it; the search may
    still shard a model that does not fit one GPU (``choose_micro_step``)."""
    # Sharding needs plain 16/32-bit weights: bitsandbytes and e4m3 bases stay whole per rank.
    # Tied input/output embeddings are not sharded on GPUs either: under FSDP2 (torch 2.11) the
    # embedding met a still-sharded weight (TRL's fused LM head reads the tied weight directly);
    # only small models tie them, and those fit one GPU.
    shardable = inputs.weight_bits >= 16 and not (
        inputs.on_gpu and inputs.shape.tie_word_embeddings
    )
    fsdp = bool(shard_weights and shardable)
    return Sharding(shardable=shardable, fsdp=fsdp, ranks=max(1, world_size) if fsdp else 1)


def streamable(
    inputs: PlanInputs, stream_weights: bool, fsdp: bool, world_size: int = 1, ddp: bool = False
) -> bool:
    """Whether frozen weights may stream from host memory (weight_streaming.py): 16-bit bases
    on a CUDA GPU, in eager mode (its hooks are not traced), not under FSDP (which shards
    instead: a sharded parameter is FSDP's to gather), and only with host memory known to
    hold them.

    Under DDP (several ranks, weights replicated) each rank streams its own copy: streamed
    weights are no registered parameters, so DDP neither broadcasts nor all-reduces them, and
    every rank loaded the same checkpoint (weight_streaming.py says why that is correct). Each
    rank plans with its share of the node's host memory (``device.rank_host_memory_bytes``).
    That runs only when asked (``ddp``: ``FTJ_STREAM_WEIGHTS_DDP=1``) until it has run on
    several GPUs: its proof so far is two gloo ranks on CPUs (bench/NOTES.md, issue 25).
    """
    return bool(
        stream_weights
        and (world_size <= 1 or ddp)
        and inputs.device.cuda
        and inputs.weight_bits == 16
        and not inputs.float8
        and not inputs.compile_layers
        and not fsdp
        and inputs.device.host_memory_bytes > 0
    )


def _streamed_needed(
    inputs: PlanInputs,
    micro: int,
    ckpt_layers: int,
    ranks: int,
    limit: int,
    streamable: bool,
) -> int | None:
    """The fewest streamed layers that bring (micro, ckpt_layers) under ``limit``: 0 when
    it fits as it is, None when even streaming every recomputed layer does not fit."""
    over = inputs.estimated_bytes(micro, ckpt_layers, ranks) - limit
    if over <= 0:
        return 0
    if not streamable:  # never under FSDP's ranks
        return None
    # Each streamed layer past the two on the GPU takes one layer's weights off it.
    layer_bytes = inputs.layer_bytes
    streamed = 2 + -(-over // layer_bytes)
    fits = streamed <= ckpt_layers and streamed * layer_bytes <= inputs.host_room
    return streamed if fits else None


def _as_fast_in_less(
    inputs: PlanInputs,
    ranks: int,
    option: tuple[float, int, int, int],
    best: tuple[float, int, int, int],
) -> bool:
    """Whether ``option`` is predicted as fast as ``best`` (within ``cost.SAME_SPEED_SHARE``,
    the step-time model's resolution) while needing at most ``cost.LESS_MEMORY_SHARE`` of its
    memory: a tie in time is then decided by memory, whose headroom absorbs the allocator's
    fragmentation and examples longer than the mean (e.g. on an H100 with FP8 forward GEMMs:
    one 15.6k-token micro-step recomputing 7 layers, 65.7 GiB, against two 7.8k-token ones
    recomputing none, 47.3 GiB, predicted 0.3% apart)."""
    seconds, micro, ckpt, streamed = option
    if seconds > best[0] * (1 + cost.SAME_SPEED_SHARE):
        return False
    need = inputs.estimated_bytes(micro, ckpt, ranks, streamed)
    best_need = inputs.estimated_bytes(best[1], best[2], ranks, best[3])
    return need <= best_need * cost.LESS_MEMORY_SHARE


def _search(
    inputs: PlanInputs, step_time: StepTimeModel, ranks: int, streamable: bool
) -> tuple[int, int, int] | None:
    """The fitting (micro-step, recomputed layers, streamed layers) predicted fastest.

    For each micro-step size and number of recomputed layers, the fewest layers whose
    weights must stream from host memory to fit; then the triple with the least predicted
    step time: recomputing a layer costs half its forward-and-input-gradient matrix work
    again, a streamed layer's copies cost only what the GPU's work does not hide, and a
    micro-step too small to hide the host's work runs at the host's pace
    (``cost._HOST_S_PER_LAYER``). Larger micro-steps win ties; streaming must win by
    ``cost.STREAMING_MARGIN``, and may pin at most ``cost.HOST_STREAM_SHARE`` of host memory.
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
        margin = cost.SPLIT_STEP_MARGIN_BYTES if best is not None else 0
        limit = inputs.memory_budget_bytes - margin
        for ckpt in options:
            streamed = _streamed_needed(inputs, micro, ckpt, ranks, limit, streamable)
            if streamed is None:
                continue
            seconds = step_time.seconds(micro, ckpt, streamed)
            seconds *= 1 + (cost.STREAMING_MARGIN if streamed else 0.0)
            if (
                best is None
                or seconds < best[0] * 0.995
                or _as_fast_in_less(inputs, ranks, (seconds, micro, ckpt, streamed), best)
            ):
                best = (seconds, micro, ckpt, streamed)
            if streamed == 0:  # more recomputation only costs time from here
                break
    return None if best is None else best[1:]


def choose_micro_step(
    inputs: PlanInputs,
    step_time: StepTimeModel,
    requested: Sharding,
    streamable: bool,
    world_size: int,
    shard_weights: bool | None,
) -> tuple[tuple[int, int, int], Sharding, bool]:
    """The (micro-step, recomputed layers, streamed layers) to run, the sharding it runs
    under, and whether it is predicted to fit. CPUs keep the spec's batch (nothing to fit),
    or the largest under a re-plan's cap. On a GPU: the search under the requested
    sharding; if nothing fits and sharding was left to the planner, the search again with
    the weights sharded over every rank; if still nothing fits, the smallest micro-step with
    every layer recomputed (the run will tell whether it fits).

    Under DDP each rank plans as one GPU does, streaming included (the same trade, measured
    on one GPU). But where the planner may shard (several ranks, ``shard_weights`` unset) and
    streaming is what makes the replicated weights fit at all, a sharded plan that fits
    without streaming comes first: FSDP's all-gathers cross the GPUs' own links, streaming
    each rank's PCIe link, the two have not been measured against each other (issue 25), and
    FSDP is what such a model ran with before streaming was allowed under DDP."""
    layers, mode = inputs.layers, inputs.mode
    sharding = requested
    chosen: tuple[int, int, int] | None
    if not inputs.on_gpu:
        chosen = (inputs.candidates[0], {"always": layers, "never": 0}.get(mode, 0), 0)
        return chosen, sharding, True
    chosen = _search(inputs, step_time, sharding.ranks, streamable)
    may_shard = shard_weights is None and sharding.shardable and world_size > 1
    needs_room = chosen is None or (
        chosen[2] > 0 and _search(inputs, step_time, sharding.ranks, False) is None
    )
    if may_shard and needs_room:
        sharded = _search(inputs, step_time, world_size, False)
        if sharded is not None:
            chosen = sharded
            sharding = replace(sharding, fsdp=True, ranks=world_size)
    if chosen is None:
        return (inputs.candidates[-1], layers if mode != "never" else 0, 0), sharding, False
    return chosen, sharding, True

"""Frozen weights streamed from host memory: the same training, at most two layers resident,
and a planner that streams only where a budget needs it (CPU; tests/gpu has the real copies)."""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import pytest
import torch
from finetune_api.spec import Method, Quantization
from finetune_trainer.acceleration import GiB, estimate_memory_bytes, plan_acceleration, recompute
from finetune_trainer.acceleration.apply import apply_gradient_checkpointing
from finetune_trainer.acceleration.lora_fused import fuse_lora_linears
from finetune_trainer.acceleration.weight_streaming import WeightStreamer, streamed_indices

from tests.harness.tiny_lora import (
    SMALL,
    loss_and_grads,
    tiny_qwen2,
    with_lora,
)
from tests.rounding import assert_identical_step, same_seeds
from tests.unit.acceleration.test_plan import (
    CPU,
    H100_80G,
    H200,
    LLAMA_70B,
    QWEN_7B,
    RTX_24G,
    training,
)

pytestmark = pytest.mark.unit

LAYERS = 4
SHAPE = {**SMALL, "num_hidden_layers": LAYERS}
# The device machine's H200 (128 GiB of host memory) and a workstation's 24 GB card (64 GiB).
H200_HOST = dataclasses.replace(H200, host_memory_bytes=128 * GiB)
CARD_HOST = dataclasses.replace(RTX_24G, host_memory_bytes=64 * GiB)


def _model() -> Any:
    """The 4-layer tiny Qwen2 under a LoRA with dropout, fused forward, every layer recomputed."""
    model = with_lora(tiny_qwen2(SHAPE), 4, 0.1, 0.1)
    fuse_lora_linears(model)
    plan = types.SimpleNamespace(gradient_checkpointing=True, checkpointed_layers=LAYERS)
    apply_gradient_checkpointing(model, plan)  # type: ignore[arg-type]
    return model


def _layers(model: Any) -> list[Any]:
    return list(model.get_base_model().model.layers)


def _two_micro_steps(model: Any, ids: torch.Tensor) -> tuple[list[float], dict[str, Any]]:
    """Two forward/backward passes (gradients accumulate, as in two micro-steps)."""
    losses = []
    for _ in range(2):
        loss, grads = loss_and_grads(model, ids)
        losses.append(loss)
    return losses, grads


@pytest.mark.parametrize("indices", [[1, 3], [0, 1, 2, 3], [2]])
def test_streamed_layers_train_like_resident_ones(indices: list[int]) -> None:
    ids = torch.randint(0, SMALL["vocab_size"], (1, 24))
    reference, streamed = _model(), _model()
    streamer = WeightStreamer(_layers(streamed), indices, "cpu")
    seen: list[tuple[int, bool, list[int], bool]] = []
    for index, layer in enumerate(_layers(streamed)):  # inside the layer: its recomputation too
        layer.self_attn.register_forward_pre_hook(
            lambda module, args, i=index: seen.append(
                (i, recompute.recomputing(), streamer.resident(), streamer.placed(i))
            )
        )
    got, want = same_seeds(lambda m: _two_micro_steps(m, ids), streamed, reference)
    assert len(got[1]) == 14 * LAYERS
    assert_identical_step(got, want)  # the same weights, copied: the same numbers
    # Forward upward, recomputation downward, twice; a streamed layer is on the device when
    # it runs, and never more than two streamed layers are.
    order = [(i, back) for i, back, _, _ in seen]
    one_step = [(i, False) for i in range(LAYERS)] + [(i, True) for i in reversed(range(LAYERS))]
    assert order == one_step * 2
    for index, _, resident, placed in seen:
        assert len(resident) <= 2
        assert placed == (index in indices)
    # Each streamed layer crossed once per pass (the one at a turn stays for the next pass).
    assert streamer.copies <= 2 * 2 * len(indices)


def test_streamed_weights_are_not_parameters_and_come_back_whole() -> None:
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    streamer = WeightStreamer(_layers(model), [1, 3], "cpu")
    names = {n for n, _ in model.named_parameters()}
    gone = set(before) - names
    # q, k, v (weight + bias), o, gate, up, down of layers 1 and 3; LoRA and norms stay.
    assert len(gone) == 2 * 10
    assert all(".layers.1." in n or ".layers.3." in n for n in gone)
    assert all("base_layer" in n for n in gone)
    assert not any(n in gone for n in names)  # adapters and norms are still parameters
    assert streamer.host_bytes == sum(before[n].numel() * before[n].element_size() for n in gone)
    model.to(torch.float64)  # what .to() does is limited to registered tensors
    assert _layers(model)[1].self_attn.q_proj.base_layer.weight.dtype == torch.float32
    model.to(torch.float32)
    streamer.remove()
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    for name in gone:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)


def test_evaluation_and_generation_stream_forward_only() -> None:
    reference, streamed = _model(), _model()
    WeightStreamer(_layers(streamed), [0, 2, 3], "cpu")
    ids = torch.randint(0, SMALL["vocab_size"], (2, 10))
    for model in (reference, streamed):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            streamed(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0
        )
        kwargs = {"max_new_tokens": 4, "do_sample": False, "use_cache": True}
        assert torch.equal(streamed.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_streamed_layers_are_spread_over_the_recomputed_ones() -> None:
    assert streamed_indices(28, 14) == list(range(1, 28, 2))
    assert streamed_indices(28, 28) == list(range(28))
    assert streamed_indices(26, 22)[-1] == 25 and len(set(streamed_indices(26, 22))) == 22
    assert streamed_indices(20, 5) == [3, 7, 11, 15, 19]
    assert streamed_indices(10, 0) == [] and streamed_indices(3, 7) == [0, 1, 2]


def _plan(device: Any = H200_HOST, budget: float | None = 18, **kw: Any) -> Any:
    method = kw.pop("method", Method())
    return plan_acceleration(
        kw.pop("training", training()),
        method,
        QWEN_7B,
        device,
        mean_example_tokens=780,
        memory_budget_bytes=None if budget is None else int(budget * GiB),
        **kw,
    )


def test_a_tight_budget_streams_weights_and_is_predicted_faster() -> None:
    """7B under 18 GiB: without streaming every layer recomputes in 4-example micro-steps;
    with it, a whole-step micro-step fits, with most of the recomputed layers streamed."""
    kept = _plan(stream_weights=False)
    assert kept.streamed_layers == 0 and kept.checkpointed_layers == 28
    streamed = _plan()
    assert 0 < streamed.streamed_layers <= streamed.checkpointed_layers
    assert streamed.estimated_peak_bytes <= 18 * GiB
    assert streamed.per_device_batch_size > kept.per_device_batch_size
    assert streamed.predicted_step_s < 0.8 * kept.predicted_step_s
    assert "streamed=" in streamed.describe()
    assert any("host memory" in r and "GiB pinned" in r for r in streamed.reasons)


def test_weights_stay_on_the_gpu_when_they_fit_or_cannot_stream() -> None:
    assert _plan(budget=None).streamed_layers == 0  # the H200 with its own memory
    float8 = Method(type="qlora", quantization=Quantization(bits=8))
    assert _plan(method=float8).streamed_layers == 0
    assert _plan(torch_compile=True).streamed_layers == 0
    assert _plan(world_size=2, shard_weights=True).streamed_layers == 0  # FSDP2 shards instead
    never = _plan(training=training(gradient_checkpointing="never"))
    assert never.streamed_layers == 0 and never.checkpointed_layers == 0
    # Host memory unknown, or too small to pin what the budget needs: nothing streams.
    assert _plan(H200).streamed_layers == 0
    small_host = _plan(dataclasses.replace(H200, host_memory_bytes=8 * GiB))
    assert small_host.streamed_layers * QWEN_7B.layer_params * 2 <= 6 * GiB
    # A 24 GB card: streaming lets fewer layers recompute.
    card, card_kept = _plan(CARD_HOST, None), _plan(CARD_HOST, None, stream_weights=False)
    assert card.streamed_layers > 0
    assert card.checkpointed_layers < card_kept.checkpointed_layers
    assert card.predicted_step_s < card_kept.predicted_step_s


def test_streamed_layers_leave_the_gpu_except_two() -> None:
    layer_bytes = QWEN_7B.layer_params * 2
    common = {"micro_batch_tokens": 8192, "checkpointed_layers": 28, "fused_lora": True}
    whole = estimate_memory_bytes(QWEN_7B, **common)
    assert estimate_memory_bytes(QWEN_7B, streamed_layers=2, **common) == whole
    assert estimate_memory_bytes(QWEN_7B, streamed_layers=20, **common) == (
        whole - 18 * layer_bytes
    )


def test_an_80gb_card_keeps_its_measured_plan_when_streaming_barely_differs() -> None:
    """On an 80 GB card the 7B's step could run as one micro-step with 3 layers streamed,
    predicted within 0.2% of two micro-steps without recomputation (measured 13,904 tok/s,
    bench/NOTES.md step 25): streaming must be predicted clearly faster to be chosen."""
    host = dataclasses.replace(H100_80G, host_memory_bytes=256 * GiB)
    plan = plan_acceleration(training(), Method(), QWEN_7B, host, mean_example_tokens=757)
    assert plan.streamed_layers == 0
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (10, 2)


def test_a_model_larger_than_the_gpu_streams_when_the_pod_has_the_host_memory() -> None:
    """A 70B in bf16 (140 GB) on one 80 GB GPU: with 256 GiB of host memory most of its layers
    stream and the whole step fits; with 64 GiB it does not, and the plan says to shard."""
    roomy = dataclasses.replace(H100_80G, host_memory_bytes=256 * GiB)
    plan = plan_acceleration(training(), Method(), LLAMA_70B, roomy, mean_example_tokens=757)
    assert plan.streamed_layers >= 60 and not plan.fsdp
    assert plan.estimated_peak_bytes <= plan.memory_budget_bytes
    assert plan.streamed_layers * LLAMA_70B.layer_params * 2 <= 0.75 * 256 * GiB
    tight = dataclasses.replace(H100_80G, host_memory_bytes=64 * GiB)
    refused = plan_acceleration(training(), Method(), LLAMA_70B, tight, mean_example_tokens=757)
    assert refused.streamed_layers == 0
    assert any("resources.gpus > 1" in r for r in refused.reasons)


def test_ddp_ranks_stream_as_one_gpu_does_and_never_under_fsdp() -> None:
    """Several ranks with the weights replicated (DDP) plan as one GPU does, streaming
    included, each from its own share of host memory; with the weights sharded, nothing
    streams (a sharded parameter is FSDP's to gather)."""
    one = _plan()
    assert one.streamed_layers > 0 and not one.fsdp
    # Not asked for (the default until it has run on several GPUs): DDP ranks keep every weight.
    assert _plan(world_size=2, shard_weights=False).streamed_layers == 0
    for ddp in (
        _plan(world_size=2, stream_ddp=True),
        _plan(world_size=2, shard_weights=False, stream_ddp=True),
    ):
        assert not ddp.fsdp
        assert ddp.streamed_layers == one.streamed_layers
        assert ddp.per_device_batch_size == one.per_device_batch_size
        assert ddp.checkpointed_layers == one.checkpointed_layers
    fsdp = _plan(world_size=2, shard_weights=True, stream_ddp=True)
    assert fsdp.fsdp and fsdp.streamed_layers == 0
    # Host memory too small for what the budget needs: nothing streams on any rank.
    small = _plan(
        dataclasses.replace(H200, host_memory_bytes=4 * GiB), world_size=2, stream_ddp=True
    )
    assert small.streamed_layers * QWEN_7B.layer_params * 2 <= 3 * GiB
    # CPUs never stream, with any number of ranks.
    assert _plan(CPU, None, world_size=2, shard_weights=False).streamed_layers == 0


def test_sharding_comes_first_where_only_streaming_makes_replicated_weights_fit() -> None:
    """A 70B in bf16 on 80 GB cards: replicated, it fits only with most layers streamed. On 4
    ranks sharding fits without streaming, so the planner shards, as before streaming was
    allowed under DDP; FTJ_SHARD_WEIGHTS=0 streams instead. On 2 ranks even sharded weights
    do not fit: each rank streams."""
    host = dataclasses.replace(H100_80G, host_memory_bytes=256 * GiB)

    def plan(**kw: Any) -> Any:
        return plan_acceleration(
            training(), Method(), LLAMA_70B, host, mean_example_tokens=757, stream_ddp=True, **kw
        )

    four = plan(world_size=4)
    assert four.fsdp and four.streamed_layers == 0
    replicated = plan(world_size=4, shard_weights=False)
    assert not replicated.fsdp and replicated.streamed_layers >= 60
    assert replicated.estimated_peak_bytes <= replicated.memory_budget_bytes
    two = plan(world_size=2)
    assert not two.fsdp and two.streamed_layers >= 60


def test_each_rank_plans_with_its_share_of_the_nodes_host_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finetune_trainer.acceleration import device

    monkeypatch.setattr(device, "host_memory_bytes", lambda: 256 * GiB)
    assert device.rank_host_memory_bytes({}) == 256 * GiB
    assert device.rank_host_memory_bytes({"LOCAL_WORLD_SIZE": "1"}) == 256 * GiB
    assert device.rank_host_memory_bytes({"LOCAL_WORLD_SIZE": "2"}) == 128 * GiB
    assert device.rank_host_memory_bytes({"LOCAL_WORLD_SIZE": "8"}) == 32 * GiB


def test_two_ddp_ranks_train_the_same_with_streamed_weights_on_gloo(tmp_path: Any) -> None:
    """Two CPU ranks (gloo) under DDP: streaming two of four layers' frozen weights changes
    no loss and no adapter weight (CPU kernels and a two-rank gloo all-reduce are
    deterministic, and the streamed copies are exact). DDP wraps the model after streaming,
    so its start-up broadcast and its checks never meet the unregistered host tensors.
    ``tests/gpu/test_streaming_ddp_gpu.py`` is the NCCL version."""
    from tests.harness import streaming_ddp

    args = {"shape": SHAPE, "steps": 3, "seq": 16, "cpu": True}
    plain = streaming_ddp.run(tmp_path / "plain.json", streamed=[], **args)
    streamed = streaming_ddp.run(tmp_path / "streamed.json", streamed=[1, 3], **args)
    assert plain["world_size"] == streamed["world_size"] == 2
    assert streamed["host_bytes"] > 0 and plain["host_bytes"] == 0
    assert len(plain["losses"]) == 3
    assert streamed["losses"] == plain["losses"]
    assert streamed["adapter"].keys() == plain["adapter"].keys()
    for name, weight in plain["adapter"].items():
        assert torch.equal(streamed["adapter"][name], weight), name

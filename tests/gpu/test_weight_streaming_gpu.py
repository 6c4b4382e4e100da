"""Frozen weights streamed from pinned host memory on a real GPU (GPU only): the same training
as resident weights with real side-stream copies, the memory they free, and the host link's
speed the planner assumes (acceleration.cost.host_link_bytes_per_s)."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Eight layers 2048 wide: 45M frozen parameters (90 MB in bf16) per layer.
SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 8,
         "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 1000}  # fmt: skip


def _model(shape: dict[str, int]) -> Any:
    """bf16 tiny Qwen2 under a fused LoRA with dropout, every layer recomputed (as planned)."""
    from finetune_trainer.acceleration.apply import apply_gradient_checkpointing
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

    from tests.harness.tiny_lora import tiny_qwen2, with_lora

    model = with_lora(tiny_qwen2(shape, "cuda", torch.bfloat16), 16, 0.05, 0.02)
    fuse_lora_linears(model)
    layers = shape["num_hidden_layers"]
    plan = types.SimpleNamespace(gradient_checkpointing=True, checkpointed_layers=layers)
    apply_gradient_checkpointing(model, plan)  # type: ignore[arg-type]
    return model


def _layers(model: Any) -> list[Any]:
    return list(model.get_base_model().model.layers)


def _steps(model: Any, ids: Any, count: int = 2) -> tuple[list[float], dict[str, Any]]:
    model.train()
    losses = []
    for _ in range(count):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(float(loss.detach()))
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return losses, grads


def _rel(got: Any, want: Any) -> Any:
    return (got - want).norm() / want.norm().clamp_min(1e-12)


def test_streamed_weights_train_like_resident_ones_and_free_their_memory() -> None:
    from finetune_trainer.acceleration.weight_streaming import WeightStreamer

    ids = torch.randint(0, 1000, (1, 4096), device="cuda")
    reference = _model(SHAPE)
    torch.manual_seed(3)
    ref_losses, ref_grads = _steps(reference, ids)
    # The noise floor: the same model and seeds again (FlashAttention's backward accumulates
    # in a nondeterministic order, and 8 layers of bf16 amplify it by the first layer).
    reference.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    _, again = _steps(reference, ids)
    floor = max(float(_rel(again[n], ref_grads[n])) for n in ref_grads)
    del reference, again
    torch.cuda.empty_cache()

    model = _model(SHAPE)
    before = torch.cuda.memory_allocated()
    streamed = [1, 3, 5, 6, 7]
    streamer = WeightStreamer(_layers(model), streamed, "cuda")
    torch.cuda.empty_cache()
    layer_bytes = streamer.host_bytes // len(streamed)
    freed = before - torch.cuda.memory_allocated()
    assert abs(freed - streamer.host_bytes) < 2**20, (freed, streamer.host_bytes)
    assert all(t.is_pinned() for ts in streamer._tensors.values() for t in (x.host for x in ts))

    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(3)
    losses, grads = _steps(model, ids)
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    assert set(grads) == set(ref_grads)
    worst = max(float(_rel(grads[n], ref_grads[n])) for n in ref_grads)
    print(f"\nworst LoRA gradient difference: streamed {worst:.2e}, rerun {floor:.2e}")
    assert worst <= 2 * floor + 1e-3
    assert len(streamer.resident()) <= 2
    peak_weights = torch.cuda.max_memory_allocated() - (before - streamer.host_bytes)
    print(f"\nstreamed {len(streamed)} layers of {layer_bytes / 2**20:.0f} MiB; peak above the"
          f" resident model {peak_weights / 2**20:.0f} MiB")  # fmt: skip
    streaming = torch.cuda.memory_allocated()
    copies = len(streamer.resident()) * layer_bytes  # the copies left for the next forward
    streamer.remove()  # every streamed weight back on the GPU, as a parameter again
    grown = torch.cuda.memory_allocated() - streaming
    assert abs(grown - (streamer.host_bytes - copies)) < 2**20, (grown, copies)


def test_host_link_speed_and_what_streaming_costs_a_step() -> None:
    """Prints the pinned host-to-GPU copy rate and a step's time with half and all of the
    layers streamed against none, at a 7B's layer width (8 layers, 8k tokens). Asserts the
    rate the planner assumes for this GPU is within reach, and that streaming half the
    layers costs at most a few percent."""
    from finetune_trainer.acceleration.cost import host_link_bytes_per_s
    from finetune_trainer.acceleration.weight_streaming import WeightStreamer

    host = torch.empty(512 * 2**20, dtype=torch.uint8, pin_memory=True)
    device = torch.empty_like(host, device="cuda")
    device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(8):
        device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    rate = 8 * host.numel() / (time.perf_counter() - start)
    capability = torch.cuda.get_device_capability()
    assumed = host_link_bytes_per_s(capability)
    print(f"\nhost->GPU pinned copy: {rate / 1e9:.1f} GB/s (planner assumes {assumed / 1e9:.0f})")
    del host, device

    wide = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 8,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 1000}  # fmt: skip
    ids = torch.randint(0, 1000, (1, 8192), device="cuda")
    model = _model(wide)
    timings = {}
    for label, streamed in (("none", []), ("half", [1, 3, 5, 7]), ("all", list(range(8)))):
        streamer = WeightStreamer(_layers(model), streamed, "cuda") if streamed else None
        _steps(model, ids, 2)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        _steps(model, ids, 4)
        torch.cuda.synchronize()
        timings[label] = (time.perf_counter() - start) / 4
        if streamer is not None:
            streamer.remove()
        model.zero_grad(set_to_none=True)
    print(
        "7B-wide layers, 8k tokens, forward+backward with every layer recomputed: "
        + ", ".join(f"{k} streamed {v * 1000:.0f} ms" for k, v in timings.items())
        + f" (half/none {timings['half'] / timings['none']:.3f}x,"
        f" all/none {timings['all'] / timings['none']:.3f}x)"
    )
    assert rate > 0.7 * assumed
    assert timings["half"] < 1.10 * timings["none"]

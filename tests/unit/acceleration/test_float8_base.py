"""The Float8 frozen base (QLoRA 8 bits, format float8) on CPU: the dequantized-GEMM path.

On a CPU the weights are e4m3 and the arithmetic is fp32, so a Float8 model must compute
*exactly* what a full-precision model with the dequantized weights computes: that pins the
plumbing (fused LoRA, peft, gradients) without tolerance games. How close e4m3 weights are to
the originals is checked separately, and the FP8 tensor-core path is compared with this one on
the GPU (tests/gpu/test_float8_gpu.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from finetune_trainer.acceleration.float8_base import (
    FLOAT8,
    Float8Linear,
    dequantize,
    quantize_base_linears,
    quantize_rows,
)
from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

from tests.harness.tiny_lora import SMALL, loss_and_grads, tiny_qwen2, with_lora
from tests.rounding import UNIT_ROUNDOFF, assert_same_step, training_step_bounds

pytestmark = pytest.mark.unit


def _base() -> Any:
    return tiny_qwen2(SMALL)


def _peft(base: Any, dropout: float = 0.0) -> Any:
    return with_lora(base, 4, dropout, 0.1)


def test_rows_quantize_to_e4m3_within_its_rounding_and_zero_rows_survive() -> None:
    torch.manual_seed(0)
    t = torch.randn(32, 256) * torch.logspace(-3, 2, 32).unsqueeze(1)  # rows of any magnitude
    t[5] = 0.0
    q, scale = quantize_rows(t, torch.float32)
    assert q.dtype == FLOAT8 and scale.shape == (32, 1)
    back = dequantize(q, scale, torch.float32)
    assert torch.isfinite(back).all() and (back[5] == 0).all()
    # e4m3 keeps 3 mantissa bits: each value within 1/16 of itself (normal range), and the
    # row's largest value is represented (nothing saturates).
    amax = t.abs().amax(dim=1, keepdim=True)
    normal = t.abs() > amax * 2**-6
    assert ((back - t).abs() <= t.abs() / 16 + 1e-12)[normal].all()
    # scale = amax / 448, then back = 448 * scale: two float32 roundings (448 is exact in e4m3).
    rtol = 2 * UNIT_ROUNDOFF[torch.float32]
    torch.testing.assert_close(back.abs().amax(dim=1), amax.squeeze(1), rtol=rtol, atol=0)


def test_float8_linear_is_a_frozen_linear_of_one_byte_weights() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    f8 = Float8Linear.from_linear(linear)
    assert isinstance(f8, torch.nn.Linear)  # so peft wraps it and the fused forward takes it
    assert f8.weight.dtype == FLOAT8 and not f8.weight.requires_grad
    assert f8.weight.element_size() == 1 and f8.in_features == 64 and f8.out_features == 48
    x = torch.randn(3, 7, 64, requires_grad=True)
    out = f8(x)
    exact = linear(x)
    # Close to the original layer: each e4m3 weight is within 2**-4 of itself (3 mantissa
    # bits), so the product norm-wise; equal to the dequantized one.
    assert (out - exact).norm() / exact.norm() < UNIT_ROUNDOFF[FLOAT8]
    dequantized = dequantize(f8.weight, f8.weight_scale, torch.float32)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, dequantized, linear.bias))
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.ones(3, 7, 48) @ dequantized)


def test_quantized_peft_model_trains_the_adapter_like_the_dequantized_model() -> None:
    base = _base()
    ids = torch.randint(0, 101, (2, 16))
    model = _peft(base)
    assert quantize_base_linears(model) == 14  # 7 projections x 2 layers; not the LM head
    assert fuse_lora_linears(model) == 14  # the fused LoRA forward drives the Float8 GEMMs
    assert type(model.get_base_model().lm_head) is torch.nn.Linear
    assert all(
        p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n
    )  # the adapter is not quantized
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in _peft(base).named_parameters() if "lora_" in n
    }

    # The same adapter on a full-precision base holding the dequantized weights.
    reference = _peft(base)
    quantized = dict(model.named_modules())
    with torch.no_grad():
        for name, module in reference.named_modules():
            twin = quantized.get(name)
            if isinstance(twin, Float8Linear):
                module.weight.copy_(dequantize(twin.weight, twin.weight_scale, torch.float32))
    want = loss_and_grads(reference, ids)
    loss, grads = loss_and_grads(model, ids)
    assert len(grads) == 28
    # The same weights; the fused forward sums and rounds in another order (tests/rounding.py).
    assert_same_step((loss, grads), want, training_step_bounds(SMALL, ids.numel()))

    # And the quantized model still answers nearly like the 16-bit one.
    exact_loss, _ = loss_and_grads(_peft(base), ids)
    assert loss == pytest.approx(exact_loss, rel=0.02)


def test_only_frozen_linears_outside_the_head_are_quantized() -> None:
    model = torch.nn.ModuleDict(
        {
            "proj": torch.nn.Linear(16, 16),
            "trained": torch.nn.Linear(16, 16),
            "lm_head": torch.nn.Linear(16, 4),
        }
    )
    model["proj"].requires_grad_(False)
    model["lm_head"].requires_grad_(False)
    assert quantize_base_linears(model) == 1
    assert isinstance(model["proj"], Float8Linear)
    assert type(model["trained"]) is torch.nn.Linear  # trainable weights stay as they are
    assert type(model["lm_head"]) is torch.nn.Linear


def test_sibling_projections_share_one_quantized_input_and_changes_invalidate_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finetune_trainer.acceleration import float8_base

    calls: list[int] = []
    real = float8_base.quantize_rows

    def counting(t: torch.Tensor, work_dtype: Any = None) -> Any:
        calls.append(t.shape[0])
        return real(t, work_dtype)

    monkeypatch.setattr(float8_base, "quantize_rows", counting)
    cache = float8_base._SharedInput()
    x = torch.randn(6, 32)
    rows = x.reshape(-1, 32)  # q, k and v each reshape the same normed input
    first = cache.quantize(rows, share=True)
    again = cache.quantize(x.reshape(-1, 32), share=True)
    assert len(calls) == 1 and again[0] is first[0]
    x.mul_(2.0)  # an in-place change: the cached copy is stale
    changed = cache.quantize(x.reshape(-1, 32), share=True)
    assert len(calls) == 2
    torch.testing.assert_close(changed[1], first[1] * 2.0)
    other = torch.randn(6, 32)
    cache.quantize(other, share=False)  # e.g. the down projection's input: not kept
    assert cache.entry is None and len(calls) == 3


def _ddp_rank(rank: int, port: int, results: Any) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = with_lora(tiny_qwen2(SMALL), 4, 0.0, 0.1)
        quantize_base_linears(model)
        fuse_lora_linears(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # gloo has no float8 type
        torch.manual_seed(100 + rank)  # each rank its own batch
        ids = torch.randint(0, 101, (2, 16))
        ddp(input_ids=ids, labels=ids).loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.put((rank, grads.tolist()))  # plain floats: no shared memory to outlive
    finally:
        dist.destroy_process_group()
    # As the trainer's entry point ends a rank (finetune_trainer.__main__.exit_rank): the
    # result is delivered, so interpreter teardown, where gloo has aborted, is skipped.
    results.close()
    results.join_thread()
    os._exit(0)


def test_float8_model_trains_under_ddp_on_gloo() -> None:
    """Two CPU ranks (gloo, as the multi-node CPU test runs): DDP wraps the quantized model
    and all-reduces the adapter's gradients, so both ranks end with the same ones."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=_ddp_rank, args=(r, port, results)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        # Read before joining: a child blocks on the pipe until its result is taken.
        pairs = [results.get(timeout=120) for _ in range(2)]  # a crashed rank: queue.Empty
        grads = {rank: torch.tensor(values) for rank, values in pairs}
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])

"""The Float8 base's FP8 tensor-core forward on the GPU (Ada/Hopper and newer).

The CPU tests pin the plumbing against dequantized weights exactly; here the forward also
quantizes each token's input to e4m3, so it is compared with the dequantized-GEMM path within
FP8's rounding, on the shapes and the odd token counts packed micro-steps produce, and its
reason to exist (speed) is checked against bf16 on a 7B MLP shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.gpu_timing import gpu_time_ms

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
        reason="needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+)",
    ),
]


@pytest.fixture
def dequantized_gemms() -> Iterator[None]:
    """Run the block with FTJ_FP8_COMPUTE=0: the weight-only (dequantized bf16 GEMM) path."""
    from finetune_trainer import switches

    with switches.override(fp8_compute=False):
        yield


def _relative_error(got: Any, want: Any) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("tokens", [1, 7, 1003, 4096])
def test_fp8_forward_matches_the_dequantized_gemm_within_fp8_rounding(tokens: int) -> None:
    from finetune_trainer import switches
    from finetune_trainer.acceleration import float8_base

    torch.manual_seed(0)
    linear = torch.nn.Linear(3584, 512, bias=True, device="cuda", dtype=torch.bfloat16)
    f8 = float8_base.Float8Linear.from_linear(linear)
    x = torch.randn(tokens, 3584, device="cuda", dtype=torch.bfloat16)
    assert float8_base.fp8_tensor_cores(x.device)
    fast = float8_base.linear(x, f8.weight, f8.weight_scale, f8.bias)
    with switches.override(fp8_compute=False):
        reference = float8_base.linear(x, f8.weight, f8.weight_scale, f8.bias)
    assert fast.dtype == torch.bfloat16 and fast.shape == (tokens, 512)
    # Each input quantized per token to e4m3 (3 mantissa bits): a few percent, not more.
    assert _relative_error(fast, reference) < 0.04
    assert _relative_error(fast, linear(x)) < 0.06


def _tiny_models() -> tuple[Any, Any]:
    from finetune_trainer.acceleration.float8_base import quantize_base_linears
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

    from tests.harness.tiny_lora import GPU_SIZED, tiny_qwen2, with_lora

    base = tiny_qwen2(GPU_SIZED, "cuda", torch.bfloat16)
    made = [with_lora(base, 16, 0.0, 0.02) for _ in range(2)]
    exact, quantized = made
    assert quantize_base_linears(quantized) == 28
    assert fuse_lora_linears(quantized) == 28
    fuse_lora_linears(exact)
    return exact, quantized


def _loss_and_grads(model: Any, ids: Any) -> tuple[float, dict[str, Any]]:
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def test_fp8_model_trains_the_adapter_like_the_16bit_model() -> None:
    exact, quantized = _tiny_models()
    ids = torch.randint(0, 1000, (2, 256), device="cuda")
    exact_loss, exact_grads = _loss_and_grads(exact, ids)
    loss, grads = _loss_and_grads(quantized, ids)
    assert loss == pytest.approx(exact_loss, rel=0.01)
    assert set(grads) == set(exact_grads)
    cosines = [
        float(torch.nn.functional.cosine_similarity(g.flatten(), exact_grads[n].flatten(), dim=0))
        for n, g in grads.items()
    ]
    print(f"\nloss {loss:.4f} vs {exact_loss:.4f}; gradient cosine min {min(cosines):.4f}")
    assert min(cosines) > 0.95


def test_fp8_forward_is_faster_than_bf16_on_a_7b_mlp_shape(dequantized_gemms: None) -> None:
    from finetune_trainer import switches
    from finetune_trainer.acceleration import float8_base

    torch.manual_seed(0)
    weight = torch.randn(18944, 3584, device="cuda", dtype=torch.bfloat16) * 0.02
    f8 = float8_base.Float8Linear.from_linear(
        torch.nn.Linear(3584, 18944, bias=False, device="cuda", dtype=torch.bfloat16)
    )
    x = torch.randn(8192, 3584, device="cuda", dtype=torch.bfloat16)
    bf16_ms = gpu_time_ms(lambda: torch.nn.functional.linear(x, weight))
    dequantized_ms = gpu_time_ms(lambda: float8_base.linear(x, f8.weight, f8.weight_scale, None))
    with switches.override(fp8_compute=True):
        fp8_ms = gpu_time_ms(lambda: float8_base.linear(x, f8.weight, f8.weight_scale, None))
    print(
        f"\n8192x3584 @ 3584x18944: bf16 {bf16_ms:.3f} ms, fp8 (with input quantization) "
        f"{fp8_ms:.3f} ms ({bf16_ms / fp8_ms:.2f}x), dequantized bf16 {dequantized_ms:.3f} ms"
    )
    assert fp8_ms < bf16_ms / 1.2


def test_fp8_backward_ablation_matches_the_bf16_input_gradient() -> None:
    from finetune_trainer import switches
    from finetune_trainer.acceleration import float8_base

    torch.manual_seed(0)
    f8 = float8_base.Float8Linear.from_linear(
        torch.nn.Linear(3584, 18944, bias=False, device="cuda", dtype=torch.bfloat16)
    )
    grad = torch.randn(1003, 18944, device="cuda", dtype=torch.bfloat16)
    exact = float8_base.grad_input(grad, f8.weight, f8.weight_scale)
    with switches.override(fp8_backward=True):
        fast = float8_base.grad_input(grad, f8.weight, f8.weight_scale)
        grad8 = torch.randn(8192, 18944, device="cuda", dtype=torch.bfloat16)
        fp8_ms = gpu_time_ms(lambda: float8_base.grad_input(grad8, f8.weight, f8.weight_scale))
    bf16_ms = gpu_time_ms(lambda: float8_base.grad_input(grad8, f8.weight, f8.weight_scale))
    print(f"\ninput gradient 8192x18944 @ 18944x3584: bf16 {bf16_ms:.3f} ms, fp8 {fp8_ms:.3f} ms")
    assert fast.shape == exact.shape and _relative_error(fast, exact) < 0.04


def test_a_model_in_host_memory_reaches_the_gpu_one_quantized_linear_at_a_time() -> None:
    from finetune_trainer.acceleration.float8_base import Float8Linear, quantize_base_linears

    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        *[torch.nn.Linear(4096, 4096, dtype=torch.bfloat16) for _ in range(16)]
    ).requires_grad_(False)  # 512 MiB of bf16 weights in host memory
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    assert quantize_base_linears(layers, device=torch.device("cuda")) == 16
    assert all(isinstance(m, Float8Linear) and m.weight.is_cuda for m in layers)
    peak = torch.cuda.max_memory_allocated() - before
    # The e4m3 weights (256 MiB) plus one layer in flight (its bf16 and fp32 copies, 96 MiB),
    # well under the 512 MiB the 16-bit model alone would take on the GPU.
    assert peak < 256 * 2**20 + 4 * 32 * 2**20, peak / 2**20

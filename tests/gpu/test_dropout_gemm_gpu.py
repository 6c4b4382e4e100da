"""The LoRA dropout inside the rank-r GEMMs (``FTJ_FUSED_DROPOUT_GEMM``, on by default).

``triton_kernels.dropped_matmul`` and ``dropped_backward`` draw the same mask as
``seeded_dropout`` (a function of the seed and the element's position) but never write the
dropped tensors: the forward reads each input once, the backward makes one pass over the input
and its gradient. These tests hold them to the two-kernel path they replace (the same numbers
up to the rounding of one product), on its ragged shapes and ranks, in a whole fused model's
gradients, and to being faster on the 7B's shapes.

Without a GPU, ``TRITON_INTERPRET=1`` runs the equality tests on the CPU in float16 (the
interpreter multiplies bfloat16 operands as raw bits): the check made before this ran on a GPU.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.harness.gpu_timing import gpu_time_ms

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

_ON_GPU = torch.cuda.is_available()
_INTERPRETED = not _ON_GPU and os.environ.get("TRITON_INTERPRET") == "1"
_DEVICE = "cuda" if _ON_GPU else "cpu"
_DTYPE = torch.bfloat16 if _ON_GPU else torch.float16

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (_ON_GPU or _INTERPRETED), reason="needs a CUDA GPU"),
]

# One rounding of a product to the 16-bit output, relative to the output's largest value:
# bfloat16 keeps 8 significant bits (2^-8), float16 11 (2^-11); the fused kernels sum in fp32
# where the two-kernel path rounds its dropped copy and its product to 16 bits first, so two
# such roundings may separate them.
_ROUNDING = 2 * 2.0**-8 if _ON_GPU else 2 * 2.0**-11


def _relative(got: Any, want: Any) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


@pytest.mark.parametrize(
    ("tokens", "cols", "rank", "p"),
    [
        (70, 256, 16, 0.1),
        (33, 136, 8, 0.3),
        (64, 128, 32, 0.05),
        (1, 3584, 16, 0.05),
        (600, 128, 16, 0.1),
    ],  # fmt: skip
)
def test_the_fused_dropout_gemms_compute_what_the_two_kernel_path_computes(
    tokens: int, cols: int, rank: int, p: float
) -> None:
    from finetune_trainer.acceleration import triton_kernels as kernels

    torch.manual_seed(0)
    x = torch.randn(tokens, cols, device=_DEVICE, dtype=_DTYPE)
    lora_a = (torch.randn(rank, cols, device=_DEVICE) * 0.1).to(_DTYPE)
    grad_down = (torch.randn(tokens, rank, device=_DEVICE) * 0.5).to(_DTYPE)
    grad_rows = torch.randn(tokens, cols, device=_DEVICE, dtype=_DTYPE)
    seed = 12345

    dropped_x = kernels.seeded_dropout(x, p, seed)
    assert _relative(kernels.dropped_matmul(x, lora_a, p, seed), dropped_x @ lora_a.t()) < (
        _ROUNDING
    )

    want_rows = grad_rows.clone()
    dropped_x = kernels.seeded_dropout_pair(x, grad_down @ lora_a, want_rows, p, seed)
    want_a = grad_down.float().t() @ dropped_x.float()
    got_rows = grad_rows.clone()
    got_a = kernels.dropped_backward(x, grad_down, lora_a, got_rows, p, seed)
    assert got_a.dtype == torch.float32 and got_a.shape == (rank, cols)
    assert _relative(got_a, want_a) < _ROUNDING
    assert _relative(got_rows, want_rows) < _ROUNDING
    # Another seed is another mask: the equality above is the mask's, not a coincidence.
    other = kernels.dropped_matmul(x, lora_a, p, seed + 1)
    assert _relative(other, kernels.seeded_dropout(x, p, seed) @ lora_a.t()) > 10 * _ROUNDING


@pytest.mark.skipif(not _ON_GPU, reason="a whole model's step: on a GPU only")
def test_a_fused_lora_model_trains_the_same_with_the_dropout_inside_its_gemms() -> None:
    from finetune_trainer import switches
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

    from tests.harness.tiny_lora import GPU_SIZED, bf16_loss_and_grads, tiny_qwen2, with_lora

    ids = torch.randint(0, 1000, (2, 256), device="cuda")

    def run(fused_dropout: bool) -> Any:
        model = with_lora(tiny_qwen2(GPU_SIZED, "cuda", torch.bfloat16), 16, 0.1, 0.02)
        assert fuse_lora_linears(model) == 28
        torch.manual_seed(3)  # the dropout seeds come from torch's CPU generator
        with switches.override(fused_dropout_gemm=fused_dropout):
            return bf16_loss_and_grads(model, ids)

    want_loss, want = run(False)
    got_loss, got = run(True)
    assert got_loss == pytest.approx(want_loss, rel=_ROUNDING)
    assert set(got) == set(want)
    worst = max(_relative(got[name], want[name]) for name in want)
    print(f"\nlargest relative gradient difference: {worst:.5f}")
    assert worst < 4 * _ROUNDING  # a few layers of one extra rounding each


@pytest.mark.skipif(not _ON_GPU, reason="timing: on a GPU only")
@pytest.mark.parametrize("cols", [3584, 18944])
def test_the_fused_dropout_gemms_are_faster_than_the_two_kernel_path(cols: int) -> None:
    """What they exist for, on the 7B's input widths at a micro-step's ~7,400 tokens: the
    forward (dropout + GEMM) and the backward (pair kernel, bottleneck product, GEMM)."""
    from finetune_trainer.acceleration import triton_kernels as kernels

    x = torch.randn(7400, cols, device="cuda", dtype=torch.bfloat16)
    lora_a = (torch.randn(16, cols, device="cuda") * 0.1).to(torch.bfloat16)
    grad_down = torch.randn(7400, 16, device="cuda", dtype=torch.bfloat16)
    grad_rows = torch.randn(7400, cols, device="cuda", dtype=torch.bfloat16)

    def two_kernels() -> None:
        _ = kernels.seeded_dropout(x, 0.05, 1) @ lora_a.t()
        dropped = kernels.seeded_dropout_pair(x, grad_down @ lora_a, grad_rows, 0.05, 1)
        _ = grad_down.t() @ dropped

    def fused() -> None:
        _ = kernels.dropped_matmul(x, lora_a, 0.05, 1)
        _ = kernels.dropped_backward(x, grad_down, lora_a, grad_rows, 0.05, 1)

    two_ms, fused_ms = gpu_time_ms(two_kernels), gpu_time_ms(fused)
    print(f"\n7400 x {cols}: two-kernel path {two_ms:.3f} ms, fused {fused_ms:.3f} ms "
          f"({two_ms / fused_ms:.2f}x)")  # fmt: skip
    assert fused_ms < two_ms

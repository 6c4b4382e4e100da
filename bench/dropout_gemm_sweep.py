"""Launch shapes of the fused LoRA dropout GEMMs, timed against the two-kernel path.

The fused kernels (``triton_kernels.dropped_matmul``/``dropped_backward``) moved a quarter of
the two-kernel path's bytes yet ran only 1.10x faster on an H100 (bench/NOTES.md, session
21): far from bandwidth. This times the choices that decide how much memory traffic is in
flight and how many atomics the backward issues, on the 7B's two input widths at a
micro-step's ~7,400 tokens, each against the two-kernel path measured in the same run:

* the forward's tokens per program (``_DROPOUT_TOKENS_FORWARD``: the grid's size);
* the backward's token tiles per program (``_DROPOUT_BACKWARD_STEPS``: its A-gradient
  shares are summed in registers and added with one atomic per element).

    python3 -m bench.dropout_gemm_sweep
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

from tests.harness.gpu_timing import gpu_time_ms

TOKENS = 7400
WIDTHS = (3584, 18944)  # the 7B's hidden size and MLP width: every adapted input's columns
RANK = 16
P = 0.05


def _line(label: str, two_ms: float, fused: Callable[[], Any]) -> str:
    fused_ms = gpu_time_ms(fused)
    ratio = two_ms / fused_ms
    return f"{label:<40} two-kernel {two_ms:7.3f} ms  fused {fused_ms:7.3f} ms  {ratio:5.2f}x"


def sweep_width(cols: int) -> None:
    """Every choice on one input width, each against the two-kernel path timed here."""
    import torch
    from finetune_trainer.acceleration import triton_kernels as kernels

    x = torch.randn(TOKENS, cols, device="cuda", dtype=torch.bfloat16)
    lora_a = (torch.randn(RANK, cols, device="cuda") * 0.1).to(torch.bfloat16)
    grad_down = torch.randn(TOKENS, RANK, device="cuda", dtype=torch.bfloat16)
    grad_rows = torch.randn(TOKENS, cols, device="cuda", dtype=torch.bfloat16)

    def forward_two() -> None:
        _ = kernels.seeded_dropout(x, P, 1) @ lora_a.t()

    def backward_two() -> None:
        dropped = kernels.seeded_dropout_pair(x, grad_down @ lora_a, grad_rows, P, 1)
        _ = grad_down.t() @ dropped

    def forward_fused() -> None:
        kernels.dropped_matmul(x, lora_a, P, 1)

    def backward_fused() -> None:
        kernels.dropped_backward(x, grad_down, lora_a, grad_rows, P, 1)

    forward_ms, backward_ms = gpu_time_ms(forward_two), gpu_time_ms(backward_two)
    for tokens_per_program in (16, 32, 64):
        with mock.patch.object(kernels, "_DROPOUT_TOKENS_FORWARD", tokens_per_program):
            label = f"{TOKENS}x{cols} forward, {tokens_per_program} tokens/program"
            print(_line(label, forward_ms, forward_fused))
    for steps in (1, 2, 4, 8, 16):
        with mock.patch.object(kernels, "_DROPOUT_BACKWARD_STEPS", steps):
            label = f"{TOKENS}x{cols} backward, {steps} tiles/program"
            print(_line(label, backward_ms, backward_fused))


def main() -> None:
    import torch

    print(f"device: {torch.cuda.get_device_name(0)}")
    for cols in WIDTHS:
        sweep_width(cols)


if __name__ == "__main__":
    main()

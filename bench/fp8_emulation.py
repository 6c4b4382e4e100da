"""The FP8 loss criterion of tests/gpu/test_fp8_forward_gpu.py, run on a CPU.

The GPU test asks whether FP8 GEMMs move where a short LoRA run's loss ends by more than
another adapter initialisation does (averaged over six data draws), and checks that the same
criterion rejects a really too coarse gradient. Device time is scarce, so this runs those very
test functions on a CPU with ``torch._scaled_mm`` emulated: each e4m3 operand times its scale,
multiplied in fp32, the product cast to the output dtype. The quantization itself is the
trainer's own (``float8_base.quantize_rows`` and ``quantize_columns``' torch path), so the
rounding is e4m3's; what differs from the GPU is only the accumulation order and the tensor
cores' fp32 accumulation (bench/NOTES.md session 20):

    python -m bench.fp8_emulation [--draws 6]

It prints each test's line (FP8's and another initialisation's mean final-loss effect) and
whether it passed. About 2.5 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
from typing import Any


def emulate_fp8_gemms(patch: Any) -> None:
    """Let the FP8 paths run on a CPU, through ``patch`` (a ``pytest.MonkeyPatch``, undone by
    its owner): every half-precision GEMM "fits", and ``_scaled_mm`` is computed from the
    dequantized operands."""
    import torch
    from finetune_trainer.acceleration import float8_base

    def scaled_mm(
        a: Any, b: Any, scale_a: Any, scale_b: Any, out_dtype: Any, **_: Any
    ) -> torch.Tensor:
        return ((a.float() * scale_a) @ (b.float() * scale_b)).to(out_dtype)

    half = (torch.bfloat16, torch.float16)
    patch.setattr(float8_base, "_fp8_gemm_fits", lambda rows, weight: rows.dtype in half)
    patch.setattr(torch, "_scaled_mm", scaled_mm)
    # The GPU tests' training runs, on this CPU.
    from tests.gpu import test_fp8_forward_gpu

    patch.setattr(test_fp8_forward_gpu, "_DEVICE", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=6, help="data draws per comparison")
    args = parser.parse_args()
    import pytest

    from tests.gpu import test_fp8_forward_gpu as fp8_tests

    patch = pytest.MonkeyPatch()
    try:
        emulate_fp8_gemms(patch)
        patch.setattr(fp8_tests, "_DRAWS", args.draws)
        for backward in (False, True):
            fp8_tests.test_fp8_moves_the_final_loss_less_than_another_initialisation_does(backward)
            print(f"passed: FP8 forward{' + down-projection input gradients' if backward else ''}")
        fp8_tests.test_the_final_loss_criterion_rejects_a_gradient_that_is_really_too_coarse(patch)
        print("passed: the criterion rejects three-level gradients")
    finally:
        patch.undo()


if __name__ == "__main__":
    main()

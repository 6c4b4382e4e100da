"""The FP8 loss criterion (tests/gpu/test_fp8_forward_gpu.py) on this CPU, with the tensor
cores' ``_scaled_mm`` emulated from the dequantized e4m3 operands (bench/fp8_emulation.py).

The trainer's own quantization runs, so a change that makes FP8 training worse (a wrong
scale, a coarser format, a gradient quantized where it should not be) moves these numbers on
every CI run, not only when a GPU is lent. About two minutes on two cores.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def test_the_shipped_fp8_forward_and_the_down_projection_backward_pass_the_loss_criterion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.fp8_emulation import emulate_fp8_gemms
    from tests.gpu import test_fp8_forward_gpu as fp8_tests

    emulate_fp8_gemms(monkeypatch)
    for backward in (False, True):
        fp8_tests.test_fp8_moves_the_final_loss_less_than_another_initialisation_does(backward)


def test_the_loss_criterion_rejects_three_level_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.fp8_emulation import emulate_fp8_gemms
    from tests.gpu import test_fp8_forward_gpu as fp8_tests

    emulate_fp8_gemms(monkeypatch)
    fp8_tests.test_the_final_loss_criterion_rejects_a_gradient_that_is_really_too_coarse(
        monkeypatch
    )

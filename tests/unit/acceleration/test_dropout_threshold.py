"""The GPU dropout kernel's unit of ``p`` (triton_kernels.py), checked where CI runs: on CPUs.

The kernel compares 16-bit numbers with ``p`` in 65536ths; a threshold off by one would drop
a different share of every adapter input than the spec's ``method.lora.dropout`` says.
"""

from __future__ import annotations

import pytest
from finetune_trainer.acceleration.triton_kernels import drop_threshold

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9, 0.99999])
def test_the_kernels_drop_probability_is_p_within_half_a_step(p: float) -> None:
    threshold = drop_threshold(p)
    assert 0 <= threshold < 65536  # a 16-bit number is always >= 0: some are always kept
    assert abs(threshold / 65536 - p) <= 1 / 131072 or threshold == 65535


def test_no_dropout_drops_nothing() -> None:
    assert drop_threshold(0.0) == 0

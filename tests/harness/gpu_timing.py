"""Wall-clock timing of GPU work for tests that assert one kernel path beats another."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def gpu_time_ms(fn: Callable[[], Any], repeat: int = 20) -> float:
    """Mean milliseconds per call of ``fn`` after three warm-up calls (compilation, autotuning
    and allocator growth stay out of the figure), synchronising the GPU before and after so
    the queued kernels are what is timed, not their launch."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1e3

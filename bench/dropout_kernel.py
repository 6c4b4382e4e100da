"""GPU time of the seeded dropout kernel (triton_kernels.py): eight 16-bit numbers per Philox
draw (the default) against four (``FTJ_DROPOUT_HALVES=1``, one per 32-bit word, as before
bench/NOTES.md step 32), in one process, on a 7B step's tensor shapes:

    python -m bench.dropout_kernel [--tokens 15000]

Prints microseconds per call for the forward's kernel and the backward's paired kernel, on
hidden-sized (3584) and intermediate-sized (18944) rows, and the ratio of the two ways.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any


def gpu_us(torch: Any, launch: Any, repeats: int = 20) -> float:
    """Median GPU microseconds of ``launch()`` over ``repeats`` calls, by CUDA events."""
    for _ in range(3):
        launch()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=15000)
    args = parser.parse_args()
    import torch
    from finetune_trainer import switches
    from finetune_trainer.acceleration import triton_kernels

    print(f"device: {torch.cuda.get_device_name()}")
    print(f"{'kernel':24s} {'8 per draw us':>14s} {'4 per draw us':>14s} {'ratio':>6s}")
    for width in (3584, 18944):
        kw = {"device": "cuda", "dtype": torch.bfloat16}
        x, t, acc = (torch.randn(args.tokens, width, **kw) for _ in range(3))
        for kind in ("forward", "backward pair"):
            pair = (t, acc) if kind == "backward pair" else None
            us = {}
            for halves in (2, 1):
                with switches.override(dropout_halves=halves):
                    run = functools.partial(triton_kernels._dropout, x, 0.05, 7, pair)
                    us[halves] = gpu_us(torch, run)
            label = f"{kind} x{width}"
            print(f"{label:24s} {us[2]:14.0f} {us[1]:14.0f} {us[1] / us[2]:6.2f}x")


if __name__ == "__main__":
    main()

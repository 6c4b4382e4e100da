"""The host's cost of a GEMM whose row count it has not seen before.

A packed micro-step's token count changes from step to step, and so does the row count of
every GEMM in it. bench/timeline.py found the GPU idle for ~4 ms, with no CUDA call from the
host, before each of the first nine or so GEMMs of an early step's forward and backward
passes: the cost looked like cuBLAS choosing a kernel for a new problem shape. This measures
it directly, against the same call on a row count already seen, in one process (10-108x on an
H200). Steps with equal token counts (``-samelen`` rows) then ran at most ~2% faster than
steps whose count changes: after the first steps the cost is gone or hidden behind the GPU's
queue (bench/NOTES.md step 33):

    python -m bench.gemm_shapes [--rows 15000] [--calls 12]

For each of a 7B layer's GEMM shapes (forward, and the input gradient's) it prints the host's
microseconds per call, the GPU queue kept full, for a new row count every call and for one
row count repeated, and their ratio.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

# (name, in features, out features, bias): a Qwen2.5-7B layer's base projections and its LoRA
# rank-16 bottleneck.
SHAPES = (
    ("q_proj", 3584, 3584, True),
    ("k_proj", 3584, 512, True),
    ("gate_proj", 3584, 18944, False),
    ("down_proj", 18944, 3584, False),
    ("lora_A", 3584, 16, False),
)


def host_us_per_call(torch: Any, x: Any, weight: Any, bias: Any, rows: list[int]) -> float:
    """Host microseconds per ``F.linear`` over ``x[:r]`` for each ``r`` in ``rows``, after
    which the GPU is waited for (so the host's time is not hidden behind a full queue)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for r in rows:
        torch.nn.functional.linear(x[:r], weight, bias)
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=15000)
    parser.add_argument("--calls", type=int, default=12)
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name()
    blas = torch.backends.cuda.preferred_blas_library()
    print(f"device: {device}, torch {torch.__version__}, BLAS {blas}")
    print(f"{'shape':10s} {'new rows us':>12s} {'same rows us':>13s} {'ratio':>6s}")
    fresh = args.rows + 7  # row counts this process has not used yet, one per call
    for name, fan_in, fan_out, has_bias in SHAPES:
        kw = {"device": "cuda", "dtype": torch.bfloat16}
        x = torch.randn(args.rows + 4096, fan_in, **kw)
        weight = torch.randn(fan_out, fan_in, **kw)
        bias = torch.randn(fan_out, **kw) if has_bias else None
        host_us_per_call(torch, x, weight, bias, [args.rows] * 3)  # warm: the repeated count
        same = host_us_per_call(torch, x, weight, bias, [args.rows] * args.calls)
        new_rows = list(range(fresh, fresh + args.calls))
        fresh += args.calls
        new = host_us_per_call(torch, x, weight, bias, new_rows)
        print(f"{name:10s} {new:12.0f} {same:13.0f} {new / same:6.1f}x")


if __name__ == "__main__":
    main()

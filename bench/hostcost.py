"""Where a micro-step's host time goes: the CPU time to enqueue one forward and backward, apart
from the GPU time it asks for, per decoder layer and per variant of the trainer's code path.

A 7B micro-step cost the host ~0.25 s however few tokens it carried (bench/NOTES.md step 25),
so memory-tight plans (many small micro-steps) and small models leave the GPU idle. To split
host from GPU time, the GPU is first given a long ``torch.cuda._sleep``: the micro-step is then
enqueued while the GPU is still busy, so the enqueue time is the host's own cost, and what the
GPU needs after the sleep is its own. Two layer counts of the same shape give the per-layer
slope and the fixed part (embeddings, loss, the trainer's bookkeeping)::

    python -m bench.hostcost --shape qwen2.5-7b --layers 2,6 --tokens 128,1536 \\
        --variants default,dropout0,unfused,float8

Each (variant, layers) pair runs in its own process (Liger patches classes; flags are read at
plan time). Also prints the host cost of single calls (a torch op, a Triton launch, a fused
LoRA linear's forward and backward) with ``--ops``. Writes ``$OUT/hostcost.json`` when set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "trainer-image"), str(REPO / "operator")]

VARIANTS: dict[str, dict[str, Any]] = {
    # name: (environment, build_trainer_path keywords)
    "default": {"env": {}, "build": {}},
    "dropout0": {"env": {}, "build": {"dropout": 0.0}},
    "unfused": {"env": {"FTJ_FUSED_LORA": "0"}, "build": {}},
    "noliger": {"env": {"FTJ_LIGER": "0"}, "build": {}},
    "float8": {"env": {}, "build": {"qlora_bits": 8}},
    "torchdrop": {"env": {"FTJ_TRITON_DROPOUT": "0"}, "build": {}},
    "compile": {"env": {"FTJ_TORCH_COMPILE": "1"}, "build": {}},
}


def _sleep_cycles_per_s() -> float:
    """The GPU's sleep rate (0 without a GPU: CPU dry runs time host and compute together)."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    torch.cuda.synchronize()
    t = time.perf_counter()
    torch.cuda._sleep(100_000_000)
    torch.cuda.synchronize()
    return 100_000_000 / (time.perf_counter() - t)


def split_host_gpu(
    phases: list[Any], cycles_per_s: float, busy_s: float = 0.5
) -> tuple[list[float], float, bool]:
    """(host seconds to enqueue each phase, GPU seconds they then need, whether the host
    waited for the GPU): the phases run one after another while a sleep keeps the GPU busy,
    so their enqueue times are the host's own cost unless one of them syncs."""
    import torch

    if not cycles_per_s:
        marks = [time.perf_counter()]
        for phase in phases:
            phase()
            marks.append(time.perf_counter())
        return [b - a for a, b in zip(marks, marks[1:], strict=False)], 0.0, False
    torch.cuda.synchronize()
    t = time.perf_counter()
    torch.cuda._sleep(int(busy_s * cycles_per_s))
    torch.cuda.synchronize()
    slept = time.perf_counter() - t
    torch.cuda._sleep(int(busy_s * cycles_per_s))
    marks = [time.perf_counter()]
    for phase in phases:
        phase()
        marks.append(time.perf_counter())
    torch.cuda.synchronize()
    end = time.perf_counter()
    hosts = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    waited = marks[-1] - marks[0] > 0.8 * slept
    return hosts, max(0.0, end - marks[0] - slept), waited


def sync_sites(*phases: Any) -> list[str]:
    """Where ``phases``, run in order, make the host wait for the GPU (torch's sync debug
    mode; syncs below torch, in a driver call, are not seen): file:line."""
    import warnings

    import torch

    if not torch.cuda.is_available():
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for phase in phases:
                phase()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
    sites = {
        f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    }
    return sorted(sites)


def _batch(trainer: Any, tokens: int, vocab: int, examples: int = 2) -> dict[str, Any]:
    import random

    rng = random.Random(tokens)
    sizes = [tokens // examples] * (examples - 1)
    sizes.append(tokens - sum(sizes))
    features = []
    for n in sizes:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        features.append({"input_ids": ids, "labels": ids})
    return trainer._prepare_inputs(trainer.data_collator(features))  # type: ignore[no-any-return]


def _phases(trainer: Any, decoder: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(forward of the decoder stack, its backward, one whole trainer micro-step)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    held: dict[str, Any] = {}

    def forward() -> None:
        with trainer.compute_loss_context_manager():
            held["out"] = decoder(**inputs).last_hidden_state.float().square().mean()

    def backward() -> None:
        held.pop("out").backward()

    def micro_step() -> None:
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, batch)
        trainer.accelerator.backward(loss)

    return forward, backward, micro_step


def child(a: argparse.Namespace) -> dict[str, Any]:
    """One variant at one layer count: host and GPU time of the decoder stack's forward and
    backward (no loss: the loss's own host syncs, TRL's metrics and Liger's token count,
    would hide the host's time), and of a whole trainer micro-step for comparison."""
    import torch

    from bench import synthetic, worker
    from bench.run import prepare_checkpoint
    from bench.shapes import SHAPES

    ckpt = prepare_checkpoint(f"{a.shape}-{a.layers}layers", Path(a.ckpt_root))
    tok = synthetic.load_tokenizer(ckpt)
    vocab = SHAPES[a.shape]["vocab_size"]
    rows = synthetic.examples(40, vocab, seed=1)
    ns = argparse.Namespace(steps=2)
    trainer = worker.build_trainer_path(ckpt, tok, rows, ns, **VARIANTS[a.variant]["build"])
    model = trainer.model
    model.train()
    decoder = model.get_base_model().model

    cycles = _sleep_cycles_per_s()
    sync = torch.cuda.synchronize if cycles else (lambda: None)
    result: dict[str, Any] = {
        "variant": a.variant,
        "layers": a.layers,
        "plan": trainer._ftj_plan.describe(),
        "tokens": {},
    }
    for tokens in a.tokens:
        batch = _batch(trainer, tokens, vocab)
        forward, backward, micro_step = _phases(trainer, decoder, batch)
        for _ in range(3):  # warm-up: Triton compilation, allocator
            forward()
            backward()
            micro_step()
        sync()
        splits = [split_host_gpu([forward, backward], cycles) for _ in range(a.repeats)]
        sync()
        t = time.perf_counter()
        for _ in range(a.repeats):
            micro_step()
        sync()
        wall = (time.perf_counter() - t) / a.repeats
        fwd = sorted(s[0][0] for s in splits)
        bwd = sorted(s[0][1] for s in splits)
        gpus = sorted(s[1] for s in splits)
        mid = len(splits) // 2
        result["tokens"][str(tokens)] = {
            "host_fwd_ms": round(1e3 * fwd[mid], 2),
            "host_bwd_ms": round(1e3 * bwd[mid], 2),
            "gpu_ms": round(1e3 * gpus[mid], 2),
            "host_waited": any(s[2] for s in splits),  # a sync: host figures are not host time
            "micro_step_wall_ms": round(1e3 * wall, 2),
        }
        if tokens == a.tokens[-1]:
            result["sync_sites_layers"] = sync_sites(forward, backward)
            result["sync_sites_micro_step"] = sync_sites(micro_step)
        model.zero_grad(set_to_none=True)
    if a.ops and cycles:
        result["ops_us"] = op_costs(cycles)
    return result


def op_costs(cycles_per_s: float, calls: int = 200) -> dict[str, Any]:
    """Host microseconds per call of single operations on small CUDA tensors, or "syncs" where
    the calls made the host wait for the GPU (with torch's sync debug sites where it sees them)."""
    import torch
    from finetune_trainer.acceleration import lora_fused, triton_kernels

    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    a_w = torch.randn(16, 256, device="cuda", dtype=torch.float32, requires_grad=True)
    b_w = torch.zeros(256, 16, device="cuda", dtype=torch.float32, requires_grad=True)
    x_grad = x.clone().requires_grad_(True)
    a_bf, b_bf = a_w.detach().to(torch.bfloat16), b_w.detach().to(torch.bfloat16)

    def lora(p: float) -> Any:
        return lora_fused.LoraLinearFunction.apply(x_grad, w, None, None, None, a_w, b_w, 2.0, p, 7)

    def autocast_off() -> None:
        with torch.autocast(device_type="cuda", enabled=False):
            pass

    cases: dict[str, Any] = {
        "torch.add": lambda: torch.add(x, x),
        "torch.mm": lambda: torch.mm(x, w),
        "F.linear": lambda: torch.nn.functional.linear(x, w),
        "addmm_ alpha": lambda: torch.mm(x, w).addmm_(x @ a_bf.t(), b_bf.t(), alpha=2.0),
        "fp32->bf16 cast": lambda: a_w.to(torch.bfloat16),
        "autocast(enabled=False) enter+exit": autocast_off,
        "cpu randint().item()": lambda: int(torch.randint(0, 2**62, (1,)).item()),
        "lora_fused.dropped p=0.05": lambda: lora_fused.dropped(x, 0.05, 7),
        "dropped(x) @ A.T": lambda: lora_fused.dropped(x, 0.05, 7) @ a_w.to(torch.bfloat16).t(),
        "_lora_forward p=0.05 (no autograd)": lambda: lora_fused._lora_forward(
            x, w, None, None, None, a_w, b_w, 2.0, 0.05, 7
        ),
        "_lora_forward p=0 (no autograd)": lambda: lora_fused._lora_forward(
            x, w, None, None, None, a_w, b_w, 2.0, 0.0, 7
        ),
        "fused LoRA forward p=0": lambda: lora(0.0),
        "fused LoRA forward p=0.05": lambda: lora(0.05),
        "fused LoRA forward+backward p=0.05": lambda: lora(0.05).sum().backward(),
    }
    if triton_kernels.available(x):
        cases["triton seeded_dropout"] = lambda: triton_kernels.seeded_dropout(x, 0.05, 7)
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        norm_w = torch.ones(256, device="cuda", dtype=torch.bfloat16)
        cases["liger rms_norm forward"] = lambda: LigerRMSNormFunction.apply(x, norm_w, 1e-6)
    except ImportError:
        pass
    costs: dict[str, Any] = {}
    for label, fn in cases.items():
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        busy = int(1.0 * cycles_per_s)
        torch.cuda._sleep(busy)
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - t
        torch.cuda.synchronize()
        if elapsed > 0.8:  # waited for the sleep: a sync
            costs[label] = {"syncs": sync_sites(fn)}
        else:
            costs[label] = round(1e6 * elapsed / calls, 1)
    return costs


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", default="qwen2.5-7b")
    p.add_argument("--layers", default="2,6")
    p.add_argument("--tokens", default="128,1536")
    p.add_argument("--variants", default="default")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ops", action="store_true", help="also time single calls (first run only)")
    p.add_argument("--ckpt-root", default="/tmp/ftj-bench-models")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.tokens = [int(t) for t in str(a.tokens).split(",")]
    if a.child:
        a.layers, a.variant = int(a.layers), a.variants
        print("HOSTCOST " + json.dumps(child(a)), flush=True)
        return
    results = []
    first = True
    for variant in a.variants.split(","):
        for layers in a.layers.split(","):
            env = {**os.environ, "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
            env.update(VARIANTS[variant]["env"])
            cmd = [
                sys.executable, "-m", "bench.hostcost", "--child", "--shape", a.shape,
                "--layers", layers, "--tokens", ",".join(map(str, a.tokens)),
                "--variants", variant, "--repeats", str(a.repeats), "--ckpt-root", a.ckpt_root,
            ] + (["--ops"] if a.ops and first else [])  # fmt: skip
            first = False
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            lines = [x for x in done.stdout.splitlines() if x.startswith("HOSTCOST ")]
            if not lines:
                results.append(
                    {"variant": variant, "layers": int(layers), "error": done.stderr[-2000:]}
                )
                print(
                    f"[hostcost] {variant} {layers} layers failed:\n{done.stderr[-2000:]}",
                    flush=True,
                )
                continue
            results.append(json.loads(lines[-1][len("HOSTCOST ") :]))
            print(f"[hostcost] {json.dumps(results[-1])}", flush=True)
    print(report(results, a.tokens))
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "hostcost.json").write_text(json.dumps(results, indent=1))


def report(results: list[dict[str, Any]], tokens: list[int]) -> str:
    """Per variant and token count: host (forward, backward) and GPU ms per decoder layer, the
    slope between the two layer counts."""
    head = f"{'variant':<10} {'tokens':>6} {'host fwd':>9} {'host bwd':>9} {'gpu':>7}  ms/layer"
    lines = [head]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if "error" not in r:
            by_variant.setdefault(r["variant"], []).append(r)
    for variant, runs in by_variant.items():
        runs.sort(key=lambda r: r["layers"])
        if len(runs) < 2:
            continue
        lo, hi = runs[0], runs[-1]
        span = hi["layers"] - lo["layers"]
        for t in map(str, tokens):
            d = {
                k: (hi["tokens"][t][k] - lo["tokens"][t][k]) / span
                for k in ("host_fwd_ms", "host_bwd_ms", "gpu_ms")
            }
            flag = " (host waited: a sync)" if hi["tokens"][t]["host_waited"] else ""
            lines.append(
                f"{variant:<10} {t:>6} {d['host_fwd_ms']:>9.2f} {d['host_bwd_ms']:>9.2f} "
                f"{d['gpu_ms']:>7.2f}{flag}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Throughput benchmark: the trainer's default against the tutorial baseline and the best peer.

    python -m bench.run                       # all models, all configurations (one GPU call)
    python -m bench.run --models qwen2.5-7b --configs baseline,default
    python -m bench.run --rows qwen2.5-1.5b:default:merge,llama-3.1-8b:qlora-8bit-24g
    python -m bench.run --rows tiny-qwen2:default:merge --steps 3 --warmup 1   # CPU dry run
    python -m bench.run --rows qwen2.5-7b:default,qwen2.5-7b:default:gpus=2   # 2-GPU scaling

``--rows`` lists model:config pairs; ``:steps=N`` overrides ``--steps`` for the row,
``:gpus=N`` runs the row under ``torchrun --standalone --nproc-per-node N`` (DDP, or FSDP where
the plan shards; see ``run_row``), and ``:merge`` also times the trainer's full merge (the
adapter saved to local disk, then ``finetune_trainer.merge.merge_adapter`` reloading the base
from disk, merging and writing safetensors). A config may end in ablation or diagnostic
suffixes, stacked (``-nostream``, ``-draw4``, ``-trace``, ``-samelen``, ...): the list, and
what each changes, is ``ENVIRONMENT_SUFFIXES`` in ``bench/worker.py`` (``split_config``
reads them). ``--deadline-s`` bounds the whole run: each row's timeout shrinks to what is
left, so a slow last row cannot take the earlier rows' results with it.

For each model shape a random-initialised checkpoint is written once (safetensors), then every
configuration trains on the same synthetic CoT-like data in a fresh process (``bench/worker.py``)
for ``--steps`` optimizer steps, of which the first ``--warmup`` are not timed. Prints a table
and writes ``bench/results/<date>-<device>.json`` (a CPU dry run: the temp directory; a copy
under ``$OUT`` when set).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "trainer-image"), str(REPO / "operator")]

from bench.shapes import SHAPES, make_config  # noqa: E402

PEERS = ("trl-packing-liger", "trl-packing-liger-flex", "trl-packing")
DEFAULT_CONFIGS = ("baseline", "trl-packing-liger", "trl-packing-liger-flex", "default")
NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def prepare_checkpoint(name: str, root: Path, max_shard_size: str | None = None) -> Path:
    """A random-init checkpoint of the named shape (+ tokenizer), written once per machine;
    ``max_shard_size`` cuts it into safetensors shards as the hub's checkpoints are
    (bench/first_step.py), else transformers' default."""
    path = root / name
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    shards = "" if max_shard_size is None else f", max_shard_size={max_shard_size!r}"
    code = (
        "import torch, sys\n"
        "from pathlib import Path\n"
        "from transformers import AutoModelForCausalLM\n"
        "from bench.shapes import make_config\n"
        "from bench import synthetic\n"
        f"cfg = make_config({name!r})\n"
        "torch.manual_seed(0)\n"
        "with torch.device('cuda' if torch.cuda.is_available() else 'cpu'):\n"
        "    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)\n"
        f"model.save_pretrained({str(path)!r}{shards})\n"
        f"synthetic.save_tokenizer(Path({str(path)!r}))\n"
    )
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    print(f"[bench] wrote {name} in {time.perf_counter() - t:.0f}s", flush=True)
    return path


def measure_matmul_tflops() -> float:
    """The card's bf16 matrix rate on random data (8192^3, median of 20 after warm-up)."""
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return 2 * 8192**3 / times[len(times) // 2] / 1e12


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def run_row(
    model: str,
    config: str,
    ckpt: Path,
    out: Path,
    steps: int,
    timeout: float,
    warmup: int = 3,
    full_merge: bool = False,
    micro_examples: int | None = None,
    gpus: int = 1,
) -> dict[str, Any]:
    """One row in a fresh worker process; with ``gpus`` > 1, ``gpus`` workers under
    ``torchrun --standalone`` (one per GPU; gloo between CPU processes in a dry run), each
    training the row's spec as a ``resources.gpus: N`` job's ranks do: every rank carries the
    single-GPU row's examples per optimizer step (the Trainer's per-device batch), so the
    optimizer step is N times larger and the row measures throughput, not time to a fixed
    batch. Each rank appends its own result; ``combine_ranks`` makes them one row."""
    from bench.worker import split_config

    suffixes = split_config(config)[1]  # ENVIRONMENT_SUFFIXES, as many as the name stacks
    env = dict(os.environ)
    if micro_examples:  # the plan's micro-step pinned (row flag micro=N)
        env["FTJ_MICRO_EXAMPLES"] = str(micro_examples)
    env["PYTHONUNBUFFERED"] = "1"
    if config.startswith(("default", "qlora")):
        # The trainer's entry point sets this too: packed rows vary in length every step.
        env["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    if "-24g" in config:
        # A 24 GB card has ~22.3 GiB less the CUDA context: plan for 21, cap allocations at 21.8.
        env["FTJ_MEMORY_BUDGET_GIB"] = "21"
        env["FTJ_BENCH_CAP_GIB"] = "21.8"
    if config.endswith("-h100-80g"):
        # The plan an 80 GB H100 gets (85% of 80 GB), the allocator capped at what such a card
        # leaves after the CUDA context: the H100 figure's memory side, on this GPU's compute.
        env["FTJ_MEMORY_BUDGET_GIB"] = "63.3"
        env["FTJ_BENCH_CAP_GIB"] = "74"
    if "-18g" in config:  # 60% of the tutorial baseline's 30.5 GiB on the 7B shape
        env["FTJ_MEMORY_BUDGET_GIB"] = "18"
    if "-nofp8" in suffixes:  # ablation: every GEMM in bf16, no FP8 tensor cores
        env["FTJ_FP8_COMPUTE"] = "0"
    if "-fp8fwd" in suffixes:  # a 16-bit base's forward GEMMs on FP8 tensor cores
        env["FTJ_FP8_FORWARD_16BIT"] = "1"  # (the default since session 17)
    if "-bf16fwd" in suffixes:  # ablation: a 16-bit base's forward GEMMs in bf16
        env["FTJ_FP8_FORWARD_16BIT"] = "0"
    if "-fp8bwd" in suffixes:  # input gradients on FP8 tensor cores, whatever the base
        env["FTJ_FP8_BACKWARD"] = "1"  # a Float8 base's
        env["FTJ_FP8_BACKWARD_16BIT"] = "1"  # a 16-bit base's down projections
    if "-bf16bwd" in suffixes:  # ablation: a 16-bit base's input gradients in bf16
        env["FTJ_FP8_BACKWARD_16BIT"] = "0"
    if "-dropfuse" in suffixes:  # the LoRA dropout inside the rank-r GEMMs
        env["FTJ_FUSED_DROPOUT_GEMM"] = "1"
    if "-nodropfuse" in suffixes:  # ablation: a dropout kernel writes the dropped copies
        env["FTJ_FUSED_DROPOUT_GEMM"] = "0"
    if "-profile" in suffixes:
        env["FTJ_BENCH_PROFILE"] = "1"
    if "-hostprofile" in suffixes:
        env["FTJ_BENCH_PROFILE"] = "host"
    if "-trace" in suffixes:  # when the GPU waited in one step (bench/timeline.py)
        env["FTJ_BENCH_PROFILE"] = "trace"
    if "-maskscan" in suffixes:  # ablation: transformers' packed-sequence scan (a sync)
        env["FTJ_PACKED_MASK_SCAN"] = "1"
    if config == "default-unfused":
        env["FTJ_FUSED_LORA"] = "0"
    if "-compile" in suffixes:
        env["FTJ_TORCH_COMPILE"] = "1"
    if "-noskip" in suffixes:  # ablation: recomputed layers redo their down projection
        env["FTJ_RECOMPUTE_SKIP"] = "0"
    if "-unpaired" in suffixes:  # ablation: the backward draws its two masks apart
        env["FTJ_PAIRED_DROPOUT"] = "0"
    if "-draw4" in suffixes:  # ablation: four dropout numbers per Philox draw, not eight
        env["FTJ_DROPOUT_HALVES"] = "1"
    if "-nostream" in suffixes:  # ablation: every frozen weight stays on the GPU
        env["FTJ_STREAM_WEIGHTS"] = "0"
    if "-peftnf4" in suffixes:  # ablation: 4-bit bases in peft's fp32 recipe and forward
        env["FTJ_FUSED_NF4"] = "0"
    if "-nocast" in suffixes:  # ablation: 8-bit base layers compute in fp32 (peft's cast)
        env["FTJ_INT8_HALF_COMPUTE"] = "0"
    if timeout <= 5:
        return {"model": model, "config": config, "error": "not run: deadline reached"}
    cmd = [
        sys.executable, "-m", "bench.worker", "--model", model, "--config", config,
        "--ckpt", str(ckpt), "--out", str(out), "--steps", str(steps), "--warmup", str(warmup),
    ] + (["--full-merge"] if full_merge else [])  # fmt: skip
    if gpus > 1:
        from bench.worker import EXAMPLES_PER_STEP

        # As many examples per rank as a single-GPU row has (worker.main's default count).
        cmd += ["--examples", str((steps + 4) * EXAMPLES_PER_STEP * 2 * gpus)]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(gpus)]  # fmt: skip
        cmd = [*launcher, *cmd[1:]]  # "-m bench.worker ..." after torchrun's own arguments
        if not gpu_count():  # a CPU dry run: gloo between the processes (accelerate's switch)
            env.update(ACCELERATE_USE_CPU="true", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    before = out.read_text().count("\n") if out.exists() else 0
    t = time.perf_counter()
    try:
        subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": model, "config": config, "error": f"timed out after {timeout:.0f}s"}
    lines = out.read_text().splitlines() if out.exists() else []
    if len(lines) <= before:
        return {"model": model, "config": config, "error": "worker died without a result"}
    if gpus > 1:
        row = combine_ranks(model, config, [json.loads(x) for x in lines[before:]], gpus)
    else:
        row = json.loads(lines[-1])
    row["wall_s"] = round(time.perf_counter() - t, 1)
    return row


def combine_ranks(
    model: str, config: str, ranks: list[dict[str, Any]], gpus: int
) -> dict[str, Any]:
    """One row from the ``gpus`` ranks' own rows: the tokens of every rank over the slowest
    rank's timed window (DDP keeps them in step), and the worst rank's memory, first step and
    step times; the rest (plan, losses: the Trainer logs the mean over ranks) from the first."""
    name = {"model": model, "config": config, "gpus": gpus}
    errors = [r["error"] for r in ranks if "error" in r]
    if errors:
        return {**name, "error": f"{len(errors)} of {gpus} ranks failed: {errors[0]}"}
    if len(ranks) != gpus:
        return {**name, "error": f"{len(ranks)} of {gpus} ranks wrote a result"}
    seconds = max(r["timed_seconds"] for r in ranks)
    tokens = sum(r["timed_tokens"] for r in ranks)
    row = {**ranks[0], **name}
    row.update(
        timed_seconds=seconds,
        timed_tokens=tokens,
        tokens_per_s=round(tokens / seconds, 1),
        tokens_per_step=sum(r["tokens_per_step"] for r in ranks),
        tokens_per_s_per_rank=[r["tokens_per_s"] for r in ranks],
        step_seconds=[max(s) for s in zip(*(r["step_seconds"] for r in ranks), strict=True)],
        peak_gib=max(r["peak_gib"] for r in ranks),
        peak_reserved_gib=max(r["peak_reserved_gib"] for r in ranks),
        peak_gib_per_rank=[r["peak_gib"] for r in ranks],
        time_to_first_step_s=max(r["time_to_first_step_s"] for r in ranks),
    )
    return row


def gpu_count() -> int:
    """CUDA GPUs on this machine (0 on a CPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def enrich(rows: list[dict[str, Any]], peak_tflops: float) -> None:
    from finetune_trainer.acceleration import ModelShape

    for row in rows:
        shape = ModelShape.from_config(make_config(row["model"]))
        row["params_4n"] = shape.matmul_params
        if "tokens_per_s" in row:  # per GPU: the measured rate is one card's
            per_gpu = row["tokens_per_s"] / row.get("gpus", 1)
            row["mfu_4n"] = round(per_gpu * 4 * shape.matmul_params / (peak_tflops * 1e12), 3)
    # Several GPUs: against the same model and config on one GPU in this call.
    single = {
        (r["model"], r["config"]): r["tokens_per_s"]
        for r in rows
        if r.get("gpus", 1) == 1 and "tokens_per_s" in r
    }
    for row in rows:
        gpus = row.get("gpus", 1)
        one = single.get((row["model"], row["config"].split(":gpus=")[0]))
        if gpus > 1 and one and "tokens_per_s" in row:
            row["vs_1gpu"] = round(row["tokens_per_s"] / one, 2)
            row["scaling_efficiency"] = round(row["tokens_per_s"] / (one * gpus), 3)
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.get("gpus", 1) == 1:  # the baseline and peers are single-GPU rows
            by_model.setdefault(row["model"], {})[row["config"]] = row
    for configs in by_model.values():
        base = configs.get("baseline", {}).get("tokens_per_s")
        base_mem = configs.get("baseline", {}).get("peak_gib")
        peers = [
            (c, r["tokens_per_s"]) for c, r in configs.items() if c in PEERS and "tokens_per_s" in r
        ]
        best = max(peers, key=lambda p: p[1]) if peers else None
        for row in configs.values():
            if "tokens_per_s" not in row:
                continue
            if base:
                row["vs_baseline"] = round(row["tokens_per_s"] / base, 2)
            if base_mem:
                row["peak_vs_baseline"] = round(row["peak_gib"] / base_mem, 2)
            if best:
                row["best_peer"] = best[0]
                row["vs_best_peer"] = round(row["tokens_per_s"] / best[1], 2)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<14} {'config':<24} {'tok/s':>8} {'MFU4N':>6} {'peakGiB':>8} {'resGiB':>7} "
        f"{'1st step s':>10} {'merge s':>7} {'xbase':>6} {'xpeer':>6} {'x1gpu':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<14} {r['config']:<24} ERROR {r['error'][:90]}")
            continue
        lines.append(
            f"{r['model']:<14} {r['config']:<24} {r['tokens_per_s']:>8.0f} "
            f"{r.get('mfu_4n', 0):>6.3f} {r['peak_gib']:>8.1f} {r['peak_reserved_gib']:>7.1f} "
            f"{r['time_to_first_step_s']:>10.1f} "
            f"{r.get('merge_s', float('nan')):>7.2f} {r.get('vs_baseline', float('nan')):>6.2f} "
            f"{r.get('vs_best_peer', float('nan')):>6.2f} {r.get('vs_1gpu', float('nan')):>6.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(m for m in SHAPES if not m.startswith("tiny")))
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    p.add_argument("--steps", type=int, default=11, help="optimizer steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps per row")
    p.add_argument(
        "--rows",
        default="",
        help="model:config[:merge][:steps=N][:micro=N][:gpus=N],... instead of the product",
    )
    p.add_argument("--deadline-s", type=float, default=0.0, help="bound on the whole run")
    p.add_argument("--ckpt-root", type=Path, default=Path("/tmp/ftj-bench-models"))
    p.add_argument("--row-timeout", type=int, default=300)
    p.add_argument("--tag", default="")
    a = p.parse_args()
    t_start = time.perf_counter()

    device = device_name()
    peak = measure_matmul_tflops()
    print(f"[bench] device {device}: measured bf16 matmul {peak:.0f} TFLOP/s", flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    # A CPU dry run checks code paths; its figures are not results, so they stay out of the repo.
    results_dir = REPO / "bench" / "results" if device != "cpu" else Path(tempfile.gettempdir())
    results_dir.mkdir(parents=True, exist_ok=True)
    jsonl = Path(os.environ.get("OUT", "/tmp")) / "rows.jsonl"
    plan: list[tuple[str, str, bool, int, int | None, int]] = []
    if a.rows:
        for item in a.rows.split(","):
            model, config, *flags = item.split(":")
            steps = [int(f[6:]) for f in flags if f.startswith("steps=")]
            micro = [int(f[6:]) for f in flags if f.startswith("micro=")]
            gpus = [int(f[5:]) for f in flags if f.startswith("gpus=")]
            plan.append(
                (
                    model,
                    config,
                    "merge" in flags,
                    steps[0] if steps else a.steps,
                    micro[0] if micro else None,
                    gpus[0] if gpus else 1,
                )
            )
    else:
        for model in a.models.split(","):
            for config in a.configs.split(","):
                if model != "llama-3.1-8b" and config.startswith("qlora"):
                    continue  # the QLoRA rows answer "does 8B fit a 24 GB card"
                plan.append((model, config, False, a.steps, None, 1))
    available = gpu_count()
    rows: list[dict[str, Any]] = []
    for model, config, full_merge, steps, micro, gpus in plan:
        timeout: float = a.row_timeout
        if a.deadline_s:
            timeout = min(timeout, a.deadline_s - (time.perf_counter() - t_start))
        if timeout <= 5:
            row = {"model": model, "config": config, "error": "not run: deadline reached"}
        elif available and gpus > available:
            row = {"model": model, "config": config, "gpus": gpus,
                   "error": f"not run: {gpus} GPUs asked, {available} here"}  # fmt: skip
        else:
            ckpt = prepare_checkpoint(model, a.ckpt_root)
            if a.deadline_s:
                timeout = min(timeout, a.deadline_s - (time.perf_counter() - t_start))
            row = run_row(
                model, config, ckpt, jsonl, steps, timeout, a.warmup, full_merge, micro, gpus
            )
            if micro:
                row["config"] = f"{config}:micro={micro}"  # the row names its pinned plan
        if gpus > 1:
            row["config"] = f"{row['config']}:gpus={gpus}"  # apart from the one-GPU row
        rows.append(row)
        print(f"[bench] {json.dumps(row)}", flush=True)
    enrich(rows, peak)
    result = {
        "device": device,
        "gpus_on_machine": available,
        "date": stamp,
        "matmul_bf16_tflops_measured": round(peak, 1),
        "steps": {"total": a.steps, "warmup": a.warmup},
        "mfu_denominator": "measured bf16 matmul rate (8192^3 random data)",
        "tokens_per_step_target": "20 examples (~15.6k real tokens)",
        "rows": rows,
    }
    slug = device.replace("NVIDIA ", "").replace(" ", "-").lower()
    name = f"{stamp}-{slug}{('-' + a.tag) if a.tag else ''}.json"
    text = json.dumps(result, indent=1)
    (results_dir / name).write_text(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / name).write_text(text)
    print(table(rows))
    print(f"[bench] results: {results_dir / name}")


if __name__ == "__main__":
    main()

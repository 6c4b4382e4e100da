"""Time to the first step from S3 against local disk (issue 24 item 3): where the seconds go.

The device call (one GPU; the wheels as every bench call installs them)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD:$PWD/operator:$PWD/trainer-image \
      && python3 -m bench.first_step --shape qwen2.5-7b \
         --runs local,s3-before,s3-ranged,s3-after --out $OUT

CPU dry run of the same code paths (a 4 MB model in two shards)::

    python3 -m bench.first_step --shape tiny-qwen2

What it does. A random-init checkpoint of the shape is written once (safetensors, cut into
4 GB shards as the hub's Qwen2.5-7B is: bench.run's ``prepare_checkpoint`` writes one 15 GB
file, which no published 7B has) with the bench's tokenizer. ``bench/s3_dir_server.py`` serves
the checkpoint folder as the bucket ``models`` over HTTP from this process (an emulated S3:
boto3's real client talks HTTP to it). Each run is a fresh process with an empty cache folder
that goes down the trainer's own path, in the order ``run_job`` takes it: the tokenizer's files
(``Storage.fetch_tokenizer``), the weights (``Storage.fetch_model``), the plan
(``plan_model``), the model built to it (``prepare_training``: base weights onto the GPU,
LoRA, the trainer) and one optimizer step (``Trainer.train``, ``maxSteps: 1``) on the bench's
synthetic data. Runs:

* ``local``: ``spec.model.uri`` is the checkpoint's local path (in the page cache: it was just
  written, so this is the best case for local disk);
* ``s3-before``: ``s3://models/<shape>`` as the trainer fetched it before issue 24
  (``FTJ_RANGED_DOWNLOAD=0``: boto3's managed transfer, 4 files x 8 threads, then the load);
* ``s3-ranged``: ranged GETs written in place, the load after the last byte
  (``FTJ_LOAD_WHILE_DOWNLOADING=0``): the first lever alone;
* ``s3-after``: ranged GETs, each tensor loaded as soon as its bytes are in (the default since
  session 17).

Slices per run (seconds; ``download_s`` and ``load_to_gpu_s`` overlap in ``s3-after``):
``startup_s`` (process start, imports), ``tokenizer_s`` (tokenizer files fetched and loaded,
data made), ``fetch_call_s`` (how long ``fetch_model`` blocked), ``download_s`` (first to last
byte of the weights), ``plan_s``, ``load_to_gpu_s`` (``load_base_model``: waiting for bytes
included), ``build_s`` (the rest of ``prepare_training``: LoRA, trainer), ``weights_ready_s``
(fetch start to the model on the GPU: the critical path the levers shorten), ``first_step_s``
(the first optimizer step, kernels' compilation included) and ``total_s`` (process start to the
end of the first step), and ``vs_local`` = total_s / the local run's. One line per run; JSON
in ``bench/results/<date>-<device>-first-step.json`` (a CPU dry run: the temp folder) and
``$OUT``.
"""

from __future__ import annotations

import time

T_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
for _sub in ("trainer-image", "operator", ""):
    _path = str(REPO / _sub) if _sub else str(REPO)
    if _path not in sys.path:
        sys.path.insert(0, _path)

BUCKET = "models"
RUNS: dict[str, dict[str, str]] = {  # run → its FTJ_* switches
    "local": {},
    "s3-before": {"FTJ_RANGED_DOWNLOAD": "0"},
    "s3-ranged": {"FTJ_RANGED_DOWNLOAD": "1", "FTJ_LOAD_WHILE_DOWNLOADING": "0"},
    "s3-after": {"FTJ_RANGED_DOWNLOAD": "1", "FTJ_LOAD_WHILE_DOWNLOADING": "1"},
}
SLICES = (
    "startup_s",
    "tokenizer_s",
    "fetch_call_s",
    "download_s",
    "plan_s",
    "load_to_gpu_s",
    "build_s",
    "weights_ready_s",
    "first_step_s",
    "total_s",
)


def prepare_sharded_checkpoint(name: str, root: Path, max_shard_size: str) -> Path:
    """A random-init checkpoint of the named shape in ``max_shard_size`` shards, with the
    bench's tokenizer; written once per machine."""
    from bench.run import prepare_checkpoint

    return prepare_checkpoint(name, root, max_shard_size)


# ------------------------------------------------------------------------------------------
# One run, in its own process
# ------------------------------------------------------------------------------------------


def worker(a: argparse.Namespace) -> dict[str, Any]:
    """One run down the trainer's path (see the module doc); its row."""
    from types import SimpleNamespace

    import torch
    from finetune_api.spec import FineTuneJobSpec, S3Storage
    from finetune_trainer import model as model_module
    from finetune_trainer import switches
    from finetune_trainer.acceleration import DeviceInfo
    from finetune_trainer.data import make_collator
    from finetune_trainer.model import load_tokenizer, plan_model
    from finetune_trainer.storage import Storage
    from finetune_trainer.train import prepare_training
    from transformers import TrainerCallback

    from bench import synthetic
    from bench.worker import EXAMPLES_PER_STEP, dataset

    cuda = torch.cuda.is_available()

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    row: dict[str, Any] = {"run": a.run, "uri": a.uri}
    marks: dict[str, float] = {"start": now()}
    switches.load()
    s3 = None
    if a.endpoint:
        s3 = S3Storage(endpoint=a.endpoint, region="us-east-1", path_style=True)
    storage = Storage(s3)
    cache = Path(a.cache)

    tokenizer_dir = storage.fetch_tokenizer(a.uri, cache)
    tokenizer = load_tokenizer(tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    rows = synthetic.examples(EXAMPLES_PER_STEP * 4, vocab, seed=1)
    mean_tokens = sum(len(r["input_ids"]) for r in rows) / len(rows)
    marks["tokenizer"] = now()

    weights = storage.fetch_model(a.uri, cache)
    marks["fetch_returned"] = now()
    model_dir = weights.result

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": a.uri},
            "datasets": [{"uri": "synthetic.jsonl"}],
            "training": {
                "maxSteps": 1,
                "batchSize": 4,
                "gradientAccumulationSteps": EXAMPLES_PER_STEP // 4,
                "loggingSteps": 1,
                "packing": True,
            },
            "output": {"uri": tempfile.mkdtemp()},
            "resources": {"gpus": 1},
        }
    )
    device = DeviceInfo.detect()
    plan = plan_model(model_dir, spec, device, mean_tokens)
    marks["planned"] = now()

    load_base_model = model_module.load_base_model
    load_times: list[float] = []

    def timed_load(*args: Any, **kwargs: Any) -> Any:  # measures the trainer's own loader
        t = now()
        model = load_base_model(*args, **kwargs)
        load_times.append(now() - t)
        return model

    model_module.load_base_model = timed_load
    data = SimpleNamespace(
        train=dataset([{**r, "labels": r["input_ids"]} for r in rows]), validation=None
    )
    prepared = prepare_training(
        model_dir,
        spec,
        device,
        tokenizer=tokenizer,
        data=data,
        collator=make_collator(tokenizer, packing=True),
        output_dir=Path(tempfile.mkdtemp()),
        mean_example_tokens=mean_tokens,
        plan=plan,
        weights=weights,
    )
    weights.wait()  # as run_job does after building the model
    marks["built"] = now()
    model_module.load_base_model = load_base_model

    class FirstStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.setdefault("first_step", now())

    prepared.trainer.add_callback(FirstStep())
    marks["train"] = now()
    prepared.trainer.train()

    load_s = load_times[0] if load_times else float("nan")
    download = weights.download_seconds if a.endpoint else 0.0
    row.update(
        {
            "startup_s": marks["start"] - T_PROCESS_START,
            "tokenizer_s": marks["tokenizer"] - marks["start"],
            "fetch_call_s": marks["fetch_returned"] - marks["tokenizer"],
            "download_s": download,
            "plan_s": marks["planned"] - marks["fetch_returned"],
            "load_to_gpu_s": load_s,
            "build_s": marks["built"] - marks["planned"] - load_s,
            "weights_ready_s": marks["built"] - marks["tokenizer"],
            "first_step_s": marks["first_step"] - marks["train"],
            "total_s": marks["first_step"] - T_PROCESS_START,
            "weights_gb": round(
                sum(p.stat().st_size for p in Path(weights.folder).glob("*.safetensors")) / 1e9, 3
            ),
            "plan": plan.describe(),
            "switches": {
                "ranged_download": switches.active().ranged_download,
                "load_while_downloading": switches.active().load_while_downloading,
            },
        }
    )
    if download:
        row["download_gb_per_s"] = round(row["weights_gb"] / download, 2)
    if cuda:
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    for key in SLICES:
        row[key] = round(row[key], 2)
    return row


# ------------------------------------------------------------------------------------------
# The runs, one process each, against one server
# ------------------------------------------------------------------------------------------


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def run_one(
    run: str, uri: str, endpoint: str, cache: Path, timeout: float, log_dir: Path
) -> dict[str, Any]:
    """One run in a fresh process with an empty cache folder (removed afterwards: its dirty
    pages must not slow the next run's writes)."""
    if timeout <= 5:
        return {"run": run, "error": "not run: deadline reached"}
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    out = cache.parent / f"{run}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, **RUNS[run], "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # as the trainer's entry
    env.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    cmd = [sys.executable, "-m", "bench.first_step", "--worker", "--run", run, "--uri", uri]
    cmd += ["--cache", str(cache), "--json-out", str(out)]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    log = log_dir / f"{run}.log"
    t = time.perf_counter()
    try:
        with log.open("w") as sink:
            subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, stdout=sink, stderr=sink)
    except subprocess.TimeoutExpired:
        return {"run": run, "error": f"timed out after {timeout:.0f}s"}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if not out.exists():
        tail = log.read_text()[-1500:] if log.exists() else ""
        return {"run": run, "error": "worker died without a result", "log_tail": tail}
    row: dict[str, Any] = json.loads(out.read_text())
    row["wall_s"] = round(time.perf_counter() - t, 1)
    return row


def line(row: dict[str, Any]) -> str:
    """One printed line per run."""
    if "error" in row:
        return f"{row['run']:<10} ERROR {row['error']}"
    slices = " ".join(f"{k[:-2]}={row[k]:.1f}" for k in SLICES)
    ratio = f" x{row['vs_local']:.2f} local" if "vs_local" in row else ""
    rate = f" {row['download_gb_per_s']:.2f}GB/s" if "download_gb_per_s" in row else ""
    return f"{row['run']:<10} {slices}{ratio}{rate}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", default="qwen2.5-7b")
    p.add_argument("--runs", default="local,s3-before,s3-ranged,s3-after")
    p.add_argument("--shard-size", default="", help="max_shard_size (default 4GB; tiny: 2MB)")
    p.add_argument("--ckpt-root", type=Path, default=Path("/tmp/ftj-first-step-models"))
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="also write the JSON here")
    p.add_argument("--deadline-s", type=float, default=330.0, help="bound on the whole call")
    p.add_argument("--run-timeout", type=float, default=150.0)
    p.add_argument("--tag", default="")
    # A run's own process (internal):
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.worker:
        from finetune_trainer.entry import configure_logging

        configure_logging()
        row = worker(a)
        a.json_out.write_text(json.dumps(row))
        print(json.dumps(row), flush=True)
        return

    from bench.s3_dir_server import serving

    t_start = time.perf_counter()
    runs = [r for r in a.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    shard = a.shard_size or ("2MB" if a.shape.startswith("tiny") else "4GB")
    ckpt = prepare_sharded_checkpoint(a.shape, a.ckpt_root, shard)
    shards = sorted(p.name for p in ckpt.glob("*.safetensors"))
    print(f"[first-step] {ckpt}: {len(shards)} safetensors files", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ftj-first-step-"))
    rows: list[dict[str, Any]] = []
    with serving(a.ckpt_root, BUCKET) as server:
        for run in runs:
            uri = str(ckpt) if run == "local" else f"s3://{BUCKET}/{a.shape}"
            endpoint = "" if run == "local" else server.endpoint_url
            sent = server.bytes_sent
            timeout = min(a.run_timeout, a.deadline_s - (time.perf_counter() - t_start))
            row = run_one(run, uri, endpoint, work / "cache", timeout, work)
            row["served_gb"] = round((server.bytes_sent - sent) / 1e9, 3)
            rows.append(row)
            print(f"[first-step] {line(row)}", flush=True)
    device = device_name()  # after the runs: no CUDA context in this process while they run
    local = next((r for r in rows if r["run"] == "local" and "total_s" in r), None)
    for row in rows:
        if local is not None and "total_s" in row:
            row["vs_local"] = round(row["total_s"] / local["total_s"], 2)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    slug = device.replace("NVIDIA ", "").replace(" ", "-").lower()
    result = {
        "device": device,
        "date": stamp,
        "shape": a.shape,
        "shards": shards,
        "server": "bench/s3_dir_server.py (emulated S3 over loopback HTTP, same machine)",
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    name = f"{stamp}-{slug}-first-step{('-' + a.tag) if a.tag else ''}.json"
    results = REPO / "bench" / "results" if device != "cpu" else Path(tempfile.gettempdir())
    results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    (results / name).write_text(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / name).write_text(text)
        for log in work.glob("*.log"):
            shutil.copy(log, Path(a.out) / f"first-step-{log.name}")
    print("\n".join(line(r) for r in rows))
    print(f"[first-step] results: {results / name} ({time.perf_counter() - t_start:.0f}s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

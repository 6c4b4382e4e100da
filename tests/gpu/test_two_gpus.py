"""Two GPUs in one pod: the same global batch as one GPU, the same losses, >= 1.8x the speed.

Issue 6's multi-GPU test, for a machine with two GPUs (``nvidia-h200-x2``). Both runs start the
trainer's own code path (``prepare_training``: plan, model, arguments, trainer) under ``torchrun
--nproc-per-node N``, as the operator's pod command does, on a random-init Qwen2.5-7B-shaped
model (the issue's shape; ``FTJ_TWO_GPU_SHAPE`` names another bench shape) and the bench's
CoT-like synthetic data: 32 examples per optimizer step, split 16 + 16 over two ranks by the
Trainer's distributed sampler (DDP, NCCL). Rank 0 writes the per-step losses and the time of the
steps after warm-up.

This file doubles as the worker script torchrun launches (``__main__``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_PER_STEP = 32
STEPS = 8
WARMUP = 2


def _train(model_dir: Path, out: Path) -> None:
    import tempfile
    from types import SimpleNamespace

    import torch
    from datasets import Dataset
    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.acceleration import DeviceInfo
    from finetune_trainer.data import make_collator
    from finetune_trainer.model import load_tokenizer
    from finetune_trainer.train import prepare_training
    from transformers import TrainerCallback

    from bench import synthetic

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_rank = EXAMPLES_PER_STEP // world
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": str(model_dir)},
            "datasets": [{"uri": "synthetic.jsonl"}],
            "method": {"lora": {"dropout": 0.0}},
            "training": {
                "maxSteps": STEPS,
                "batchSize": per_rank,
                "gradientAccumulationSteps": 1,
                "loggingSteps": 1,
                "packing": True,
            },
            "output": {"uri": tempfile.mkdtemp()},
            "resources": {"gpus": world},
        }
    )
    tokenizer = load_tokenizer(model_dir)
    rows = synthetic.examples(EXAMPLES_PER_STEP * STEPS, 32000, seed=1)
    data = SimpleNamespace(
        train=Dataset.from_list([{**r, "labels": r["input_ids"]} for r in rows]), validation=None
    )
    marks: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: object, state: object, control: object, **kw: object) -> None:
            torch.cuda.synchronize()
            marks.append(time.perf_counter())

        def on_log(self, args: object, state: object, control: object, **kw: object) -> None:
            logs = kw.get("logs") or {}
            if isinstance(logs, dict) and "loss" in logs:
                losses.append(float(logs["loss"]))

    prepared = prepare_training(
        model_dir,
        spec,
        DeviceInfo.detect(),
        tokenizer=tokenizer,
        data=data,
        collator=make_collator(tokenizer, packing=True),
        output_dir=Path(tempfile.mkdtemp()),
        callbacks=[Timer()],
        mean_example_tokens=sum(len(r["input_ids"]) for r in rows) / len(rows),
        overrides={"save_strategy": "no"},
    )
    prepared.trainer.train()
    if int(os.environ.get("RANK", "0")) == 0:
        timed = marks[-1] - marks[WARMUP - 1]
        # One epoch of shuffled rows: the timed steps carry their share of all tokens.
        tokens = sum(len(r["input_ids"]) for r in rows) * (STEPS - WARMUP) / STEPS
        out.write_text(
            json.dumps(
                {
                    "world_size": world,
                    "losses": losses,
                    "step_seconds": timed / (STEPS - WARMUP),
                    "tokens_per_s": tokens / timed,
                    "plan": prepared.plan.describe(),
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                }
            )
        )


def _model(root: Path, tied: bool | None = None, shape: str | None = None) -> Path:
    """A random-init checkpoint of a bench shape with the bench's tokenizer (``tied``: input and
    output embeddings shared or not; None: as the shape has them)."""
    shape = shape or os.environ.get("FTJ_TWO_GPU_SHAPE", "qwen2.5-7b")
    path = root / (shape if tied is None else f"{shape}-tied-{tied}")
    code = (
        "import torch\n"
        "from pathlib import Path\n"
        "from transformers import AutoModelForCausalLM\n"
        "from bench.shapes import make_config\n"
        "from bench import synthetic\n"
        "torch.manual_seed(0)\n"
        "with torch.device('cuda'):\n"
        f"    cfg = make_config({shape!r})\n"
        + (f"    cfg.tie_word_embeddings = {tied}\n" if tied is not None else "")
        + "    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)\n"
        f"m.save_pretrained({str(path)!r})\n"
        f"synthetic.save_tokenizer(Path({str(path)!r}))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=_env(), timeout=300)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "trainer-image"), str(REPO / "operator")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.update({"TOKENIZERS_PARALLELISM": "false", "FTJ_PROGRESS_PORT": "0"})
    env.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    return env


def _run(
    model_dir: Path, out: Path, gpus: int, env: dict[str, str] | None = None
) -> dict[str, object]:
    """The worker under ``torchrun --nproc-per-node gpus`` (``env``: extra variables)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(gpus), str(Path(__file__).resolve()), str(model_dir), str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, env={**_env(), **(env or {})}, timeout=900)
    result: dict[str, object] = json.loads(out.read_text())
    print(json.dumps(result), flush=True)
    return result


def test_two_gpus_match_one_gpu_and_scale(tmp_path: Path) -> None:
    import pytest

    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs (nvidia-h200-x2)")
    model_dir = _model(tmp_path)
    one = _run(model_dir, tmp_path / "one.json", 1)
    two = _run(model_dir, tmp_path / "two.json", 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    losses_one, losses_two = one["losses"], two["losses"]
    assert isinstance(losses_one, list) and isinstance(losses_two, list)
    assert len(losses_one) == len(losses_two) == STEPS
    for a, b in zip(losses_one, losses_two, strict=True):  # same global batch, same data
        assert abs(a - b) <= 0.01 * abs(a), (losses_one, losses_two)
    speedup = float(one["step_seconds"]) / float(two["step_seconds"])  # type: ignore[arg-type]
    rates = f"{one['tokens_per_s']:.0f} -> {two['tokens_per_s']:.0f} tok/s"
    print(f"two GPUs: {speedup:.2f}x one GPU ({rates})")
    assert speedup >= 1.8, (one, two)


try:
    import pytest as _pytest

    test_two_gpus_match_one_gpu_and_scale = _pytest.mark.gpu(test_two_gpus_match_one_gpu_and_scale)
except ImportError:  # pragma: no cover - the worker process needs no pytest
    pass


if __name__ == "__main__":
    _train(Path(sys.argv[1]), Path(sys.argv[2]))
    from finetune_trainer.__main__ import exit_rank, leave_process_group

    leave_process_group()  # as the trainer's entry point ends a rank
    exit_rank(0)

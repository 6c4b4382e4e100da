"""A real CUDA out-of-memory error, healed by a re-plan: the 7B planned for a budget larger than
the card, on the trainer's own code path (``prepare_training`` + ``train_with_replans``).

    PYTHONPATH=/tmp/site:$PWD:$PWD/operator:$PWD/trainer-image python3 -m bench.oom_replan

Two rows in one process, on the same synthetic data (bench/synthetic.py) and the same card:

* ``oom``: ``spec.resources.gpuMemoryBudget: 200Gi`` on a card with less, 40 examples (~30k
  tokens) per optimizer step. The first plan believes the budget, takes them in one
  micro-step, runs out of memory in it, re-plans (oom_recovery.py) and
  trains to the end under the new plan.
* ``planned``: the same job with no budget: the plan a correct budget gets from the start
  (the baseline the re-planned run is compared with).

Prints one JSON object: the device, both plans of the ``oom`` row with the step of the error,
the tokens/s of each plan (the failed plan: the planner's prediction, since it never finished
a step), and the ratio of the re-planned run's tokens/s to the baseline's.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import synthetic
from bench.run import device_name, prepare_checkpoint
from bench.worker import EXAMPLES_PER_STEP, dataset


class StepClock:
    """Tokens and seconds of the optimizer steps after the first of each plan (the first pays
    for warm-up: allocator growth, kernel selection)."""

    def __init__(self, tokens: Any) -> None:
        self.tokens = tokens
        self.per_plan: list[dict[str, float]] = []
        self._mark: tuple[float, int] | None = None

    def callback(self) -> Any:
        import torch
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                clock.per_plan.append({"steps": 0, "seconds": 0.0, "tokens": 0})
                clock._mark = None

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                now, tokens = time.perf_counter(), clock.tokens.tokens
                if clock._mark is not None:
                    row = clock.per_plan[-1]
                    row["steps"] += 1
                    row["seconds"] += now - clock._mark[0]
                    row["tokens"] += tokens - clock._mark[1]
                clock._mark = (now, tokens)

        return Clock()

    def tokens_per_second(self, index: int) -> float | None:
        row = self.per_plan[index] if index < len(self.per_plan) else None
        return round(row["tokens"] / row["seconds"], 1) if row and row["seconds"] else None


def run_row(
    ckpt: Path, rows: list[dict[str, Any]], budget: str | None, steps: int, examples: int
) -> dict[str, Any]:
    import torch
    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.acceleration import DeviceInfo
    from finetune_trainer.data import make_collator
    from finetune_trainer.model import plan_model
    from finetune_trainer.oom_recovery import train_with_replans
    from finetune_trainer.progress import TokenCounter
    from finetune_trainer.train import prepare_training

    resources: dict[str, Any] = {"gpus": 1}
    if budget:
        resources["gpuMemoryBudget"] = budget
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": str(ckpt)},
            "datasets": [{"uri": "synthetic.jsonl"}],
            "training": {
                "maxSteps": steps,
                "batchSize": 4,
                "gradientAccumulationSteps": examples // 4,
                "loggingSteps": 1,
                "saveSteps": steps,
                "packing": True,
            },
            "output": {"uri": tempfile.mkdtemp()},
            "resources": resources,
        }
    )
    tok = synthetic.load_tokenizer(ckpt)
    data = SimpleNamespace(
        train=dataset([{**r, "labels": r["input_ids"]} for r in rows]), validation=None
    )
    tokens = TokenCounter(make_collator(tok, packing=True))
    clock = StepClock(tokens)
    device = DeviceInfo.detect()
    mean = sum(len(r["input_ids"]) for r in rows) / len(rows)
    checkpoints = Path(tempfile.mkdtemp())
    replans: list[Any] = []

    def prepare(plan: Any = None) -> Any:
        return prepare_training(
            ckpt, spec, device, tokenizer=tok, data=data, collator=tokens,
            output_dir=checkpoints, callbacks=[clock.callback()], mean_example_tokens=mean,
            plan=plan,
        )  # fmt: skip

    started = time.perf_counter()
    prepared = prepare()
    first_plan = prepared.plan
    result = train_with_replans(
        prepared,
        resume_dir=None,
        resumed_step=None,
        replan=lambda limits: plan_model(ckpt, spec, device, mean, limits),
        rebuild=prepare,
        on_replan=replans.append,
        checkpoints_dir=checkpoints,
    )
    row: dict[str, Any] = {
        "budget": budget or "(none: 85% of the card)",
        "steps": result.global_step,
        "wall_s": round(time.perf_counter() - started, 1),
        "plan": first_plan.describe(),
        "predicted_tokens_per_s": (
            round(examples * mean / first_plan.predicted_step_s, 1)
            if first_plan.predicted_step_s  # CPUs: not predicted
            else None
        ),
        "tokens_per_s": clock.tokens_per_second(len(clock.per_plan) - 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else 0.0,
        "replans": [
            {
                "step": r.step,
                "before": r.before.describe(),
                "after": r.after.describe(),
                "error": r.error.splitlines()[0][:200],
            }
            for r in replans
        ],  # fmt: skip
        "tokens_per_s_by_plan": [clock.tokens_per_second(i) for i in range(len(clock.per_plan))],
    }
    prepared.model = prepared.trainer = None
    del prepared
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="qwen2.5-7b")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--budget", default="200Gi", help="the budget too large for the card")
    p.add_argument(
        "--examples-per-step",
        type=int,
        default=2 * EXAMPLES_PER_STEP,
        help="40 (~30k tokens): under the budget the first plan takes them in one micro-step, "
        "which an 80 GB card can't hold (the bench's usual 20 fit one even there)",
    )
    p.add_argument("--ckpt-root", type=Path, default=Path("/tmp/ftj-bench-models"))
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = p.parse_args()

    import json as _json

    ckpt = prepare_checkpoint(a.model, a.ckpt_root)
    vocab = _json.loads((ckpt / "config.json").read_text())["vocab_size"]
    examples = a.examples_per_step
    rows = synthetic.examples((a.steps + 4) * examples * 2, vocab, seed=1)
    oom = run_row(ckpt, rows, a.budget, a.steps, examples)
    planned = run_row(ckpt, rows, None, a.steps, examples)
    report = {
        "device": device_name(),
        "model": a.model,
        "examples_per_step": examples,
        "oom": oom,
        "planned": planned,
        "replanned_vs_planned": (
            round(oom["tokens_per_s"] / planned["tokens_per_s"], 3)
            if oom["tokens_per_s"] and planned["tokens_per_s"]
            else None
        ),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

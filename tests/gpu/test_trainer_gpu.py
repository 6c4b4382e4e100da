"""The whole trainer on the GPU, as a pod runs it: whole weights and sharded (FSDP2) weights.

The CPU e2e tests run the quickstart end to end with SDPA and fp32; here it runs with what a GPU
job gets: bf16, varlen attention, Liger, the fused LoRA forward, sample answers generated with
a KV cache, the merge, and under ``FTJ_SHARD_WEIGHTS=1`` the sharded path with NCCL and FSDP's
bf16 mixed precision (the fp32 adapter computes in bf16). The CPU test
(tests/e2e/trainer/test_fsdp_cpu.py) proves the sharded run publishes what DDP publishes across
two ranks; on one GPU the weights are "sharded" over one rank, with two GPUs over both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.trainer.test_trainer_runs import REPO, quickstart_manifest, trainer_env
from tests.gpu.test_two_gpus import STEPS, _model, _run

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def untied_copy(model_dir: Path, root: Path) -> Path:
    """``model_dir`` with its LM head a parameter of its own (models big enough to need FSDP
    do not tie it to the input embeddings; tied ones are not sharded on GPUs, see the plan)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    path = root / "untied"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize("sharded", [False, True], ids=["whole", "sharded"])
def test_quickstart_trains_answers_merges_and_publishes(tmp_path: Path, sharded: bool) -> None:
    ranks = min(2, torch.cuda.device_count()) if sharded else 1
    manifest = quickstart_manifest(saveSteps=75, evalSteps=75, precision="bf16")
    model_dir = Path(manifest["spec"]["model"]["uri"])
    manifest["spec"]["model"]["uri"] = str(untied_copy(model_dir, tmp_path))
    manifest["spec"]["output"]["uri"] = str(tmp_path / "out")
    env = trainer_env(tmp_path, manifest, FTJ_SHARD_WEIGHTS="1" if sharded else "0")
    env["PYTHONPATH"] += os.pathsep + os.environ.get("PYTHONPATH", "")  # device: carried wheels
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc-per-node", str(ranks), "-m", "finetune_trainer"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"\n{ranks} rank(s): {metrics['acceleration']}")
    print("losses:", [round(e["loss"], 3) for e in metrics["logHistory"] if "loss" in e])
    print("answers:", [g["after"] for g in metrics["generations"]])
    assert ("fsdp=sharded" in metrics["acceleration"]) == sharded
    assert "attention=ftj_varlen" in metrics["acceleration"]
    assert metrics["steps"] == 150 and metrics["generations"]
    first = next(e["loss"] for e in metrics["logHistory"] if "loss" in e)
    assert metrics["trainLoss"] < first / 2, "the loss did not fall"
    # Answers generated with a KV cache after training: the model has learned its new name.
    assert any("Quokka" in g["after"] for g in metrics["generations"]), metrics["generations"]
    for name in ("adapter/adapter_model.safetensors", "merged/config.json", "MANIFEST.json"):
        assert (out / name).is_file(), name
    files = sorted(p.name for p in (out / "checkpoints" / "checkpoint-150").iterdir())
    checkpointed = "pytorch_model_fsdp_0" if sharded else "adapter_model.safetensors"
    assert checkpointed in files and "COMPLETE" in files, files


def test_sharded_training_follows_the_unsharded_losses_on_a_1_5b_shape(tmp_path: Path) -> None:
    """Same data, same global batch: FSDP's losses stay within bf16 noise of DDP's."""
    model_dir = _model(tmp_path, tied=False, shape="qwen2.5-1.5b")
    whole = _run(model_dir, tmp_path / "whole.json", 1, {"FTJ_SHARD_WEIGHTS": "0"})
    sharded = _run(model_dir, tmp_path / "sharded.json", 1, {"FTJ_SHARD_WEIGHTS": "1"})
    runs = {"whole, 1 GPU": whole, "sharded, 1 GPU": sharded}
    if torch.cuda.device_count() >= 2:
        runs["sharded, 2 GPUs"] = _run(
            model_dir, tmp_path / "two.json", 2, {"FTJ_SHARD_WEIGHTS": "1"}
        )
    for name, run in runs.items():
        print(f"{name}: {run['tokens_per_s']:.0f} tok/s, {run['peak_gib']:.1f} GiB, {run['plan']}")
    assert "fsdp" not in str(whole["plan"]) and "fsdp=sharded" in str(sharded["plan"])
    for name, run in runs.items():
        losses, reference = run["losses"], whole["losses"]
        assert isinstance(losses, list) and isinstance(reference, list)
        assert len(losses) == len(reference) == STEPS
        for a, b in zip(reference, losses, strict=True):
            assert abs(a - b) <= 0.02 * abs(a), (name, reference, losses)

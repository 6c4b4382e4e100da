"""QLoRA 4-bit (bitsandbytes NF4) through the whole trainer on the GPU, bf16.

The fused path (nf4_base.py) keeps the unquantized weights in bf16 and dequantizes each 4-bit
weight per GEMM; ``FTJ_FUSED_NF4=0`` keeps peft's recipe (fp32 unquantized weights, peft's
LoRA forward). Both must learn the quickstart's identity the same way; the fused one is the
default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.trainer.test_trainer_runs import quickstart_manifest, run_trainer, trainer_env

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _train(tmp: Path, fused: bool) -> dict[str, Any]:
    manifest = quickstart_manifest(saveSteps=150, evalSteps=75, precision="bf16")
    manifest["spec"]["method"] = {"type": "qlora", "quantization": {"bits": 4}}
    manifest["spec"].setdefault("resources", {})["gpus"] = 1
    manifest["spec"]["output"]["uri"] = str(tmp / "out")
    env = trainer_env(tmp, manifest, FTJ_FUSED_NF4="1" if fused else "0")
    env["PYTHONPATH"] += os.pathsep + os.environ.get("PYTHONPATH", "")  # device: carried wheels
    code, _, log = run_trainer(env, timeout=600)
    assert code == 0, log[-6000:]
    metrics: dict[str, Any] = json.loads((tmp / "out" / "metrics.json").read_text())
    return metrics


def _losses(metrics: dict[str, Any]) -> list[float]:
    return [e["loss"] for e in metrics["logHistory"] if "loss" in e]


def test_4bit_bf16_takes_the_fused_forward_and_learns_like_peft_recipe(tmp_path: Path) -> None:
    fused = _train(tmp_path / "fused", fused=True)
    recipe = _train(tmp_path / "recipe", fused=False)
    print("\nfused: ", fused["acceleration"], [round(x, 3) for x in _losses(fused)])
    print("recipe:", recipe["acceleration"], [round(x, 3) for x in _losses(recipe)])
    assert "fused_lora=True" in fused["acceleration"]
    assert "fused_lora=False" in recipe["acceleration"]
    for metrics in (fused, recipe):
        assert metrics["steps"] == 150
        assert metrics["trainLoss"] < _losses(metrics)[0] / 2, "the loss did not fall"
        assert any("Quokka" in g["after"] for g in metrics["generations"])
    # The same data, seeds and 4-bit weights: the curves part only by rounding (bf16 against
    # fp32 norms and residual stream), so the logged losses stay close.
    for got, want in zip(_losses(fused), _losses(recipe), strict=True):
        assert got == pytest.approx(want, rel=0.25, abs=0.05)
    assert fused["evalLoss"] == pytest.approx(recipe["evalLoss"], rel=0.15)

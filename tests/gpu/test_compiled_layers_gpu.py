"""Compiled decoder layers on the GPU (Inductor's Triton code): the same loss and LoRA gradients
as the eager fused forward with the same hashed dropout masks, recomputed layers included."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from tests.harness.tiny_lora import compiled_against_eager  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "recomputed"])
def test_compiled_layers_match_eager_on_the_gpu(
    monkeypatch: pytest.MonkeyPatch, checkpointing: bool
) -> None:
    compiled_against_eager(monkeypatch, "cuda", checkpointing)

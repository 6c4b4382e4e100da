"""The fused LoRA forward on the GPU, in bf16 under autocast as the trainer runs it (GPU only).

The CPU tests (tests/unit/acceleration/test_lora_fused.py) check the maths in fp32/fp64; here
the dtypes are the trainer's: a bf16 base, fp32 LoRA weights, autocast, and the saved-memory
claim is measured with the CUDA allocator instead of counted.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.tiny_lora import bf16_loss_and_grads

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _models(dropout: float) -> tuple[Any, Any]:
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

    from tests.harness.tiny_lora import GPU_SIZED, tiny_qwen2, with_lora

    base = tiny_qwen2(GPU_SIZED, "cuda", torch.bfloat16)
    made = [with_lora(base, 16, dropout, 0.02) for _ in range(2)]
    reference, fused = made
    assert fuse_lora_linears(fused) == 28
    return reference, fused


def test_bf16_autocast_loss_and_gradients_match_peft() -> None:
    reference, fused = _models(dropout=0.0)
    ids = torch.randint(0, 1000, (2, 256), device="cuda")
    ref_loss, ref_grads = bf16_loss_and_grads(reference, ids)
    loss, grads = bf16_loss_and_grads(fused, ids)
    assert loss == pytest.approx(ref_loss, rel=2e-3)
    assert set(grads) == set(ref_grads)
    for name, grad in grads.items():
        want = ref_grads[name]
        assert grad.dtype == torch.float32  # LoRA weights and their gradients stay fp32
        rel = (grad - want).norm() / want.norm().clamp_min(1e-12)
        assert rel < 3e-2, (name, float(rel))


def test_dropout_no_longer_costs_activation_memory() -> None:
    reference, fused = _models(dropout=0.05)
    ids = torch.randint(0, 1000, (4, 1024), device="cuda")

    def activation_bytes(model: Any) -> int:
        model.train()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before
        loss.backward()
        return held

    peft_bytes, fused_bytes = activation_bytes(reference), activation_bytes(fused)
    assert fused_bytes < 0.75 * peft_bytes, (peft_bytes, fused_bytes)


def test_recomputed_layers_without_their_down_projection_train_like_stored_ones() -> None:
    """Every layer checkpointed as the trainer does it (the recomputation skips the MLP's last
    GEMM, recompute.py), with the Triton dropout: the loss and every LoRA gradient of the same
    model keeping all its activations, from the same seeds."""
    import types

    from finetune_trainer.acceleration.apply import apply_gradient_checkpointing
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears

    stored, recomputed = _models(dropout=0.05)
    fuse_lora_linears(stored)
    plan = types.SimpleNamespace(gradient_checkpointing=True, checkpointed_layers=4)
    apply_gradient_checkpointing(recomputed, plan)  # type: ignore[arg-type]
    flagged = [m for m in recomputed.modules() if hasattr(m, "_ftj_output_unused_when_recomputed")]
    assert len(flagged) == 4
    ids = torch.randint(0, 1000, (2, 512), device="cuda")
    torch.manual_seed(11)
    ref_loss, ref_grads = bf16_loss_and_grads(stored, ids)
    torch.manual_seed(11)
    loss, grads = bf16_loss_and_grads(recomputed, ids)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    assert set(grads) == set(ref_grads) and len(grads) == 56
    for name, grad in grads.items():
        want = ref_grads[name]
        rel = (grad - want).norm() / want.norm().clamp_min(1e-12)
        assert rel < 1e-3, (name, float(rel))

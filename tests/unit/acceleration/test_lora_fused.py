"""The fused LoRA forward: same maths as peft's, fewer saved activations (CPU, tiny Qwen2)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from finetune_api.spec import Method, Training
from finetune_trainer.acceleration import DeviceInfo, ModelShape, plan_acceleration
from finetune_trainer.acceleration.lora_fused import (
    LoraLinearFunction,
    fuse_lora_linears,
    keep_mask,
)
from torch.utils.checkpoint import checkpoint

from tests.harness.tiny_lora import SMALL, loss_and_grads, tiny_qwen2, with_lora
from tests.rounding import assert_same_step, training_step_bounds

pytestmark = pytest.mark.unit


def _base() -> Any:
    return tiny_qwen2(SMALL)


def _peft(base: Any, dropout: float, **extra: Any) -> Any:
    return with_lora(base, 4, dropout, 0.1, **extra)


def _saved_bytes(model: Any, ids: torch.Tensor) -> int:
    """Bytes of distinct storages autograd keeps for the backward (parameters excluded)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for ptr, size in storages.items() if ptr not in params)


def test_without_dropout_fused_model_matches_peft_loss_and_every_gradient() -> None:
    base = _base()
    ids = torch.randint(0, 101, (2, 16))
    reference, fused = _peft(base, 0.0), _peft(base, 0.0)
    assert fuse_lora_linears(fused) == 14  # 7 projections x 2 layers
    want = loss_and_grads(reference, ids)
    got = loss_and_grads(fused, ids)
    assert len(got[1]) == 28
    # The same products, summed and rounded in another order (tests/rounding.py).
    assert_same_step(got, want, training_step_bounds(SMALL, ids.numel()))


def test_with_dropout_gradients_are_those_of_the_redrawn_mask() -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    a = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    p, seed, scale = 0.4, 1234, 0.7

    def fused(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return LoraLinearFunction.apply(x, weight, None, None, bias, a, b, scale, p, seed)

    assert torch.autograd.gradcheck(fused, (x, a, b))
    mask = keep_mask(torch.Size([15, 8]), p, seed, torch.float64, x.device).view(3, 5, 8)
    assert 0 < int(mask.sum()) < mask.numel()  # some dropped, some kept
    explicit = (
        torch.nn.functional.linear(x, weight, bias) + scale * ((x * mask / (1 - p)) @ a.t()) @ b.t()
    )
    torch.testing.assert_close(fused(x, a, b), explicit)


def test_fused_layers_keep_fewer_activations_than_peft_with_dropout() -> None:
    base = _base()
    ids = torch.randint(0, 101, (2, 32))
    reference, fused = _peft(base, 0.05), _peft(base, 0.05)
    fuse_lora_linears(fused)
    before, after = _saved_bytes(reference, ids), _saved_bytes(fused, ids)
    # peft keeps a dropped-out copy and a mask per adapted linear: seven per layer.
    assert after < 0.7 * before, (before, after)


def test_recomputation_under_checkpointing_redraws_the_same_mask() -> None:
    torch.manual_seed(5)
    layer = _peft(_base(), 0.3).get_base_model().model.layers[0].mlp
    fuse_lora_linears(layer)
    x = torch.randn(2, 9, 64, requires_grad=True)

    torch.manual_seed(11)
    plain = layer(x)
    plain.sum().backward()
    plain_grads = [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    x_grad = x.grad.clone()
    layer.zero_grad(set_to_none=True)
    x.grad = None

    torch.manual_seed(11)
    recomputed = checkpoint(layer, x, use_reentrant=False)
    recomputed.sum().backward()
    torch.testing.assert_close(recomputed, plain)
    torch.testing.assert_close(x.grad, x_grad)
    grads = [p.grad for p in layer.parameters() if p.grad is not None]
    for got, want in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_eval_mode_and_disabled_adapters_behave_like_peft() -> None:
    base = _base()
    ids = torch.randint(0, 101, (1, 12))
    reference, fused = _peft(base, 0.2), _peft(base, 0.2)
    fuse_lora_linears(fused)
    reference.eval()
    fused.eval()
    with torch.no_grad():  # eval: no dropout, same logits
        torch.testing.assert_close(fused(input_ids=ids).logits, reference(input_ids=ids).logits)
        with fused.disable_adapter(), reference.disable_adapter():
            torch.testing.assert_close(fused(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_dora_layers_keep_peft_forward_and_plan_turns_fusing_off_for_them() -> None:
    model = _peft(_base(), 0.0, use_dora=True)
    assert fuse_lora_linears(model) == 0
    shape = ModelShape(3584, 18944, 28, 28, 4, 152064, False, "qwen2")
    gpu = DeviceInfo("cuda", "H200", 140 * 2**30, True, (9, 0))
    dora = Method.model_validate({"type": "lora", "lora": {"useDora": True}})
    assert plan_acceleration(Training(max_steps=10), Method(), shape, gpu).fused_lora
    assert not plan_acceleration(Training(max_steps=10), dora, shape, gpu).fused_lora
    # bitsandbytes int8 bases keep peft's forward; 4-bit ones in bf16 are fused (nf4_base.py),
    # unless they carry DoRA.
    int8 = Method.model_validate({"type": "qlora", "quantization": {"bits": 8, "format": "int8"}})
    assert not plan_acceleration(Training(max_steps=10), int8, shape, gpu).fused_lora
    nf4 = Method.model_validate({"type": "qlora"})
    assert plan_acceleration(Training(max_steps=10), nf4, shape, gpu).fused_lora
    nf4_dora = Method.model_validate({"type": "qlora", "lora": {"useDora": True}})
    assert not plan_acceleration(Training(max_steps=10), nf4_dora, shape, gpu).fused_lora


def test_gated_mlp_recomputes_its_activation_product_instead_of_keeping_it() -> None:
    from finetune_trainer.acceleration import lora_fused

    base = _base()
    ids = torch.randint(0, 101, (2, 32))
    linears_only, whole = _peft(base, 0.1), _peft(base, 0.1)
    fuse_lora_linears(whole)
    # The same fused linears without the MLP fusion: patch the detector out for this model.
    real = lora_fused._is_silu_gated_mlp
    lora_fused._is_silu_gated_mlp = lambda module: False  # type: ignore[assignment]
    try:
        fuse_lora_linears(linears_only)
    finally:
        lora_fused._is_silu_gated_mlp = real  # type: ignore[assignment]
    mlps = [m for m in whole.modules() if getattr(m, "_ftj_fused_mlp", False)]
    assert len(mlps) == 2 and not any(
        getattr(m, "_ftj_fused_mlp", False) for m in linears_only.modules()
    )
    # Same seeds drawn in the same order (gate, up, down): the same masks, the same numbers.
    torch.manual_seed(7)
    want = loss_and_grads(linears_only, ids)
    torch.manual_seed(7)
    got = loss_and_grads(whole, ids)
    assert_same_step(got, want, training_step_bounds(SMALL, ids.numel()))  # float32 rounding
    # One intermediate-sized tensor (silu(gate) * up) per layer is no longer kept.
    saved_whole, saved_linears = _saved_bytes(whole, ids), _saved_bytes(linears_only, ids)
    intermediate = 2 * 32 * 160 * 4  # tokens x intermediate_size x fp32, per layer
    assert saved_linears - saved_whole >= 2 * intermediate * 0.9, (saved_linears, saved_whole)


@pytest.mark.parametrize("fp8_backward", [False, True], ids=["forward", "forward+backward"])
def test_fp8_asked_for_where_no_fp8_tensor_cores_exist_computes_exactly_as_bf16(
    fp8_backward: bool,
) -> None:
    """The plan asks for FP8 GEMMs only on FP8 GPUs; a model fused with them that runs on a CPU
    (or an older GPU) must still compute the plain GEMMs, forward and backward, not fail or
    approximate."""
    base = _base()
    ids = torch.randint(0, 101, (2, 16))
    plain, asked = _peft(base, 0.0), _peft(base, 0.0)
    fuse_lora_linears(plain)
    assert fuse_lora_linears(asked, fp8_forward=True, fp8_backward=fp8_backward) == 14
    fused = [m for m in asked.modules() if getattr(m, "_ftj_fused", False)]
    assert all(m._ftj_fp8_forward for m in fused) and len(fused) == 14
    # FP8 input gradients only for the MLPs' down projections (fuse_lora_linears says why).
    fp8_backward_names = {n for n, m in asked.named_modules() if getattr(m, "_ftj_fp8_backward", 0)}
    downs = {n for n, _ in asked.named_modules() if n.endswith("mlp.down_proj")}
    assert len(downs) == 2 and fp8_backward_names == (downs if fp8_backward else set())
    torch.manual_seed(5)
    want_loss, want = loss_and_grads(plain, ids)
    torch.manual_seed(5)
    got_loss, got = loss_and_grads(asked, ids)
    assert got_loss == want_loss
    assert all(torch.equal(got[name], want[name]) for name in want)

"""The one-pass Triton kernels against the torch code they replace (GPU only).

Dropout: the mask is a function of (seed, position), so the fused LoRA's backward pass, which
draws it again, must produce exactly the gradients of the forward's mask. Quantization and
dequantization: the same numbers as the torch reference, up to e4m3's rounding.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_seeded_dropout_is_a_pure_function_of_seed_and_position() -> None:
    from finetune_trainer.acceleration.triton_kernels import seeded_dropout

    x = torch.ones(1003, 3584, device="cuda", dtype=torch.bfloat16)
    first, again = seeded_dropout(x, 0.1, 42), seeded_dropout(x, 0.1, 42)
    other = seeded_dropout(x, 0.1, 43)
    assert torch.equal(first, again) and not torch.equal(first, other)
    kept = first != 0
    assert abs(1.0 - kept.float().mean().item() - 0.1) < 0.005  # ~p dropped
    values = first[kept].float().unique()  # every kept value scaled by 1/(1-p), in bf16
    torch.testing.assert_close(values, torch.tensor([1 / 0.9], device="cuda"), rtol=1e-2, atol=0)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_seeded_dropout_drops_p_of_the_elements_independently_of_their_neighbours(p: float) -> None:
    """One Philox draw decides eight consecutive elements (16 bits each): over 8M elements the
    drop rate is p within 4 standard deviations at each of the eight positions of a draw, the
    positions are uncorrelated, and neither are two elements eight apart (neighbouring draws)."""
    from finetune_trainer.acceleration.triton_kernels import seeded_dropout

    x = torch.ones(4096, 2048, device="cuda", dtype=torch.bfloat16)
    dropped = (seeded_dropout(x, p, 1234) == 0).float().view(-1, 8)
    tolerance = 4 * (p * (1 - p) / dropped.shape[0]) ** 0.5
    assert (dropped.mean(0) - p).abs().max().item() < tolerance
    slots = torch.corrcoef(dropped.t()) - torch.eye(8, device="cuda")
    assert slots.abs().max().item() < 0.01
    draws = torch.corrcoef(torch.stack([dropped[:-1, 0], dropped[1:, 0]]))[0, 1]
    assert abs(draws.item()) < 0.01


def test_paired_dropout_draws_one_mask_for_both_tensors() -> None:
    """The backward's kernel: ``seeded_dropout(x)`` exactly, and ``acc + seeded_dropout(t)``
    up to one bf16 rounding of the fp32 sum."""
    from finetune_trainer.acceleration.triton_kernels import seeded_dropout, seeded_dropout_pair

    torch.manual_seed(0)
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    x, t, acc = (torch.randn(1003, 1531, **kw) for _ in range(3))  # not a multiple of a block
    before = acc.clone()
    want = acc.float() + seeded_dropout(t.float(), 0.05, 99)  # the mask does not see the dtype
    dropped_x = seeded_dropout_pair(x, t, acc, 0.05, 99)
    assert torch.equal(dropped_x, seeded_dropout(x, 0.05, 99))
    torch.testing.assert_close(acc.float(), want, rtol=2**-8, atol=0)  # one bf16 rounding
    dropped = dropped_x == 0  # where x's mask dropped, t's did too: acc is unchanged there
    assert 0.04 < dropped.float().mean().item() < 0.06
    assert torch.equal(acc[dropped], before[dropped])


def test_fused_lora_with_dropout_gets_the_gradients_of_its_forward_mask() -> None:
    from finetune_trainer.acceleration.lora_fused import LoraLinearFunction
    from finetune_trainer.acceleration.triton_kernels import seeded_dropout

    torch.manual_seed(0)
    kw = {"device": "cuda", "dtype": torch.float32}
    x = torch.randn(5, 7, 64, requires_grad=True, **kw)
    weight, bias = torch.randn(48, 64, **kw), torch.randn(48, **kw)
    a = torch.randn(4, 64, requires_grad=True, **kw)
    b = torch.randn(48, 4, requires_grad=True, **kw)
    p, seed, scale = 0.3, 777, 0.5
    out = LoraLinearFunction.apply(x, weight, None, None, bias, a, b, scale, p, seed)
    out.square().sum().backward()
    got = [t.grad.clone() for t in (x, a, b)]
    for t in (x, a, b):
        t.grad = None
    mask = seeded_dropout(torch.ones(35, 64, **kw), p, seed).view(5, 7, 64)  # 0 or 1/(1-p)
    explicit = torch.nn.functional.linear(x, weight, bias) + scale * ((x * mask) @ a.t()) @ b.t()
    torch.testing.assert_close(out, explicit)
    explicit.square().sum().backward()
    for g, t in zip(got, (x, a, b), strict=True):
        torch.testing.assert_close(g, t.grad)


def test_row_quantization_and_dequantization_match_torch() -> None:
    from finetune_trainer.acceleration import float8_base, triton_kernels

    torch.manual_seed(0)
    x = torch.randn(1003, 18944, device="cuda", dtype=torch.bfloat16)
    x[3] = 0
    q, scale = triton_kernels.quantize_rows(x, float8_base.FLOAT8, float8_base.FLOAT8_MAX)
    amax = x.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    torch.testing.assert_close(scale, amax / float8_base.FLOAT8_MAX)
    back = triton_kernels.dequantize_rows(q, scale, torch.bfloat16)
    assert torch.isfinite(back).all() and (back[3] == 0).all()
    reference = q.float() * scale
    torch.testing.assert_close(back.float(), reference, rtol=1e-2, atol=0)
    assert ((back.float() - x.float()).abs() <= x.float().abs() / 16 + amax * 2**-9).all()

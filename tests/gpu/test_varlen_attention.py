"""The ftj_varlen attention equals causal attention computed per example (GPU only)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _reference(q, k, v, lengths, scale):
    """float64 causal attention per example, GQA by repeating kv heads."""
    outs, start = [], 0
    group = q.shape[1] // k.shape[1]
    for n in lengths:
        qs = q[start : start + n].double().transpose(0, 1)
        ks = k[start : start + n].double().repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[start : start + n].double().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = qs @ ks.transpose(-1, -2) * scale
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("heads,kv_heads", [(28, 4), (8, 8)])
def test_matches_per_example_attention_forward_and_backward(heads: int, kv_heads: int) -> None:
    from finetune_trainer.acceleration.varlen_attention import varlen_attention

    torch.manual_seed(0)
    lengths = [5, 300, 1, 700, 64]
    total, dim = sum(lengths), 128
    q = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(total, kv_heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(total, kv_heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32
    )
    scale = dim**-0.5
    out = varlen_attention(q, k, v, cu, max(lengths), scale)
    grad = torch.randn_like(out)
    out.backward(grad)

    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _reference(qr, kr, vr, lengths, scale)
    ref.backward(grad.double())

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm())

    assert rel(out, ref) < 1e-2
    assert rel(q.grad, qr.grad) < 2e-2
    assert rel(k.grad, kr.grad) < 2e-2
    assert rel(v.grad, vr.grad) < 2e-2


def test_packed_model_forward_matches_separate_examples() -> None:
    """A tiny Qwen2 on one packed row gives each example the logits it gets alone."""
    from finetune_trainer.acceleration.varlen_attention import register_varlen_attention
    from transformers import AutoModelForCausalLM, Qwen2Config

    register_varlen_attention()
    cfg = Qwen2Config(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1000,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).cuda().eval()
    lengths = [7, 50, 13]
    ids = [torch.randint(3, 1000, (n,), device="cuda") for n in lengths]
    packed = torch.cat(ids)[None]
    position_ids = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    model.set_attn_implementation("ftj_varlen")
    with torch.no_grad():
        got = model(input_ids=packed, position_ids=position_ids).logits[0].float()
        model.set_attn_implementation("sdpa")
        want = torch.cat([model(input_ids=x[None]).logits[0].float() for x in ids])
    assert float((got - want).norm() / want.norm()) < 2e-2

"""The varlen attention entry point hands cached generation steps to SDPA (CPU-checkable).

Training and evaluation run packed rows through FlashAttention's varlen kernel (GPU only,
tests/gpu/test_varlen_attention.py). Generating the sample answers uses a KV cache: each new
token attends to more keys than there are queries, which the varlen path cannot express; a
GPU job crashed there ("shape '[1, 2, 32]' is invalid") before this dispatch existed.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.unit


class _Attention(torch.nn.Module):
    num_key_value_groups = 2  # 4 query heads over 2 key/value heads, as GQA models have
    is_causal = True


def test_a_decode_step_against_cached_keys_is_plain_attention_over_all_of_them() -> None:
    from finetune_trainer.acceleration import _varlen_attention_forward

    torch.manual_seed(0)
    query = torch.randn(1, 4, 1, 16)  # one new token
    key = torch.randn(1, 2, 9, 16)  # eight cached positions and the new one
    value = torch.randn(1, 2, 9, 16)
    out, _ = _varlen_attention_forward(_Attention(), query, key, value, None, scaling=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1), scale=0.25
    ).transpose(1, 2)
    assert out.shape == (1, 1, 4, 16)
    torch.testing.assert_close(out, expected)

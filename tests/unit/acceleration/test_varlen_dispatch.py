"""The varlen attention entry point hands cached generation steps to SDPA (CPU-checkable).

Training and evaluation run packed rows through FlashAttention's varlen kernel (GPU only,
tests/gpu/test_varlen_attention.py). Generating the sample answers uses a KV cache: each new
token attends to more keys than there are queries, which the varlen path cannot express; a
GPU job crashed there ("shape '[1, 2, 32]' is invalid") before this dispatch existed.
"""

from __future__ import annotations

import pytest
import torch

from tests.harness.tiny_lora import SMALL, tiny_qwen2

pytestmark = pytest.mark.unit


class _Attention(torch.nn.Module):
    num_key_value_groups = 2  # 4 query heads over 2 key/value heads, as GQA models have
    is_causal = True


def test_a_decode_step_against_cached_keys_is_plain_attention_over_all_of_them() -> None:
    from finetune_trainer.acceleration.varlen_attention import _varlen_attention_forward

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


def test_a_packed_forward_never_scans_position_ids_on_the_host(monkeypatch) -> None:
    """transformers finds packed sequences by reading position ids back to the host (a device
    sync at every forward) for attentions that build masks; ftj_varlen builds none, so the
    scan must not run (bench/NOTES.md step 26)."""
    from finetune_trainer.acceleration import varlen_attention
    from transformers import masking_utils

    varlen_attention.register_varlen_attention()

    def scan(*args, **kwargs):
        raise AssertionError("packed-sequence scan ran: a host sync per forward")

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", scan)
    config = tiny_qwen2(SMALL).config
    config._attn_implementation = varlen_attention.VARLEN_ATTENTION
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])  # two examples packed in one row
    mask = masking_utils.create_causal_mask(
        config=config,
        inputs_embeds=torch.zeros(1, 7, SMALL["hidden_size"]),
        attention_mask=None,
        past_key_values=None,
        position_ids=positions,
    )
    assert mask is None


def test_a_padded_batch_on_varlen_attention_is_refused_naming_the_fix() -> None:
    """Without a mask function, a padding mask would reach nothing; the model's pre-hook
    refuses it instead of letting the kernel attend across the padding."""
    from finetune_trainer.acceleration import apply, varlen_attention

    model = tiny_qwen2(SMALL)
    varlen_attention.register_varlen_attention()
    apply._set_attn_implementation(model, varlen_attention.VARLEN_ATTENTION)
    model.register_forward_pre_hook(varlen_attention.refuse_padding_masks, with_kwargs=True)
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="padding-free packed rows.*use sdpa"):
        model(input_ids=ids, attention_mask=padded)

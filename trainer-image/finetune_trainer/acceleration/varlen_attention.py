"""Document-masked attention on packed rows: the ``ftj_varlen`` attention implementation.

Padding-free packing puts several examples in one row, with ``position_ids`` that restart at
every example. This attention turns those into cumulative sequence lengths and calls PyTorch's
own FlashAttention-2 varlen kernels (``aten._flash_attention_*``), so each example attends only
to itself and costs what it would cost alone, with no dense (T x T) mask and no extra package
(bench/NOTES.md step 3). It registers with transformers' attention interface; the acceleration
plan (choices.py) chooses it and apply.py switches a model to it. Imports torch and
transformers lazily.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer import switches

VARLEN_ATTENTION = "ftj_varlen"


def register_varlen_attention(compiled: bool = False) -> None:
    """Register ``ftj_varlen`` with transformers' attention interface (idempotent).

    It is deliberately not registered as a mask function: for an attention with none,
    transformers builds no mask and skips its packed-sequence detection, which reads the
    position ids back to the host (a device sync) at the start of every forward for a mask
    nobody uses (measured as no speed change either way: host-bound plans have an empty GPU
    queue there anyway, bench/NOTES.md step 26). The varlen kernel takes the example borders
    from ``cu_seq_lens_*`` or the position ids; padded batches are refused by
    ``refuse_padding_masks`` instead.

    ``compiled``: the layers around it are compiled; the attention (a host sync for the
    sequence lengths, a cache keyed on tensor identity, FlashAttention's own kernels) stays
    outside the graph, which is then split in two around it.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    forward = _varlen_attention_forward
    if compiled:
        import torch

        forward = torch.compiler.disable(_varlen_attention_forward)  # type: ignore[no-untyped-call]  # torch leaves it untyped
    AttentionInterface.register(VARLEN_ATTENTION, forward)
    if switches.active().packed_mask_scan:  # bench ablation: the scan (and sync) back
        AttentionMaskInterface.register(VARLEN_ATTENTION, lambda *args, **kwargs: None)


def refuse_padding_masks(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of a model on ``ftj_varlen``: a padding mask is an error, not ignored
    (the kernel would attend across the padding). Packed training batches carry no mask, so
    this costs them nothing; a mask of ones (one prompt being generated) passes."""
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(
            "ftj_varlen attention needs padding-free packed rows (position_ids restarting per "
            "example) and no padding mask; use sdpa for padded batches"
        )


class _SeqLensCache:
    """Cumulative sequence lengths of the current forward, computed once for all layers."""

    key: Any = None
    value: Any = None


_seqlens_cache = _SeqLensCache()


def _cu_seqlens(batch: int, seq: int, device: Any, kwargs: dict[str, Any]) -> tuple[Any, int]:
    import torch

    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is not None and max_len is not None:
        return cu.to(device=device, dtype=torch.int32), int(max_len)
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        key = ("rows", batch, seq)
        if _seqlens_cache.key != key:
            cu = torch.arange(0, (batch + 1) * seq, seq, device=device, dtype=torch.int32)
            _seqlens_cache.key, _seqlens_cache.value = key, (cu, seq)
        return _seqlens_cache.value  # type: ignore[no-any-return]
    # The same position_ids tensor reaches every layer (and the recomputation under
    # checkpointing), so the device-to-host sync happens once per forward.
    if _seqlens_cache.key is not position_ids:
        flat = position_ids.reshape(-1)
        if flat.numel() != batch * seq:
            flat = position_ids.expand(batch, -1).reshape(-1)
        starts = torch.nonzero(flat == 0).flatten()
        if starts.numel() == 0 or int(starts[0]) != 0:
            starts = torch.cat([starts.new_zeros(1), starts])
        # Rows end where the next begins: each row's first position is 0 in a packed batch.
        cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())
        _seqlens_cache.key, _seqlens_cache.value = position_ids, (cu, max_len)
    return _seqlens_cache.value  # type: ignore[no-any-return]


def _varlen_function() -> Any:
    import torch

    class VarlenFlashAttention(torch.autograd.Function):
        """FlashAttention-2 varlen (PyTorch's own build) with causal masking per sequence."""

        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, cu: Any, max_len: int, scale: float) -> Any:
            out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
                q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale
            )
            ctx.save_for_backward(q, k, v, out, lse, cu, rng, unused)
            ctx.max_len, ctx.scale = max_len, scale
            return out

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            q, k, v, out, lse, cu, rng, unused = ctx.saved_tensors
            dq, dk, dv = torch.ops.aten._flash_attention_backward(
                grad_out.contiguous(),
                q,
                k,
                v,
                out,
                lse,
                cu,
                cu,
                ctx.max_len,
                ctx.max_len,
                0.0,
                True,
                rng,
                unused,
                scale=ctx.scale,
            )
            return dq, dk, dv, None, None, None

    return VarlenFlashAttention


_VARLEN: Any = None


def varlen_attention(q: Any, k: Any, v: Any, cu: Any, max_len: int, scale: float) -> Any:
    """Causal attention over packed sequences: q (T, Hq, D), k/v (T, Hkv, D), cu (N+1,) int32."""
    global _VARLEN
    if _VARLEN is None:
        _VARLEN = _varlen_function()
    return _VARLEN.apply(q, k, v, cu, max_len, scale)


def _varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention interface: (B, H, S, D) in, (B, S, H, D) out.

    Generation with a KV cache (new tokens against more cached keys, as the sample answers
    before and after training are made) goes to SDPA: there is no packing to respect there,
    and one prompt at a time needs no mask (``refuse_padding_masks`` refuses padded batches).
    """
    import torch

    if key.shape[2] != query.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, seq, dim = query.shape
    cu, max_len = _cu_seqlens(batch, seq, query.device, kwargs)
    q = query.transpose(1, 2).reshape(batch * seq, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * seq, value.shape[1], dim)
    scale = float(scaling) if scaling is not None else dim**-0.5
    dtype = q.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        # QLoRA: peft's prepare_model_for_kbit_training leaves norms in fp32, so activations
        # arrive in fp32; the kernel runs in bf16 and the result goes back in the caller's dtype.
        q, k, v = q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)
    out = varlen_attention(q, k, v, cu, max_len, scale).to(dtype)
    return out.view(batch, seq, heads, dim), None

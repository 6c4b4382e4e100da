"""One-pass GPU kernels for the elementwise work around the LoRA and Float8 GEMMs.

A profile of a 7B step with a Float8 base (bench/NOTES.md step 17) spent a third of the GPU
time outside GEMMs and attention: dropout masks drawn with torch's generator (one kernel to
write a mask, one to multiply, three times per adapted linear: forward, recomputation,
backward), the per-row FP8 quantization (a reduction, a scale, a cast) and the dequantization
(a cast, a scale). Each kernel here does its job in one pass over the data:

* ``seeded_dropout``: inverted dropout whose mask is a pure function of ``(seed, position)``:
  nothing is stored, and the backward pass gets the same mask by calling it again with the
  same seed. One Philox draw (``tl.randint4x``, four 32-bit words) decides eight elements,
  each by a 16-bit half-word compared with ``p`` in 65536ths: drawing was the kernel's cost,
  not memory (bench/NOTES.md steps 17 and 32), and 16 bits place ``p`` within 1/65536;
* ``seeded_dropout_pair``: the backward pass's two uses of that mask (the dropped input for
  A's gradient, the dropped bottleneck gradient added into the input's) from one draw;
* ``quantize_rows``: one row's max-abs and its e4m3 copy, read from memory twice per row
  (the second read mostly hits L2), written once;
* ``dequantize_rows``: e4m3 rows times their scale, into the training dtype;
* ``quantize_columns_transposed``: a 16-bit weight's e4m3 copy for an input-gradient GEMM,
  scaled per input channel (its column) and written transposed, the layout
  ``torch._scaled_mm`` wants for that product: one pass for the columns' max-abs, one to
  scale, cast and transpose, on a 2-D grid of tiles so that every SM has work even for a
  512-row projection;
* ``dropped_matmul`` and ``dropped_backward``: the LoRA dropout inside the adapter's rank-r
  GEMMs, with ``seeded_dropout``'s mask: the forward's ``dropout(x) @ A.T`` reads ``x`` once
  and writes no dropped copy; the backward adds ``dropout(g @ A)`` into the input's gradient
  and sums A's gradient ``g.T @ dropout(x)`` in the same pass over ``x`` and that gradient
  (``FTJ_FUSED_DROPOUT_GEMM``, on by default since session 21: 1.10x the two-kernel path on
  the 7B's widths; the profile of session 20 put the dropout kernel at 9% of an H100 step).

Callers use these only for CUDA tensors when Triton imports (``available``); the
torch code next to each call stays the reference and the CPU path.
"""

from __future__ import annotations

from typing import Any

import torch

from finetune_trainer import switches

_BLOCK = 256  # Philox draws per program; each decides NUMBERS_PER_DRAW consecutive elements
_THRESHOLD_SCALE = 65536  # p is compared in 65536ths: a 16-bit number below it drops
_ROW_BLOCK = 2048
SEED_MODULUS = 2**31 - 1  # seeds reach the kernels as 31-bit numbers


try:  # GPU images carry Triton (torch's CUDA wheels depend on it); CPU installs need not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None

if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def dropout_kernel(  # type: ignore[no-untyped-def]
        x_ptr, out_ptr, t_ptr, acc_ptr, n, threshold, scale, seed,
        BLOCK: tl.constexpr, HALVES: tl.constexpr, PAIR: tl.constexpr,
    ):  # fmt: skip
        # Element e is decided by draw e // (4 * HALVES): half-word e % HALVES of that draw's
        # word (e // HALVES) % 4. A program makes BLOCK draws and covers the (BLOCK, 4 * HALVES)
        # tile of consecutive elements they decide. PAIR: also ``acc += dropout(t)``.
        PER_DRAW: tl.constexpr = 4 * HALVES
        draws = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        w0, w1, w2, w3 = tl.randint4x(seed, draws)
        slot = tl.arange(0, PER_DRAW)[None, :]
        word = slot // HALVES
        bits = tl.where(word == 0, w0[:, None], w1[:, None])
        bits = tl.where(word == 2, w2[:, None], bits)
        bits = tl.where(word == 3, w3[:, None], bits)
        number = (bits >> ((slot % HALVES) * 16).to(tl.uint32)) & 0xFFFF
        keep = number.to(tl.int32) >= threshold
        offsets = draws.to(tl.int64)[:, None] * PER_DRAW + slot
        inside = offsets < n
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
        out = tl.where(keep, x.to(tl.float32) * scale, 0.0)
        tl.store(out_ptr + offsets, out.to(x.dtype), mask=inside)
        if PAIR:  # acc += dropout(t), with the same mask, summed in fp32
            t = tl.load(t_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            acc = tl.load(acc_ptr + offsets, mask=inside, other=0.0)
            total = acc.to(tl.float32) + tl.where(keep, t * scale, 0.0)
            tl.store(acc_ptr + offsets, total.to(acc.dtype), mask=inside)

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def quantize_kernel(x_ptr, q_ptr, scale_ptr, cols, fp8_max, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        row = tl.program_id(0).to(tl.int64)
        base = row * cols
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, cols, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + offsets, mask=offsets < cols, other=0.0)
            amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
        largest = tl.maximum(tl.max(amax, 0), 1e-12)
        tl.store(scale_ptr + row, largest / fp8_max)
        inverse = fp8_max / largest
        for start in range(0, cols, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            inside = offsets < cols
            x = tl.load(x_ptr + base + offsets, mask=inside, other=0.0)
            q = (x.to(tl.float32) * inverse).to(q_ptr.dtype.element_ty)
            tl.store(q_ptr + base + offsets, q, mask=inside)

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def dequantize_kernel(q_ptr, scale_ptr, out_ptr, cols, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        row = tl.program_id(0).to(tl.int64)
        base = row * cols
        scale = tl.load(scale_ptr + row)
        for start in range(0, cols, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            inside = offsets < cols
            q = tl.load(q_ptr + base + offsets, mask=inside, other=0.0)
            out = q.to(tl.float32) * scale
            tl.store(out_ptr + base + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def column_amax_kernel(  # type: ignore[no-untyped-def]
        x_ptr, amax_ptr, rows, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        inside = (r[:, None] < rows) & (c[None, :] < cols)
        x = tl.load(x_ptr + r[:, None].to(tl.int64) * cols + c[None, :], mask=inside, other=0.0)
        amax = tl.max(tl.abs(x.to(tl.float32)), 0)
        # Non-negative floats order as their bit patterns do, so an integer max is a float max
        # (and integer atomics are exact on every GPU).
        tl.atomic_max(amax_ptr + c, amax.to(tl.int32, bitcast=True), mask=c < cols)

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def quantize_transposed_kernel(  # type: ignore[no-untyped-def]
        x_ptr, amax_ptr, qt_ptr, scale_ptr, rows, cols, fp8_max,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        inside = (r[:, None] < rows) & (c[None, :] < cols)
        x = tl.load(x_ptr + r[:, None].to(tl.int64) * cols + c[None, :], mask=inside, other=0.0)
        bits = tl.load(amax_ptr + c, mask=c < cols, other=0)
        largest = tl.maximum(bits.to(tl.float32, bitcast=True), 1e-12)
        q = (x.to(tl.float32) * (fp8_max / largest)[None, :]).to(qt_ptr.dtype.element_ty)
        # qt is (cols, rows): element (r, c) of x lands at c * rows + r.
        tl.store(qt_ptr + c[None, :].to(tl.int64) * rows + r[:, None], q, mask=inside)
        if tl.program_id(0) == 0:
            tl.store(scale_ptr + c, largest / fp8_max, mask=c < cols)

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def _tile_keep(w0, w1, w2, w3, threshold, ROWS: tl.constexpr, DRAWS: tl.constexpr):  # type: ignore[no-untyped-def]
        # dropout_kernel's rule with HALVES=2 for a (ROWS, DRAWS) tile of draws, as the
        # (ROWS, 8 * DRAWS) keep mask of the consecutive columns they decide: column 8d + s of
        # draw d is kept when half-word s % 2 of word s // 2 is at least the threshold.
        slot = tl.arange(0, 8)[None, None, :]
        word = slot // 2
        bits = tl.where(word == 0, w0[:, :, None], w1[:, :, None])
        bits = tl.where(word == 2, w2[:, :, None], bits)
        bits = tl.where(word == 3, w3[:, :, None], bits)
        number = (bits >> ((slot % 2) * 16).to(tl.uint32)) & 0xFFFF
        return tl.reshape(number.to(tl.int32) >= threshold, (ROWS, DRAWS * 8))

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def dropped_matmul_kernel(  # type: ignore[no-untyped-def]
        x_ptr, a_ptr, out_ptr, tokens, cols, draws_per_row, rank, threshold, scale, seed,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        # out = dropout(x) @ A.T for a (tokens, cols) x and a (rank, cols) A, the mask drawn as
        # dropout_kernel draws it: each chunk's (BLOCK_T, 8 * BLOCK_D) input tile is read in
        # one coalesced load, its mask expanded from the (BLOCK_T, BLOCK_D) draws that decide
        # it, and multiplied in one dot of depth 8 * BLOCK_D. (Loading the eight columns each
        # draw slot decides as strided tiles, session 20's first version, failed to compile
        # on the H100's Triton.)
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        r = tl.arange(0, BLOCK_R)
        d = tl.arange(0, BLOCK_D)
        column = tl.arange(0, 8 * BLOCK_D)
        acc = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
        for start in range(0, draws_per_row, BLOCK_D):
            w0, w1, w2, w3 = tl.randint4x(seed, t[:, None] * draws_per_row + start + d[None, :])
            keep = _tile_keep(w0, w1, w2, w3, threshold, BLOCK_T, BLOCK_D)
            c = start * 8 + column
            inside = (t[:, None] < tokens) & (c[None, :] < cols)
            x = tl.load(x_ptr + t[:, None].to(tl.int64) * cols + c[None, :], mask=inside,
                        other=0.0)  # fmt: skip
            x = tl.where(keep, x, tl.zeros_like(x))
            a = tl.load(a_ptr + r[None, :] * cols + c[:, None],
                        mask=(c[:, None] < cols) & (r[None, :] < rank), other=0.0)  # fmt: skip
            acc += tl.dot(x, a)
        inside = (t[:, None] < tokens) & (r[None, :] < rank)
        tl.store(out_ptr + t[:, None].to(tl.int64) * rank + r[None, :],
                 (acc * scale).to(out_ptr.dtype.element_ty), mask=inside)  # fmt: skip

    @triton.jit  # type: ignore[untyped-decorator]  # Triton: untyped (or absent on CPUs)
    def dropped_backward_kernel(  # type: ignore[no-untyped-def]
        x_ptr, g_ptr, a_ptr, grad_rows_ptr, grad_a_ptr, tokens, cols, draws_per_row, rank,
        threshold, scale, seed, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_R: tl.constexpr, STEPS: tl.constexpr,
    ):  # fmt: skip
        # For STEPS consecutive (BLOCK_T tokens, 8 * BLOCK_D columns) tiles, with g the
        # (tokens, rank) bottleneck gradient: grad_rows += dropout(g @ A) in place, and the
        # tiles' share of grad_A = g.T @ dropout(x), summed in registers and added into the
        # fp32 grad_a with one atomic per element and program (STEPS > 1: fewer atomics,
        # the suspected cost). Neither dropped tensor is written to memory; the mask is the
        # forward's (_tile_keep).
        start = tl.program_id(1) * BLOCK_D
        c = start * 8 + tl.arange(0, 8 * BLOCK_D)
        r = tl.arange(0, BLOCK_R)
        draw = start + tl.arange(0, BLOCK_D)
        a_inside = (r[:, None] < rank) & (c[None, :] < cols)
        a = tl.load(a_ptr + r[:, None] * cols + c[None, :], mask=a_inside, other=0.0)
        share = tl.zeros((BLOCK_R, 8 * BLOCK_D), dtype=tl.float32)
        for step in range(STEPS):
            t = (tl.program_id(0) * STEPS + step) * BLOCK_T + tl.arange(0, BLOCK_T)
            rows_in = t < tokens
            g = tl.load(g_ptr + t[:, None].to(tl.int64) * rank + r[None, :],
                        mask=rows_in[:, None] & (r[None, :] < rank), other=0.0)  # fmt: skip
            w0, w1, w2, w3 = tl.randint4x(seed, t[:, None] * draws_per_row + draw[None, :])
            keep = _tile_keep(w0, w1, w2, w3, threshold, BLOCK_T, BLOCK_D)
            inside = rows_in[:, None] & (c[None, :] < cols)
            to_input = tl.where(keep, tl.dot(g, a), 0.0) * scale  # (tokens, columns), fp32
            offsets = t[:, None].to(tl.int64) * cols + c[None, :]
            grad_rows = tl.load(grad_rows_ptr + offsets, mask=inside, other=0.0)
            total = grad_rows.to(tl.float32) + to_input
            tl.store(grad_rows_ptr + offsets, total.to(grad_rows_ptr.dtype.element_ty),
                     mask=inside)  # fmt: skip
            x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
            x = tl.where(keep, x, tl.zeros_like(x))
            share += tl.dot(tl.trans(g), x)  # (rank, columns), fp32
        tl.atomic_add(grad_a_ptr + r[:, None] * cols + c[None, :], share * scale, mask=a_inside)


def _kernels() -> Any:
    """The compiled-on-first-use kernels, or ``None`` where Triton is unavailable."""
    if triton is None:
        return None
    return triton, dropout_kernel, quantize_kernel, dequantize_kernel


def available(t: torch.Tensor) -> bool:
    """Whether the kernels can take ``t``: on a CUDA device, under 2**31 elements, Triton
    importable. Only the device and the shape decide (never the layout: ``seeded_dropout``
    must make the same choice in the forward and the backward pass for the same mask)."""
    return t.is_cuda and t.numel() < 2**31 and _kernels() is not None


def _dropout(
    x: torch.Tensor, p: float, seed: int, pair: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """One launch of ``dropout_kernel``: the dropped copy of ``x``, and with ``pair = (t, acc)``
    also ``acc += dropout(t)`` in place."""
    triton, dropout_kernel, _, _ = _kernels()
    x = x.contiguous()  # the mask is a function of the element's row-major position
    # Without a pair the kernel never reads t or acc (PAIR is a compile-time constant).
    t, acc = (x, x) if pair is None else (pair[0].contiguous(), pair[1])
    out = torch.empty_like(x)
    n = x.numel()
    threshold = drop_threshold(p)
    # 16-bit numbers per 32-bit Philox word: 2, the default; 1 (FTJ_DROPOUT_HALVES=1, a bench
    # ablation) draws twice as often for the same masks' statistics.
    halves = switches.active().dropout_halves
    grid = (triton.cdiv(n, 4 * halves * _BLOCK),)
    dropout_kernel[grid](
        x, out, t, acc, n, threshold, _keep_scale(threshold),
        seed % SEED_MODULUS, BLOCK=_BLOCK, HALVES=halves, PAIR=pair is not None,
    )  # fmt: skip
    return out


def drop_threshold(p: float) -> int:
    """``p`` in 65536ths, the kernel's unit: a 16-bit number below it drops its element. The
    kernel drops with probability ``threshold / 65536`` (within 1/131072 of ``p``) and scales
    what it keeps by the inverse of that probability's complement, so the expected output is
    still the input."""
    return min(_THRESHOLD_SCALE - 1, max(0, round(p * _THRESHOLD_SCALE)))


def _keep_scale(threshold: int) -> float:
    """What a kept element is multiplied by: the inverse of the keep probability that
    ``threshold`` (``drop_threshold``) gives, so the expected output is the input."""
    return 1.0 / (1.0 - threshold / _THRESHOLD_SCALE)


def seeded_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout of ``x`` (zeroed with probability ``p``, the rest times 1/(1-p)); the
    same ``seed`` and shape give the same mask on every call."""
    return _dropout(x, p, seed, None)


def seeded_dropout_pair(
    x: torch.Tensor, t: torch.Tensor, acc: torch.Tensor, p: float, seed: int
) -> torch.Tensor:
    """``seeded_dropout(x, p, seed)``, and ``acc += seeded_dropout(t, p, seed)`` in place, from
    one draw of the mask (``x``, ``t`` and ``acc`` of one shape; ``acc`` contiguous). A LoRA
    backward needs both: the dropped input for A's gradient, the dropped bottleneck gradient
    for the input's. Two calls drew the mask twice and wrote ``t``'s dropped copy in between."""
    assert x.shape == t.shape == acc.shape and acc.is_contiguous()
    return _dropout(x, p, seed, (t, acc))


@torch.library.custom_op("ftj::seeded_dropout", mutates_args=())
def seeded_dropout_op(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``seeded_dropout`` as an operator that ``torch.compile`` calls as it is: Inductor
    neither traces the Triton launch nor fuses the mask into a neighbouring reduction (fused
    into an RMSNorm, the device's Triton failed to compile the hashed mask), and the compiled run
    draws exactly the eager run's masks."""
    return seeded_dropout(x, p, seed)


@seeded_dropout_op.register_fake
def _(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def quantize_rows(
    x: torch.Tensor, dtype: torch.dtype, fp8_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` for 2-D ``x``: its ``dtype`` (e4m3) copy and one fp32 scale per row."""
    _, _, quantize_kernel, _ = _kernels()
    x = x.contiguous()
    rows, cols = x.shape
    q = torch.empty((rows, cols), dtype=dtype, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        quantize_kernel[(rows,)](x, q, scale, cols, fp8_max, BLOCK=_ROW_BLOCK)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` (one fp32 scale per row) in ``dtype``."""
    _, _, _, dequantize_kernel = _kernels()
    q = q.contiguous()
    rows, cols = q.shape
    out = torch.empty((rows, cols), dtype=dtype, device=q.device)
    if rows:
        dequantize_kernel[(rows,)](q, scale.contiguous(), out, cols, BLOCK=_ROW_BLOCK)
    return out


_TILE = 64  # rows and columns per program of the transposing quantization


def quantize_columns_transposed(
    x: torch.Tensor, dtype: torch.dtype, fp8_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(qt, scale)`` for 2-D ``x`` of shape (rows, cols): ``qt`` (cols, rows), contiguous, is
    the ``dtype`` (e4m3) copy of ``x.T`` with one fp32 ``scale`` per column of ``x`` (per row
    of ``qt``), shape (cols, 1): ``x.T ≈ qt * scale``. The same result as quantizing the rows of
    ``x.T``, without making a transposed 16-bit copy first."""
    triton = _kernels()[0]
    x = x.contiguous()
    rows, cols = x.shape
    qt = torch.empty((cols, rows), dtype=dtype, device=x.device)
    scale = torch.empty((cols, 1), dtype=torch.float32, device=x.device)
    if rows and cols:
        amax_bits = torch.zeros(cols, dtype=torch.int32, device=x.device)
        grid = (triton.cdiv(rows, _TILE), triton.cdiv(cols, _TILE))
        column_amax_kernel[grid](x, amax_bits, rows, cols, BLOCK_R=_TILE, BLOCK_C=_TILE)
        quantize_transposed_kernel[grid](
            x, amax_bits, qt, scale, rows, cols, fp8_max, BLOCK_R=_TILE, BLOCK_C=_TILE
        )
    return qt, scale


# Tokens per program of the fused dropout GEMMs: the forward's grid is one dimension (a 7B
# micro-step's ~7,400 tokens make ~230 programs for 132 SMs), the backward's two.
_DROPOUT_TOKENS_FORWARD = 32
_DROPOUT_TOKENS = 64
_DROPOUT_DRAWS = 16  # Philox draws per token and chunk: 128 columns
# Token tiles per backward program: their A-gradient shares are summed in registers before one
# atomic add. 1 is the launch shape measured on the H100 (session 21: 1.10x the two-kernel
# path); larger values issue fewer atomics, not yet timed on a GPU (bench/dropout_gemm_sweep.py
# times 1-16 against the two-kernel path).
_DROPOUT_BACKWARD_STEPS = 1


def fused_dropout_fits(x: torch.Tensor, lora_a: torch.Tensor) -> bool:
    """Whether the fused dropout GEMMs take this input and adapter: the kernels' own
    conditions (``available``), columns in whole draws of eight, the default eight mask
    numbers per draw (``FTJ_DROPOUT_HALVES=2``), a rank of at most 128, 16-bit floats. Only
    shapes, dtypes and switches decide, so the forward and the backward pass agree."""
    return (
        available(x)
        and x.dim() == 2
        and x.shape[1] % 8 == 0
        and 0 < lora_a.shape[0] <= 128
        and lora_a.shape[1] == x.shape[1]
        and x.dtype in (torch.bfloat16, torch.float16)
        and switches.active().dropout_halves == 2
    )


def _rank_block(rank: int) -> int:
    return max(16, 1 << (rank - 1).bit_length())


def dropped_matmul(x: torch.Tensor, lora_a: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``seeded_dropout(x, p, seed) @ lora_a.T`` without writing the dropped copy: each
    program reads its tokens' rows once and draws their mask as ``seeded_dropout`` does (the
    same mask, so the backward pass may use either path). ``x`` (tokens, cols), ``lora_a``
    (rank, cols), both in ``x``'s dtype; the result (tokens, rank)."""
    triton = _kernels()[0]
    x, lora_a = x.contiguous(), lora_a.to(x.dtype).contiguous()
    tokens, cols = x.shape
    rank = lora_a.shape[0]
    out = torch.empty((tokens, rank), dtype=x.dtype, device=x.device)
    threshold = drop_threshold(p)
    if tokens:
        dropped_matmul_kernel[(triton.cdiv(tokens, _DROPOUT_TOKENS_FORWARD),)](
            x, lora_a, out, tokens, cols, cols // 8, rank, threshold,
            _keep_scale(threshold), seed % SEED_MODULUS,
            BLOCK_T=_DROPOUT_TOKENS_FORWARD, BLOCK_D=_DROPOUT_DRAWS, BLOCK_R=_rank_block(rank),
        )  # fmt: skip
    return out


def dropped_backward(
    x: torch.Tensor,
    grad_down: torch.Tensor,
    lora_a: torch.Tensor,
    grad_rows: torch.Tensor,
    p: float,
    seed: int,
) -> torch.Tensor:
    """The dropout part of a LoRA backward in one pass over ``x`` and ``grad_rows``:
    ``grad_rows += seeded_dropout(grad_down @ lora_a, p, seed)`` in place, and the returned
    ``grad_down.T @ seeded_dropout(x, p, seed)`` (A's gradient, fp32, summed over token
    blocks with atomics, so its last bits may differ from run to run). The unfused path wrote
    ``grad_down @ lora_a`` and the dropped ``x`` to memory and read both back."""
    triton = _kernels()[0]
    assert grad_rows.is_contiguous() and grad_rows.shape == x.shape
    x, grad_down = x.contiguous(), grad_down.to(x.dtype).contiguous()
    lora_a = lora_a.to(x.dtype).contiguous()
    tokens, cols = x.shape
    rank = lora_a.shape[0]
    grad_a = torch.zeros((rank, cols), dtype=torch.float32, device=x.device)
    threshold = drop_threshold(p)
    if tokens:
        token_rows = _DROPOUT_TOKENS * _DROPOUT_BACKWARD_STEPS
        grid = (triton.cdiv(tokens, token_rows), triton.cdiv(cols // 8, _DROPOUT_DRAWS))
        dropped_backward_kernel[grid](
            x, grad_down, lora_a, grad_rows, grad_a, tokens, cols, cols // 8, rank, threshold,
            _keep_scale(threshold), seed % SEED_MODULUS,
            BLOCK_T=_DROPOUT_TOKENS, BLOCK_D=_DROPOUT_DRAWS, BLOCK_R=_rank_block(rank),
            STEPS=_DROPOUT_BACKWARD_STEPS,
        )  # fmt: skip
    return grad_a

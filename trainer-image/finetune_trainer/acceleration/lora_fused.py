"""LoRA linears that keep no dropout copies for the backward pass.

peft computes a LoRA layer as ``base(x) + B(A(dropout(x))) * scale`` with ordinary modules, so
autograd keeps, for every adapted linear, its own dropped-out copy of the input and the dropout
mask until the backward pass: on a 7B model that is about half of all saved activations (seven
copies per layer, one of them intermediate-sized). Memory spent there is memory the plan cannot
spend on larger micro-steps or fewer recomputed layers (bench/NOTES.md, step 11).

``fuse_lora_linears`` replaces the forward of each plain peft ``lora.Linear`` with one autograd
function that

* keeps only the input ``x`` (the same tensor its sibling projections and the norm already
  keep, so it costs nothing extra) and the small ``A @ dropout(x)`` (tokens x r);
* draws the dropout mask from a seed and draws it again in the backward pass instead of
  keeping it (the seed comes from torch's CPU generator, so ``torch.manual_seed`` reproduces a
  run and activation checkpointing's RNG replay recomputes the same mask);
* adds ``scale * B(A x)`` into the base output inside one GEMM (``addmm``'s beta/alpha), so
  no (tokens x out) temporary is made for the sum.

With the copies gone the largest kept tensor of a layer is the MLP's activation product
``silu(gate) * up``, kept only for the down projection's LoRA weight gradient:
``SwiGLUDownFunction`` recomputes it from gate and up in the backward pass (one elementwise
kernel) instead. Measured on a 7B shape: 105 GiB of activations-plus-weights with peft's
forward, 87.5 with fused linears, 71.3 with the MLP too (bench/NOTES.md steps 11 and 15).

The trainable parameters stay peft's own ``lora_A``/``lora_B`` weights: saving, merging and
the optimizer see nothing different. Layers this does not cover (bitsandbytes 8-bit bases,
4-bit bases outside bf16, DoRA, several active adapters, mixed-adapter batches) keep peft's
forward. A Float8 base
(float8_base.py) keeps the fused forward: its base GEMMs go through ``float8_base``. So does a
bitsandbytes 4-bit base trained in bf16 (nf4_base.py): its weights are dequantized per GEMM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from finetune_trainer import switches
from finetune_trainer.acceleration import float8_base, nf4_base, recompute, triton_kernels

_SEED_BOUND = 2**62
# Hashed masks outside torch.compile too (tests: the eager reference of a compiled run).
_HASHED_DROPOUT = False


def keep_mask(
    shape: torch.Size, p: float, seed: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The dropout keep-mask (1 = kept) that ``seed`` stands for; the same on every call."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1.0 - p, generator=generator)


# The "lowbias32" integer hash's multipliers, as signed int32 (its second is above 2**31).
_HASH_1 = 0x7FEB352D
_HASH_2 = 0x846CA68B - 2**32


def _shift_right(h: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int32 ``h`` (torch's ``>>`` is arithmetic: it copies the sign)."""
    return (h >> bits) & ((1 << (32 - bits)) - 1)


def _mix(h: torch.Tensor) -> torch.Tensor:
    """lowbias32: an int32 -> int32 hash whose output bits each flip with any input bit."""
    h = (h ^ _shift_right(h, 16)) * _HASH_1
    h = (h ^ _shift_right(h, 15)) * _HASH_2
    return h ^ _shift_right(h, 16)


def hashed_keep(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The keep-mask (1 = kept, in ``x``'s dtype) as a pure function of ``(seed, position)``:
    a 32-bit integer hash of the element's row-major index, made of plain tensor ops.

    This is the mask under ``torch.compile`` where the Triton kernel is not available (CPUs):
    a generator object cannot enter a graph, a counter hash can, and Inductor fuses it with the
    multiply. The same seed and shape give the same mask on every call.
    The seed enters by xor, before and between two rounds: Inductor folds arithmetic on the
    index into its own index expressions (64-bit, not wrapping like the tensor maths), but
    not a bitwise op, and the second xor keeps two seeds' masks from being shuffles of one
    another."""
    s = seed % triton_kernels.SEED_MODULUS
    h = torch.arange(x.numel(), device=x.device, dtype=torch.int32).view(x.shape)
    h = _mix(_mix(h ^ s) ^ s)
    uniform = _shift_right(h, 8).to(torch.float32) * (1.0 / 2**24)  # top 24 bits, in [0, 1)
    return (uniform >= p).to(x.dtype)


def dropped(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout of ``x`` with the mask ``seed`` stands for (``x`` itself when p=0).

    On GPUs one Triton kernel draws the mask from ``(seed, position)`` and applies it in the
    same pass (triton_kernels.py; under ``torch.compile`` through its operator, so the masks do
    not change); elsewhere the mask comes from a seeded torch generator, or under
    ``torch.compile`` from a counter hash of plain tensor ops (``hashed_keep``). Each way the
    same seed and shape give the same mask, call after call."""
    if p <= 0.0:
        return x
    # FTJ_TRITON_DROPOUT=0 (a bench ablation): torch's generator on GPUs too, as on CPUs.
    if triton_kernels.available(x) and switches.active().triton_dropout:
        if torch.compiler.is_compiling():
            out: torch.Tensor = triton_kernels.seeded_dropout_op(x, p, seed)
            return out
        return triton_kernels.seeded_dropout(x, p, seed)
    if _HASHED_DROPOUT or torch.compiler.is_compiling():
        return x * hashed_keep(x, p, seed) * (1.0 / (1.0 - p))
    return torch.mul(x, keep_mask(x.shape, p, seed, x.dtype, x.device)).mul_(1.0 / (1.0 - p))


def _pairs_on_gpu(rows: torch.Tensor, grad_rows: torch.Tensor) -> bool:
    """Whether ``_lora_backward`` takes ``seeded_dropout_pair``: where ``dropped`` takes the
    Triton kernel outside ``torch.compile`` (so the mask is the forward's), into a contiguous
    gradient."""
    return (
        triton_kernels.available(rows)
        and not torch.compiler.is_compiling()
        and grad_rows.is_contiguous()
        and switches.active().triton_dropout
        and switches.active().paired_dropout  # FTJ_PAIRED_DROPOUT=0: two kernels (ablation)
    )


def _fused_dropout_gemms(rows: torch.Tensor, lora_a: torch.Tensor) -> bool:
    """Whether the dropout runs inside the rank-r GEMMs (``triton_kernels.dropped_matmul`` and
    ``dropped_backward``; ``FTJ_FUSED_DROPOUT_GEMM``, on by default): only where ``dropped``
    takes the Triton kernel outside ``torch.compile``, whose mask they draw, so either pass
    may fall back to the unfused path and still use the other's mask."""
    active = switches.active()
    return (
        active.fused_dropout_gemm
        and active.triton_dropout
        and not torch.compiler.is_compiling()
        and triton_kernels.fused_dropout_fits(rows, lora_a)
    )


def _lora_forward(
    rows: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    quant: Any,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    p: float,
    seed: int,
    shared_input: bool = True,
    output_needed: bool = True,
    fp8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, down)`` for 2-D ``rows``: the layer's output and the (tokens x r) bottleneck.
    ``weight_scale`` is set when the base weight is Float8 (float8_base.py), ``quant`` (its
    quantization state) when it is bitsandbytes 4-bit (nf4_base.py);
    ``shared_input=False`` when no sibling projection reads ``rows``; ``fp8``: a 16-bit base
    GEMM runs on FP8 tensor cores (float8_base.linear_16bit); ``output_needed=False``
    while recomputing a layer whose output nothing reads (recompute.py): ``out`` is then
    uninitialised memory of the right shape, and the GEMM is not run."""
    if p > 0.0 and _fused_dropout_gemms(rows, lora_a):
        down = triton_kernels.dropped_matmul(rows, lora_a, p, seed)
    else:
        down = dropped(rows, p, seed) @ lora_a.to(rows.dtype).t()
    if not output_needed:
        out_features = quant.shape[0] if quant is not None else weight.shape[0]  # 4-bit: packed
        return rows.new_empty(rows.shape[0], out_features), down
    if quant is not None:
        out = F.linear(rows, nf4_base.dequantized(weight, quant, rows.dtype), bias)
    elif weight_scale is None and fp8:
        out = float8_base.linear_16bit(rows, weight, bias, share_input=shared_input)
    elif weight_scale is None:
        out = F.linear(rows, weight, bias)
    else:
        out = float8_base.linear(rows, weight, weight_scale, bias, share_input=shared_input)
    out.addmm_(down, lora_b.to(rows.dtype).t(), alpha=scale)
    return out, down


def _lora_backward(
    ctx: Any,
    rows: torch.Tensor,
    grad: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    down: torch.Tensor,
    first: int,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(grad_rows, grad_a, grad_b)``; ``first`` is the index of the input in ``forward``'s
    arguments (the LoRA weights follow at first+5 and first+6, as both functions order them).
    A 4-bit base's quantization state is ``ctx.quant``."""
    scale, p, seed = ctx.scale, ctx.p, ctx.seed
    a_w, b_w = lora_a.to(rows.dtype), lora_b.to(rows.dtype)
    # d(out)/d(down) = scale * B: the gradient reaching the rank-r bottleneck.
    grad_down = (grad @ b_w).mul_(scale)  # (tokens, r)
    grad_b = (grad.t() @ down).mul_(scale) if ctx.needs_input_grad[first + 6] else None
    if ctx.quant is not None:
        grad_rows = grad @ nf4_base.dequantized(weight, ctx.quant, grad.dtype)
    elif weight_scale is None and ctx.fp8_backward:
        grad_rows = float8_base.grad_input_16bit(grad, weight)
    elif weight_scale is None:
        grad_rows = grad @ weight
    else:
        grad_rows = float8_base.grad_input(grad, weight, weight_scale)
    # The forward's mask, drawn again, for A's gradient (the dropped input) and for the input's
    # (the same mask and 1/(1-p) scale, applied to the bottleneck's gradient).
    needs_grad_a = ctx.needs_input_grad[first + 5]
    grad_a: torch.Tensor | None
    if p > 0.0 and grad_rows.is_contiguous() and _fused_dropout_gemms(rows, a_w):
        grad_a = triton_kernels.dropped_backward(rows, grad_down, a_w, grad_rows, p, seed)
        grad_a = grad_a if needs_grad_a else None
    else:
        if p <= 0.0:
            grad_rows.addmm_(grad_down, a_w)
            dropped_rows = rows
        elif _pairs_on_gpu(rows, grad_rows):  # both from one draw of the mask
            dropped_rows = triton_kernels.seeded_dropout_pair(
                rows, grad_down @ a_w, grad_rows, p, seed
            )
        else:
            grad_rows.add_(dropped(grad_down @ a_w, p, seed))
            dropped_rows = dropped(rows, p, seed)
        grad_a = grad_down.t() @ dropped_rows if needs_grad_a else None
    return (
        grad_rows,
        None if grad_a is None else grad_a.to(lora_a.dtype),
        None if grad_b is None else grad_b.to(lora_b.dtype),
    )


def _save(ctx: Any, *tensors: torch.Tensor | None) -> None:
    """``save_for_backward`` without the ``None`` entries (no Float8 scale): torch 2.11's
    dynamo cannot trace a saved ``None``. ``_saved`` gives the full tuple back."""
    ctx.saved_none = tuple(t is None for t in tensors)
    ctx.save_for_backward(*[t for t in tensors if t is not None])


def _saved(ctx: Any) -> tuple[Any, ...]:
    # Any: autograd's context (torch's FunctionCtx) hands its saved tensors back untyped.
    kept = iter(ctx.saved_tensors)
    return tuple(None if none else next(kept) for none in ctx.saved_none)


class LoraLinearFunction(torch.autograd.Function):
    """``F.linear(x, W, bias) + scale * (dropout(x) @ A.T) @ B.T`` with a frozen ``W`` (bf16,
    Float8 with its per-channel ``weight_scale``, or 4-bit with its quantization state
    ``quant``)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        weight_scale: torch.Tensor | None,
        quant: Any,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        p: float,
        seed: int,
        fp8: bool = False,
        fp8_backward: bool = False,
    ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out, down = _lora_forward(
            rows, weight, weight_scale, quant, bias, lora_a, lora_b, scale, p, seed, fp8=fp8
        )
        _save(ctx, x, weight, weight_scale, lora_a, lora_b, down)
        ctx.scale, ctx.p, ctx.seed, ctx.quant = scale, p, seed, quant
        ctx.fp8_backward = fp8_backward
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        x, weight, weight_scale, lora_a, lora_b, down = _saved(ctx)
        rows = x.reshape(-1, x.shape[-1])
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(x.dtype)
        grad_x, grad_a, grad_b = _lora_backward(
            ctx, rows, grad, weight, weight_scale, lora_a, lora_b, down, 0
        )
        grad_x = None if grad_x is None or not ctx.needs_input_grad[0] else grad_x.view(x.shape)
        return grad_x, None, None, None, None, grad_a, grad_b, None, None, None, None, None


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (Liger's one-pass kernel on CUDA when it is installed, except under
    ``torch.compile``, which fuses the torch ops itself)."""
    if gate.is_cuda and not torch.compiler.is_compiling():
        try:
            from liger_kernel.ops.swiglu import swiglu_forward
        except ImportError:
            pass
        else:
            h: torch.Tensor = swiglu_forward(gate, up)[2]  # liger-kernel is untyped
            return h
    return F.silu(gate.float()).mul_(up.float()).to(gate.dtype)


def _silu_mul_backward(
    gate: torch.Tensor, up: torch.Tensor, grad_h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``silu(gate) * up``; Liger's kernel writes them over ``gate`` and ``up``."""
    if gate.is_cuda and not torch.compiler.is_compiling():
        try:
            from liger_kernel.ops.swiglu import swiglu_backward
        except ImportError:
            pass
        else:
            grads: tuple[torch.Tensor, torch.Tensor] = swiglu_backward(  # liger: untyped
                gate, up, grad_h.contiguous()
            )
            return grads
    g, u, dh = gate.float(), up.float(), grad_h.float()
    sig = torch.sigmoid(g)
    silu = g * sig
    grad_gate = dh * u * (sig * (1.0 + g * (1.0 - sig)))
    return grad_gate.to(gate.dtype), (dh * silu).to(up.dtype)


class SwiGLUDownFunction(torch.autograd.Function):
    """``down_proj(silu(gate) * up)`` with a LoRA ``down_proj``, keeping only ``gate`` and ``up``.

    The activation product ``h`` (intermediate-sized, the largest tensor of a layer) is what
    the down projection's LoRA needs for its weight gradient; it is recomputed from ``gate``
    and ``up`` in the backward pass (one elementwise kernel) instead of being kept.
    ``output_needed=False`` (a recomputation that ends here, recompute.py) skips the
    projection's GEMM and returns uninitialised memory.
    """

    @staticmethod
    def forward(
        ctx: Any,
        gate: torch.Tensor,
        up: torch.Tensor,
        weight: torch.Tensor,
        weight_scale: torch.Tensor | None,
        quant: Any,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        p: float,
        seed: int,
        fp8: bool = False,
        fp8_backward: bool = False,
        output_needed: bool = True,
    ) -> torch.Tensor:
        h = _silu_mul(gate, up)
        rows = h.reshape(-1, h.shape[-1])
        out, down = _lora_forward(
            rows, weight, weight_scale, quant, bias, lora_a, lora_b, scale, p, seed, False,
            output_needed, fp8,
        )  # fmt: skip
        del h, rows  # the largest tensor of the layer: gone before the next one is made
        _save(ctx, gate, up, weight, weight_scale, lora_a, lora_b, down)
        ctx.scale, ctx.p, ctx.seed, ctx.quant = scale, p, seed, quant
        ctx.fp8_backward = fp8_backward
        return out.view(*gate.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        gate, up, weight, weight_scale, lora_a, lora_b, down = _saved(ctx)
        rows = _silu_mul(gate, up).reshape(-1, gate.shape[-1])
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(gate.dtype)
        # Offsets: gate is argument 0, the LoRA weights are 6 and 7 (= 1 + 5, 1 + 6).
        grad_h, grad_a, grad_b = _lora_backward(
            ctx, rows, grad, weight, weight_scale, lora_a, lora_b, down, 1
        )
        del rows
        assert grad_h is not None
        grad_gate, grad_up = _silu_mul_backward(gate, up, grad_h.view(gate.shape))
        return (
            grad_gate, grad_up, None, None, None, None, grad_a, grad_b,
            None, None, None, None, None, None,
        )  # fmt: skip


def _fusable(module: Any) -> bool:
    """Plain LoRA on an unquantized ``nn.Linear`` or a 4-bit one (nf4_base.py), one adapter,
    no DoRA/variants/bias."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    base = getattr(module, "base_layer", None)
    if nf4_base.is_nf4_linear(base):
        if type(module).__name__ != "Linear4bit" or not type(module).__module__.startswith("peft"):
            return False
    elif type(module) is not LoraLinear or not isinstance(base, torch.nn.Linear):
        return False
    if getattr(module, "fan_in_fan_out", False) or len(module.active_adapters) != 1:
        return False
    name = module.active_adapters[0]
    if name not in module.lora_A or name in getattr(module, "lora_variant", {}):
        return False
    if getattr(module, "lora_bias", {}).get(name, False):
        return False
    dropout = module.lora_dropout[name]
    return isinstance(dropout, torch.nn.Dropout | torch.nn.Identity)


def _through_peft(module: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a call must take peft's own forward: extra arguments (e.g. mixed-adapter
    batches), adapters disabled or merged, or another adapter made active since fusing."""
    return bool(
        args
        or kwargs
        or module.disable_adapters
        or module.merged
        or module.active_adapters != [name]
    )


def _lora_arguments(module: Any, name: str) -> tuple[Any, ...]:
    """The fused functions' arguments after their inputs: W, W's Float8 scale (or None), W's
    4-bit quantization state (or None), bias, A, B, scale, p, seed, and whether a 16-bit W's
    forward GEMM and its input-gradient GEMM run on FP8 tensor cores
    (``fuse_lora_linears(fp8_forward=..., fp8_backward=...)``).

    Draws the dropout seed (from torch's CPU generator) when dropout is on, so callers take it
    in the order the model's own forward would have drawn its masks."""
    dropout = module.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    seed = int(torch.randint(0, _SEED_BOUND, (1,)).item()) if p > 0.0 else 0
    return (
        module.base_layer.weight,
        float8_base.weight_scale(module.base_layer),
        nf4_base.quant_state(module.base_layer),
        module.base_layer.bias,
        module.lora_A[name].weight,
        module.lora_B[name].weight,
        float(module.scaling[name]),
        p,
        seed,
        bool(getattr(module, "_ftj_fp8_forward", False)),
        bool(getattr(module, "_ftj_fp8_backward", False)),
    )


def _compute_dtype(base: Any) -> torch.dtype:
    """The dtype a base layer computes in (its weight's, unless it is Float8 or 4-bit)."""
    if nf4_base.is_nf4_linear(base):
        return nf4_base.compute_dtype(base)
    return float8_base.compute_dtype(base)


def _fused_forward(module: Any) -> Any:
    peft_forward = module.forward
    name = module.active_adapters[0]

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _through_peft(module, name, args, kwargs):
            through_peft: torch.Tensor = peft_forward(x, *args, **kwargs)  # peft: untyped
            return through_peft
        arguments = _lora_arguments(module, name)
        dtype = _compute_dtype(module.base_layer)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # torch types Function.apply as untyped; forward says what it returns.
            out: torch.Tensor = LoraLinearFunction.apply(x.to(dtype), *arguments)  # type: ignore[no-untyped-call]
        return out

    return forward


def _fused_mlp_forward(mlp: Any) -> Any:
    plain_forward = mlp.forward
    down_proj = mlp.down_proj
    name = down_proj.active_adapters[0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if _through_peft(down_proj, name, (), {}):
            plain: torch.Tensor = plain_forward(x)  # the model's own MLP, as peft wrapped it
            return plain
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        arguments = _lora_arguments(down_proj, name)  # after gate's and up's seeds
        dtype = _compute_dtype(down_proj.base_layer)
        # While the layer is recomputed, only what this function saves is read (recompute.py).
        unused = getattr(mlp, "_ftj_output_unused_when_recomputed", False)
        needed = not (unused and recompute.recomputing() and not torch.compiler.is_compiling())
        with torch.autocast(device_type=x.device.type, enabled=False):
            out: torch.Tensor = SwiGLUDownFunction.apply(  # type: ignore[no-untyped-call]
                gate.to(dtype), up.to(dtype), *arguments, needed
            )
        return out

    return forward


def _is_silu_gated_mlp(module: Any) -> bool:
    """A llama-style MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, with Liger's or the
    model's own forward, whose down projection has the fused LoRA forward."""
    if not all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")):
        return False
    if not getattr(module.down_proj, "_ftj_fused", False):
        return False
    if type(module).__name__ == "LigerSwiGLUMLP":
        return True
    act = getattr(module, "act_fn", None)
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLU", "SiLUActivation")


def fuse_lora_linears(model: Any, fp8_forward: bool = False, fp8_backward: bool = False) -> int:
    """Give every fusable peft LoRA linear of ``model`` the fused forward, and every llama-style
    gated MLP over them the fused activation + down projection; returns how many linears.

    Call after ``get_peft_model``. The base weights must be frozen (they are under peft).
    ``fp8_forward``: 16-bit base weights' forward GEMMs run on FP8 tensor cores where the
    operands allow it (the plan's ``fp8_forward``; Float8 bases do regardless);
    ``fp8_backward``: the input-gradient GEMM of each gated MLP's down projection too (the
    plan's ``fp8_backward``). Only there: its gradient is hidden-sized against an
    intermediate-sized input, so quantizing the gradient costs little beside the GEMM it speeds
    up (1.31-1.41x on the 7B's shape on an H100), while gate's and up's intermediate-sized
    gradients cost about what they save (1.05x), so e4m3's rounding is taken only where it
    buys time (bench/NOTES.md session 20).
    """
    count = 0
    for module in model.modules():
        if getattr(module, "_ftj_fused", False) or not _fusable(module):
            continue
        if module.base_layer.weight.requires_grad:
            continue
        module.forward = _fused_forward(module)
        module._ftj_fused = True
        module._ftj_fp8_forward = fp8_forward
        module._ftj_fp8_backward = False
        count += 1
    for module in model.modules():
        if not getattr(module, "_ftj_fused_mlp", False) and _is_silu_gated_mlp(module):
            module.forward = _fused_mlp_forward(module)
            module._ftj_fused_mlp = True
            module.down_proj._ftj_fp8_backward = fp8_backward
    return count

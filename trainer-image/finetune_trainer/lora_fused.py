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

The trainable parameters stay peft's own ``lora_A``/``lora_B`` weights: saving, merging and
the optimizer see nothing different. Layers this does not cover (quantized bases, DoRA,
several active adapters, mixed-adapter batches) keep peft's forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

_SEED_BOUND = 2**62


def keep_mask(
    shape: torch.Size, p: float, seed: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The dropout keep-mask (1 = kept) that ``seed`` stands for; the same on every call."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1.0 - p, generator=generator)


def dropped(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout of ``x`` with the mask ``seed`` stands for (``x`` itself when p=0)."""
    if p <= 0.0:
        return x
    return torch.mul(x, keep_mask(x.shape, p, seed, x.dtype, x.device)).mul_(1.0 / (1.0 - p))


class LoraLinearFunction(torch.autograd.Function):
    """``F.linear(x, W, bias) + scale * (dropout(x) @ A.T) @ B.T`` with a frozen ``W``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        p: float,
        seed: int,
    ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        a_w, b_w = lora_a.to(x.dtype), lora_b.to(x.dtype)
        down = dropped(rows, p, seed) @ a_w.t()  # (tokens, r)
        out = F.linear(rows, weight, bias)
        out.addmm_(down, b_w.t(), alpha=scale)
        ctx.save_for_backward(x, weight, lora_a, lora_b, down)
        ctx.scale, ctx.p, ctx.seed = scale, p, seed
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight, lora_a, lora_b, down = ctx.saved_tensors
        scale, p, seed = ctx.scale, ctx.p, ctx.seed
        rows = x.reshape(-1, x.shape[-1])
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(x.dtype)
        a_w, b_w = lora_a.to(x.dtype), lora_b.to(x.dtype)
        # d(out)/d(down) = scale * B: the gradient reaching the rank-r bottleneck.
        grad_down = (grad @ b_w).mul_(scale)  # (tokens, r)
        grad_b = (grad.t() @ down).mul_(scale) if ctx.needs_input_grad[4] else None
        mask = keep_mask(rows.shape, p, seed, x.dtype, x.device) if p > 0.0 else None
        grad_a = None
        if ctx.needs_input_grad[3]:
            x_dropped = rows if mask is None else torch.mul(rows, mask).mul_(1.0 / (1.0 - p))
            grad_a = grad_down.t() @ x_dropped
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight
            if mask is None:
                grad_x.addmm_(grad_down, a_w)
            else:
                grad_x.add_((grad_down @ a_w).mul_(mask), alpha=1.0 / (1.0 - p))
            grad_x = grad_x.view(x.shape)
        return (
            grad_x,
            None,
            None,
            None if grad_a is None else grad_a.to(lora_a.dtype),
            None if grad_b is None else grad_b.to(lora_b.dtype),
            None,
            None,
            None,
        )


def _fusable(module: Any) -> bool:
    """Plain LoRA on an unquantized ``nn.Linear``, one adapter, no DoRA/variants/bias."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(module) is not LoraLinear or not isinstance(module.base_layer, torch.nn.Linear):
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


def _fused_forward(module: Any) -> Any:
    peft_forward = module.forward
    name = module.active_adapters[0]

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if (
            args
            or kwargs
            or module.disable_adapters
            or module.merged
            or module.active_adapters != [name]
        ):
            return peft_forward(x, *args, **kwargs)
        base = module.base_layer
        dropout = module.lora_dropout[name]
        p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        seed = int(torch.randint(0, _SEED_BOUND, (1,)).item()) if p > 0.0 else 0
        weight = base.weight
        with torch.autocast(device_type=x.device.type, enabled=False):
            return LoraLinearFunction.apply(
                x.to(weight.dtype),
                weight,
                base.bias,
                module.lora_A[name].weight,
                module.lora_B[name].weight,
                float(module.scaling[name]),
                p,
                seed,
            )

    return forward


def fuse_lora_linears(model: Any) -> int:
    """Give every fusable peft LoRA linear of ``model`` the fused forward; returns how many.

    Call after ``get_peft_model``. The base weights must be frozen (they are under peft).
    """
    count = 0
    for module in model.modules():
        if getattr(module, "_ftj_fused", False) or not _fusable(module):
            continue
        if module.base_layer.weight.requires_grad:
            continue
        module.forward = _fused_forward(module)
        module._ftj_fused = True
        count += 1
    return count

"""A frozen base model stored in 8-bit floats: QLoRA's memory saving at bf16 LoRA's speed.

A 7B model's bf16 weights are 14.2 GiB: on a 7B LoRA run that is most of the memory a planner
cannot move (the adapter and its optimizer state are ~0.6 GiB, activations can be recomputed).
bitsandbytes' 8-bit format (LLM.int8) halves it but is slow, and its matmul keeps every
linear's input alive outside checkpointing's reach (cost.py). Here each frozen linear
weight is kept as ``float8_e4m3fn`` with one fp32 scale per output channel instead (the
format FP8 inference checkpoints use; per-channel e4m3 loses far less than 4-bit NF4), and

* on GPUs with FP8 tensor cores (compute capability 8.9+: Ada, Hopper and newer) the forward
  GEMM runs in FP8: the input is quantized per row (one fp32 scale per token) and
  ``torch._scaled_mm`` multiplies with both scales applied, writing bf16. FP8 tensor cores do
  about twice bf16's FLOPs, and a recomputed layer runs this forward twice;
* the input gradient (the only one a frozen weight needs) is computed in the activations' own
  dtype against the dequantized weight, so gradients are not quantized;
* elsewhere (CPUs, older GPUs, ``FTJ_FP8_COMPUTE=0``) the forward dequantizes the weight too:
  the weights are 8-bit, the arithmetic is bf16/fp32.

The LoRA adapter stays in full precision and is what trains; the merge reloads the original
16-bit base (merge.py), as QLoRA's recipe does. ``lora_fused.py`` calls ``linear`` and
``grad_input`` below for its base GEMMs, so an adapted Float8 linear keeps the fused forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from finetune_trainer import switches
from finetune_trainer.acceleration import triton_kernels

FLOAT8 = torch.float8_e4m3fn
FLOAT8_MAX = float(torch.finfo(FLOAT8).max)  # 448
# Smallest scale: a row of zeros must not divide by zero.
_MIN_AMAX = 1e-12


def quantize_rows(
    t: torch.Tensor, work_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: an e4m3 copy of 2-D ``t`` and one fp32 scale per row, ``t ≈ q * scale``.

    The row's largest magnitude maps to e4m3's largest value (448), so nothing saturates.
    ``work_dtype`` is the dtype the division happens in: ``t``'s own for activations (no
    full-size fp32 temporary on the hot path), fp32 for weights (quantized once).
    """
    if work_dtype is None and triton_kernels.available(t):
        return triton_kernels.quantize_rows(t, FLOAT8, FLOAT8_MAX)  # one kernel, one pass
    amax = torch.linalg.vector_norm(t, float("inf"), dim=1, keepdim=True).float()
    scale = amax.clamp_(min=_MIN_AMAX).div_(FLOAT8_MAX)
    work = t if work_dtype is None else t.to(work_dtype)
    q = torch.empty(t.shape, dtype=FLOAT8, device=t.device)
    torch.mul(work, scale.reciprocal().to(work.dtype), out=q)  # scaled and cast in one pass
    return q, scale


class _SharedInput:
    """The last quantized activation, for sibling projections that read the same input.

    q, k and v read one normed hidden state, gate and up another: quantizing it once instead
    of three and two times saves memory passes on every layer. The entry holds the source
    tensor itself, so its memory cannot be reused by another tensor while it is cached, and
    matches on storage, shape, strides and autograd's version counter (an in-place change
    invalidates it). Inputs no sibling shares are not cached (``share=False``), so a large
    one is not kept alive past its use.
    """

    def __init__(self) -> None:
        self.entry: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None

    def quantize(self, rows: torch.Tensor, share: bool) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.entry
        if (
            entry is not None
            and entry[0].data_ptr() == rows.data_ptr()
            and entry[0].shape == rows.shape
            and entry[0].stride() == rows.stride()
            and entry[1] == rows._version
        ):
            return entry[2], entry[3]
        q, scale = quantize_rows(rows)
        self.entry = (rows, rows._version, q, scale) if share else None
        return q, scale


_shared_input = _SharedInput()


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight in ``dtype`` (one temporary of the layer's size)."""
    if triton_kernels.available(weight):
        return triton_kernels.dequantize_rows(weight, scale, dtype)
    return weight.to(dtype).mul_(scale.to(dtype))


def fp8_tensor_cores(device: torch.device) -> bool:
    """Whether ``device`` multiplies FP8 matrices natively (CUDA compute capability >= 8.9)."""
    if device.type != "cuda" or not switches.active().fp8_compute:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def linear(
    rows: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    share_input: bool = True,
) -> torch.Tensor:
    """``rows @ W.T + bias`` for 2-D ``rows`` and an e4m3 ``weight`` with per-output ``scale``
    of shape (out, 1); the result is in ``rows``' dtype. ``share_input=False`` for an input
    no other projection reads (it is then not kept for reuse)."""
    if _fp8_gemm_fits(rows, weight):
        q, row_scale = _shared_input.quantize(rows, share_input)
        out = torch._scaled_mm(
            q,
            weight.t(),  # (in, out), column-major: the layout _scaled_mm wants for its 2nd matrix
            scale_a=row_scale,
            scale_b=scale.view(1, -1),
            out_dtype=rows.dtype,
            use_fast_accum=True,
        )
        if bias is not None:
            out.add_(bias.to(out.dtype))
        return out
    bias = None if bias is None else bias.to(rows.dtype)
    return F.linear(rows, dequantize(weight, scale, rows.dtype), bias)


def linear_16bit(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    share_input: bool = True,
) -> torch.Tensor:
    """``rows @ W.T + bias`` for a 16-bit frozen ``weight`` on FP8 tensor cores: the weight is
    quantized per output channel for this GEMM only (one pass over it, an e4m3 copy of half
    its size, freed after the GEMM), so the model keeps its 16-bit weights and every gradient
    is computed against them. Where FP8 GEMMs don't fit, the plain bf16 GEMM."""
    if not _fp8_gemm_fits(rows, weight):
        return F.linear(rows, weight, bias)
    q, scale = quantize_rows(weight)
    return linear(rows, q, scale, bias, share_input)


def quantize_columns(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(qt, scale)``: the e4m3 copy of ``weight.T`` (contiguous) with one fp32 scale per
    column of ``weight`` (its input channel), ``weight.T ≈ qt * scale``: the operand of an
    input-gradient GEMM, whose reduction runs along the weight's output channels, so only a
    per-input-channel scale can be applied after it."""
    if triton_kernels.available(weight):
        return triton_kernels.quantize_columns_transposed(weight, FLOAT8, FLOAT8_MAX)
    return quantize_rows(weight.t(), weight.dtype)  # one transposed copy, in the weight's dtype


def grad_input_16bit(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ W``, the input gradient of a frozen 16-bit ``weight`` (out, in), on FP8 tensor
    cores: the gradient quantized per token (its row), the weight per input channel (its
    column), each scale along an axis the product keeps, so both are applied to the output
    (``torch._scaled_mm``'s row-wise scaling). The FP8 recipe torchao calls "rowwise" uses
    e4m3 for gradients the same way; the accumulation is kept exact (``use_fast_accum=False``,
    as torchao does for gradients) because the reduction runs over up to 18,944 products.
    The LoRA weights' gradients stay bf16: only the base's input gradient is quantized.
    Where FP8 GEMMs don't fit, the plain bf16 product."""
    if not _fp8_gemm_fits(grad, weight):
        return grad @ weight
    q, row_scale = quantize_rows(grad)
    qt, column_scale = quantize_columns(weight)
    return torch._scaled_mm(
        q,
        qt.t(),  # (out, in), column-major: the layout _scaled_mm wants for its 2nd matrix
        scale_a=row_scale,
        scale_b=column_scale.view(1, -1),
        out_dtype=grad.dtype,
        use_fast_accum=False,
    )


def _fp8_gemm_fits(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``_scaled_mm`` takes these operands: FP8 tensor cores, half-precision rows,
    both weight dimensions multiples of 16."""
    return (
        fp8_tensor_cores(rows.device)
        and rows.dtype in (torch.bfloat16, torch.float16)
        and weight.shape[0] % 16 == 0
        and weight.shape[1] % 16 == 0
    )


def grad_input(grad: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``grad @ W``: the input gradient, in ``grad``'s dtype against the dequantized weight.

    ``FTJ_FP8_BACKWARD=1`` (an ablation, off by default: it quantizes gradients) runs it on FP8
    tensor cores instead: the weight's per-output scale lies along this product's reduction
    axis, so it is folded into the gradient's columns before the gradient is quantized per row.
    """
    if switches.active().fp8_backward and _fp8_gemm_fits(grad, weight):
        q, row_scale = quantize_rows(grad * scale.view(1, -1).to(grad.dtype))
        ones = torch.ones(1, weight.shape[1], dtype=torch.float32, device=grad.device)
        return torch._scaled_mm(
            q,
            weight.t().contiguous().t(),  # (out, in) column-major, as _scaled_mm wants it
            scale_a=row_scale,
            scale_b=ones,
            out_dtype=grad.dtype,
        )
    return grad @ dequantize(weight, scale, grad.dtype)


class Float8LinearFunction(torch.autograd.Function):
    """A frozen Float8 linear: gradient for the input only (the weight never trains)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, scale)
        ctx.input_shape = x.shape
        out = linear(x.reshape(-1, x.shape[-1]), weight, scale, bias)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        weight, scale = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        return grad_input(grad, weight, scale).view(ctx.input_shape), None, None, None


class Float8Linear(torch.nn.Linear):
    """An ``nn.Linear`` whose frozen weight is e4m3 with a per-output-channel scale.

    It is an ``nn.Linear`` so that peft wraps it like any linear (its LoRA layer reads
    ``in_features``/``out_features``) and the fused LoRA forward recognises it.
    """

    weight_scale: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype,
    ):
        torch.nn.Module.__init__(self)  # not Linear's: it would allocate a full-precision weight
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = compute_dtype  # the replaced weight's dtype
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        # nn.Linear annotates its bias as always set; Linear(bias=False) leaves it None too.
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)  # type: ignore[assignment]

    @classmethod
    def from_linear(
        cls, module: torch.nn.Linear, device: torch.device | None = None
    ) -> Float8Linear:
        """Quantize a linear's weight per output channel, on ``device`` (where the result
        lives; default: where the weight is). The original can then be freed."""
        with torch.no_grad():
            weight = module.weight.detach()
            bias = None if module.bias is None else module.bias.detach()
            if device is not None:
                weight = weight.to(device)
                bias = None if bias is None else bias.to(device)
            q, scale = quantize_rows(weight, torch.float32)
        return cls(q, scale, bias, module.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        dtype = self.compute_dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            # torch types Function.apply as untyped; forward above says what it returns.
            out: torch.Tensor = Float8LinearFunction.apply(  # type: ignore[no-untyped-call]
                x.to(dtype), self.weight, self.weight_scale, bias
            )
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3"


def compute_dtype(module: torch.nn.Linear) -> torch.dtype:
    """The dtype a (possibly Float8) linear computes in: its weight's, where a Float8 weight
    stands for the dtype it was quantized from (the model's training dtype)."""
    return module.compute_dtype if isinstance(module, Float8Linear) else module.weight.dtype


def quantize_base_linears(
    model: Any, skip: tuple[str, ...] = ("lm_head",), device: torch.device | None = None
) -> int:
    """Replace every frozen ``nn.Linear`` of ``model`` (the LM head excepted) by a
    ``Float8Linear``; a LoRA layer's base layer is replaced inside it. Returns how many.

    Call after ``get_peft_model``: peft moves a new adapter to its base weight's dtype when
    that is a float type, which would make the adapter 8-bit. Each replaced weight is freed
    as soon as it is quantized, so peak memory grows by one layer, not by a second model.
    ``device``: where the e4m3 weights go (a model loaded into host memory reaches the GPU
    one quantized linear at a time).
    """
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child.weight.requires_grad:
                continue
            if child_name in skip or any(part in skip for part in parent_name.split(".")):
                continue
            setattr(parent, child_name, Float8Linear.from_linear(child, device))
            del child
            count += 1
    _keep_out_of_ddp_sync(model)
    return count


def _keep_out_of_ddp_sync(model: Any) -> None:
    """Tell DistributedDataParallel not to broadcast the Float8 tensors at start-up.

    DDP broadcasts every parameter and buffer from rank 0 when it wraps a model; gloo (CPU
    runs, the multi-node CPU test) has no float8 type and fails there ("Invalid scalar type").
    Every rank loads the same checkpoint and quantizes it the same way, so the frozen tensors
    are equal already; the adapter, which trains, is still broadcast and all-reduced.
    """
    names = [
        f"{name}.{tensor}" if name else tensor
        for name, module in model.named_modules()
        if isinstance(module, Float8Linear)
        for tensor, _ in (
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        )
    ]
    ddp = torch.nn.parallel.DistributedDataParallel
    ddp._set_params_and_buffers_to_ignore_for_model(model, names)  # type: ignore[no-untyped-call]  # torch's private helper is untyped


def weight_scale(module: Any) -> torch.Tensor | None:
    """A base layer's per-channel scale when its weight is Float8, else ``None``."""
    return module.weight_scale if isinstance(module, Float8Linear) else None

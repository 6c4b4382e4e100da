"""Tolerances derived from floating-point rounding, for tests that compare two ways of
computing the same numbers: compiled against eager, fused against peft's forward, a packed row
against its examples alone, a merged model against base plus adapter.

The model of the error (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
ch. 2-3): every operation rounds with relative error at most ``u``, the unit roundoff of its
dtype (``2**-24`` for float32). A sum of ``K`` terms, added in whatever order a kernel picks, is
then off by at most ``(K - 1) * u`` times the sum of the terms' magnitudes (Thm 3.1); rounding
errors behave like independent zero-mean variables, so in practice, and with high probability,
by ``sqrt(K) * u`` (Higham & Mary, "A new approach to probabilistic rounding error analysis",
SIAM J. Sci. Comput. 41(5), 2019). A result computed through ``D`` such sums one after the
other (each takes the previous one's rounded output), in a network that passes relative errors
on at about their size, carries their first-order sum: ``D * sqrt(K) * u``, ``K`` the longest.
Two computations of the same value that round differently (another summation order, fused or
not, vectorized or not, another thread count) each lie within that of the exact value, so
within twice it of each other.

The bound holds for a norm of the whole result (or an entry next to the result's scale), not
for each entry alone: an entry that is a small difference of large terms (a gradient summed
over tokens) has an error relative to those terms, not to itself. So the comparisons here are
norm-wise, ``||got - want|| <= bound * ||want||``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
    torch.float8_e4m3fn: 2.0**-4,
}


def rounding_bound(dtype: torch.dtype, *, longest_sum: int, chained_sums: int) -> float:
    """Relative error of one ``dtype`` computation of ``chained_sums`` sums in sequence, the
    longest of ``longest_sum`` terms: ``chained_sums * sqrt(longest_sum) * u``."""
    return chained_sums * math.sqrt(longest_sum) * UNIT_ROUNDOFF[dtype]


def decoder_sums(layers: int, *, loss: bool = True) -> int:
    """Sums in sequence from the token embeddings to the loss (or the logits) of a
    Llama/Qwen-style decoder.

    Per layer, 9: the attention norm's mean square, the q/k/v projections (side by side, so
    one step; a LoRA branch adds its A then B next to the base GEMM, within that step), the
    attention scores, the softmax's normalizer, the weighted sum of values, the output
    projection, the MLP norm, the gate/up projections, the down projection. After the last
    layer: the final norm, the LM head (the logits), then the cross-entropy's log-sum-exp
    over the vocabulary and the mean over tokens (the loss).
    """
    return 9 * layers + (4 if loss else 2)


def gradient_sums(layers: int) -> int:
    """Sums in sequence behind a parameter's gradient: the forward to the loss, the backward
    back down to the parameter (the transpose of each forward sum, at most as many), and the
    gradient's own sum over tokens. A recomputed layer reruns the same code on the same inputs
    in the backward, so it rounds the same way and adds no step."""
    return 2 * decoder_sums(layers) + 1


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` (Frobenius), computed in float64."""
    want64 = want.detach().double()
    return float((got.detach().double() - want64).norm() / want64.norm())


def assert_within(
    got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], bound: float
) -> None:
    """Every tensor of ``got`` is within ``bound`` (norm-wise relative) of ``want``'s."""
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    errors = {name: relative_error(got[name], want[name]) for name in got}
    over = {name: error for name, error in errors.items() if not error <= bound}
    assert not over, f"over the rounding bound {bound:.3g}: {over}"


@dataclass(frozen=True)
class StepBounds:
    """How far apart two computations of one training step may be: the loss (relative) and
    each gradient tensor (norm-wise relative)."""

    loss: float
    gradients: float


def training_step_bounds(
    shape: Mapping[str, int], tokens: int, dtype: torch.dtype = torch.float32
) -> StepBounds:
    """Bounds between two ``dtype`` computations of one forward and backward of a decoder of
    ``shape`` (a ``transformers`` config's sizes) on ``tokens`` tokens: twice
    :func:`rounding_bound` (each lies within it of the exact step), the longest sum being
    the longest of the widths, the vocabulary and the token count."""
    longest = max(shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"], tokens)
    layers = shape["num_hidden_layers"]
    return StepBounds(
        loss=2 * rounding_bound(dtype, longest_sum=longest, chained_sums=decoder_sums(layers)),
        gradients=2
        * rounding_bound(dtype, longest_sum=longest, chained_sums=gradient_sums(layers)),
    )


def logits_bound(
    shape: Mapping[str, int], tokens: int, dtype: torch.dtype = torch.float32
) -> float:
    """Bound (norm-wise relative) between two ``dtype`` computations of the logits of a
    decoder of ``shape`` on ``tokens`` tokens: no sum runs over the vocabulary before them."""
    longest = max(shape["hidden_size"], shape["intermediate_size"], tokens)
    sums = decoder_sums(shape["num_hidden_layers"], loss=False)
    return 2 * rounding_bound(dtype, longest_sum=longest, chained_sums=sums)


def same_seeds(run: Callable[[T], R], model: T, reference: T, seed: int = 5) -> tuple[R, R]:
    """``run(model)`` and ``run(reference)``, each from ``torch.manual_seed(seed)`` (so both
    draw the same dropout masks)."""
    torch.manual_seed(seed)
    want = run(reference)
    torch.manual_seed(seed)
    return run(model), want


def assert_identical_step(
    got: tuple[object, Mapping[str, torch.Tensor]], want: tuple[object, Mapping[str, torch.Tensor]]
) -> None:
    """``(loss or losses, gradients by name)`` are bit for bit the same: the same operations
    on the same inputs in the same order round the same way (a recomputed layer reruns its
    forward's kernels; a weight copied into another buffer is the same numbers), so there is
    no rounding difference to allow for."""
    (got_loss, got_grads), (want_loss, want_grads) = got, want
    assert got_loss == want_loss
    assert set(got_grads) == set(want_grads), sorted(set(got_grads) ^ set(want_grads))
    differ = [name for name in got_grads if not torch.equal(got_grads[name], want_grads[name])]
    assert not differ, differ


def assert_same_step(
    got: tuple[float, Mapping[str, torch.Tensor]],
    want: tuple[float, Mapping[str, torch.Tensor]],
    bounds: StepBounds,
) -> None:
    """``(loss, gradients by name)`` of two computations of one step agree within ``bounds``."""
    (got_loss, got_grads), (want_loss, want_grads) = got, want
    assert abs(got_loss - want_loss) <= bounds.loss * abs(want_loss), (got_loss, want_loss)
    assert_within(got_grads, want_grads, bounds.gradients)

"""Pure, shape-annotated tensor operations shared by the variants (no modules, no state)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor


def unit_norm_rows(
    weight: Float[Tensor, "rows cols"], eps: float = 1e-8
) -> Float[Tensor, "rows cols"]:
    """Each row scaled to unit L2 norm (decoder rows are dictionary directions)."""
    return weight / weight.norm(dim=-1, keepdim=True).clamp_min(eps)


def normalize_rows_(weight: Float[Tensor, "rows cols"], eps: float = 1e-8) -> Tensor:
    """:func:`unit_norm_rows` in place (the same numbers, no ``[rows, cols]`` temporary)."""
    return weight.div_(weight.norm(dim=-1, keepdim=True).clamp_min(eps))


def remove_parallel_component(
    grad: Float[Tensor, "rows cols"], weight: Float[Tensor, "rows cols"]
) -> Float[Tensor, "rows cols"]:
    """``grad`` minus its component along each (unit-normalized) row of ``weight``.

    Projecting decoder gradients onto the tangent space of the unit sphere keeps a step from
    fighting the renormalization that follows it. Three passes over ``[rows, cols]`` (two row
    dot products, one fused multiply-subtract) and one new tensor: at d_sae x d_in this runs
    every step, and each extra temporary of that size costs as much as the arithmetic.
    """
    squared_norms = torch.einsum("ij,ij->i", weight, weight).clamp_min(1e-16)
    along = torch.einsum("ij,ij->i", grad, weight) / squared_norms
    return torch.addcmul(grad, weight, along.unsqueeze(-1), value=-1.0)


class TokenMoments(NamedTuple):
    """Per-token mean and variance over the feature axis, the variance held as
    ``var(x) / factor**2`` so no square of a large activation is ever formed (``x**2``
    overflows float32 from ``|x| ~ 1.8e19``). ``factor`` is a power of two >= 1 (1 for tokens
    whose entries lie in [-2, 2]), so the scaling is exact: every figure computed from these
    moments is bit-for-bit what the unscaled formula gives wherever that formula does not
    overflow."""

    mean: Float[Tensor, "*batch 1"]
    scaled_variance: Float[Tensor, "*batch 1"]
    """Biased variance of ``x / factor``, as LayerNorm computes it."""
    factor: Float[Tensor, "*batch 1"]


def power_of_two_scale(x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch 1"]:
    """Per row, the power of two ``f >= 1`` with ``max |x| / f < 2`` (exact division)."""
    magnitude = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    mantissa, _ = torch.frexp(magnitude)  # magnitude = mantissa 2^e, mantissa in [0.5, 1)
    return magnitude / (2.0 * mantissa)  # 2^(e-1): at most 2^127 in float32, never inf


def token_moments(x: Float[Tensor, "*batch d_in"]) -> TokenMoments:
    """Per-token mean and (biased) variance over the feature axis, overflow-free at any finite
    scale (see :class:`TokenMoments`)."""
    factor = power_of_two_scale(x)
    if x.numel() == 0:  # an empty batch: nothing to reduce (var_mean would warn)
        empty = factor.new_zeros(factor.shape)
        return TokenMoments(empty, empty, factor)
    variance, mean = torch.var_mean(x / factor, dim=-1, keepdim=True, correction=0)
    return TokenMoments(mean * factor, variance, factor)


def scaled_eps(eps: float, factor: Float[Tensor, "*batch 1"]) -> Float[Tensor, "*batch 1"]:
    """``eps / factor**2``: the epsilon that sits beside a scaled variance (0 once it underflows,
    where it is negligible against any variance the scaled row can have)."""
    return eps / (factor * factor)


def scaled_root(
    scaled_variance: Float[Tensor, "*batch 1"], factor: Float[Tensor, "*batch 1"], eps: float
) -> Float[Tensor, "*batch 1"]:
    """``sqrt(v + eps)`` for ``v = scaled_variance * factor**2``, without forming ``v``.
    Floored at the dtype's smallest normal number, so a constant token at a scale where ``eps``
    vanishes normalizes to 0 instead of 0/0."""
    tiny = torch.finfo(scaled_variance.dtype).tiny
    return torch.sqrt((scaled_variance + scaled_eps(eps, factor)).clamp_min(tiny)) * factor


def token_scale(moments: TokenMoments, eps: float) -> Float[Tensor, "*batch 1"]:
    """``sigma_b = sqrt(v_b + eps)`` from the token moments: the scale a per-token
    normalization removes and scale-restored codes put back (docs/spec.md §3 d2, §5 S1)."""
    return scaled_root(moments.scaled_variance, moments.factor, eps)


def stacked_affine(
    columns: list[Float[Tensor, "rows _"]], weights: list[Float[Tensor, "_ d_sae"]]
) -> Float[Tensor, "rows d_sae"]:
    """``[c_1 | c_2 | ...] @ [W_1; W_2; ...]``: one matrix product (one pass over the
    ``[rows, d_sae]`` output) for a sum of terms that share the output; a bias is a column of
    ones against it."""
    return torch.cat(columns, dim=1) @ torch.cat(weights, dim=0)


def layer_normalized_preactivation(
    x: Float[Tensor, "*batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    gain: Float[Tensor, " d_in"],
    bias: Float[Tensor, " d_in"],
    eps: float,
    restore_scale: bool,
) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch 1"] | None]:
    """A linear encoder behind an input LayerNorm: ``n = (gain (x - mu) / s + bias) W + b`` with
    ``s = sqrt(var(x) + eps)`` per token. Returns ``(s n, s)`` when the codes restore the scale
    (their ``ReLU(s n) = s ReLU(n)`` decode linearly to raw activations; docs/spec.md §5 S1, §6
    input_ln) or ``(n, None)``. One product, no ``[rows, d_sae]`` normalization or scaling pass:
    ``s n = (gain (x - mu)) W + s (bias W + b)``."""
    leading = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    moments = token_moments(rows)
    mean, scale = moments.mean, token_scale(moments, eps)
    centred = gain * (rows - mean)
    weights = [W_enc, (bias @ W_enc + b_enc).unsqueeze(0)]
    if restore_scale:
        pre = stacked_affine([centred, scale], weights)
    else:
        pre = stacked_affine([centred / scale, torch.ones_like(scale)], weights)
    pre = pre.reshape(*leading, W_enc.shape[1])
    return pre, (scale.reshape(*leading, 1) if restore_scale else None)


def fraction_of_variance_unexplained(
    x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"]
) -> Float[Tensor, ""]:
    """``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over the batch."""
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
    return residual / total


def variance_sums(
    x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"]
) -> Float[Tensor, " d_in_plus_3"]:
    """The sums :func:`fraction_of_variance_unexplained` is made of, in float64, as one vector
    ``[sum ||x - x_hat||^2, sum ||x||^2, rows, sum_b x_b (d_in)]``: summed over several batches
    (e.g. data-parallel replicas'), :func:`fvu_from_sums` gives the FVU of their union."""
    x, x_hat = x.double(), x_hat.double()
    scalars = torch.stack(
        [(x - x_hat).pow(2).sum(), x.pow(2).sum(), x.new_tensor(float(x.shape[0]))]
    )
    return torch.cat([scalars, x.sum(dim=0)])


def fvu_from_sums(sums: Float[Tensor, " d_in_plus_3"]) -> Float[Tensor, ""]:
    """The FVU of the rows :func:`variance_sums` summed (float32, like the direct form)."""
    residual, squares, rows, column_sums = sums[0], sums[1], sums[2], sums[3:]
    total = (squares - column_sums.pow(2).sum() / rows).clamp_min(torch.finfo(torch.float32).tiny)
    return (residual / total).float()


def mean_max_decoder_cosine(
    W_dec: Float[Tensor, "d_sae d_in"], chunk: int = 4096
) -> Float[Tensor, ""]:
    """Mean over features of the largest |cosine| between its decoder row and any other row.

    Low values mean a dictionary of well-separated directions (seed 002's claim). Computed in
    row blocks so that no ``d_sae x d_sae`` matrix is held at once.
    """
    unit = unit_norm_rows(W_dec.detach().float())
    d_sae = unit.shape[0]
    maxima = torch.empty(d_sae, dtype=unit.dtype, device=unit.device)
    for start in range(0, d_sae, chunk):
        block = (unit[start : start + chunk] @ unit.T).abs()
        rows = torch.arange(block.shape[0], device=unit.device)
        block[rows, rows + start] = -1.0  # a row is not its own neighbour
        maxima[start : start + chunk] = block.max(dim=1).values
    return maxima.mean()

"""Pure maths of the multi-scale normalization SAE (seed 001; ``docs/spec.md`` §3).

Every function here is stateless and shape-annotated; the module in ``multiscale_norm.py`` owns
the parameters and the running statistics and calls these.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sae_variants.functional import TokenMoments, scaled_eps, unit_norm_rows


def multiscale_normalize(
    x: Float[Tensor, "*batch d_in"],
    moments: TokenMoments,
    gains: Float[Tensor, "scales d_in"],
    biases: Float[Tensor, "scales d_in"],
    scale_logits: Float[Tensor, " scales"],
    scales: Float[Tensor, " scales"],
    eps: float,
) -> Float[Tensor, "*batch d_in"]:
    """Eqs. 2-3 (C1): ``sum_s pi_s (gamma_s (x - mu) / sqrt(s v + eps) + beta_s)``, pi = softmax.

    Computed as one per-token gain instead of ``len(scales)`` normalized copies:
    ``(x - mu) * (c @ (pi gamma)) + pi beta`` with ``c_bs = 1 / sqrt(s v_b + eps)``. (Up to eps this
    is a single affine LayerNorm; docs/spec.md §3 d1: the scales only reparametrize it.)
    ``moments`` are :func:`token_moments` of ``x``, passed in because the scale restoration
    needs the same variance; ``c`` is formed from their scaled variance, so no square of ``x``
    overflows.
    """
    mix = torch.softmax(scale_logits, dim=0)
    factor = moments.factor
    scaled_inverse_std = torch.rsqrt(
        moments.scaled_variance * scales + scaled_eps(eps, factor)
    )  # [*batch, scales]: factor / sqrt(s v + eps)
    gain = scaled_inverse_std @ (mix.unsqueeze(1) * gains)
    return ((x - moments.mean) / factor) * gain + mix @ biases


def slot_attention(
    x: Float[Tensor, "*batch d_in"],
    query: Float[Tensor, "d_in d_k"],
    keys: Float[Tensor, "slots d_k"],
    values: Float[Tensor, "slots d_in"],
    temperature_logit: Float[Tensor, ""],
) -> Float[Tensor, "*batch d_in"]:
    """Eq. 5 with learned slots (C2): ``x + softmax(q K^T / sqrt(d_k) * sigmoid(alpha)) V``.

    Each token attends over ``slots`` learned keys, never over other tokens, so a row's output
    depends on that row alone (docs/spec.md §3 d4: the code attended over the shuffled batch).
    """
    logits = (x @ query) @ keys.T * (torch.sigmoid(temperature_logit) / math.sqrt(keys.shape[1]))
    return x + torch.softmax(logits, dim=-1) @ values


def gate_thresholds(
    running_mean: Float[Tensor, " d_sae"],
    running_var: Float[Tensor, " d_sae"],
    z_threshold: float,
    eps: float,
) -> Float[Tensor, " d_sae"]:
    """Per-feature pre-activation a token must exceed to fire (C4).

    The one-sided z-gate ``(pre - mean) / sqrt(var + eps) > z`` combined with the ReLU is
    ``pre > max(mean + z sqrt(var + eps), 0)``: a JumpReLU whose threshold is a running statistic.
    """
    return (running_mean + z_threshold * torch.sqrt(running_var + eps)).clamp_min(0.0)


def gated_codes(
    pre: Float[Tensor, "*batch d_sae"],
    thresholds: Float[Tensor, " d_sae"],
    scale: Float[Tensor, "*batch 1"] | None,
) -> Float[Tensor, "*batch d_sae"]:
    """``sigma_b * pre * 1[pre > threshold]``: non-negative, scale-restored codes (C4, d2);
    ``scale=None`` leaves them unscaled.

    The mask carries no gradient; ``pre`` does where a feature fires.
    """
    codes = torch.where(pre > thresholds, pre, torch.zeros((), dtype=pre.dtype, device=pre.device))
    return codes if scale is None else codes * scale


def batch_moments(
    pre: Float[Tensor, "batch d_sae"],
) -> tuple[Float[Tensor, " d_sae"], Float[Tensor, " d_sae"]]:
    """Mean and (biased) variance of each feature's pre-activation over the batch."""
    variance, mean = torch.var_mean(pre, dim=0, correction=0)
    return mean, variance


def frame_orthogonality(W: Float[Tensor, "d_sae d_in"]) -> Float[Tensor, ""]:
    """``||W W^T - I||_F`` (not squared; C6) through the ``d_in x d_in`` Gram matrix.

    ``||W W^T - I||_F^2 = ||W^T W||_F^2 - 2 ||W||_F^2 + d_sae``, so no ``d_sae x d_sae`` matrix is
    formed. Clamped away from 0 before the square root so its gradient stays finite.
    """
    gram = W.T @ W
    squared = gram.pow(2).sum() - 2.0 * W.pow(2).sum() + W.shape[0]
    return torch.sqrt(squared.clamp_min(torch.finfo(W.dtype).eps))


def frame_orthogonality_floor(d_sae: int, d_in: int) -> float:
    """The smallest value :func:`frame_orthogonality` can take for unit rows (a tight frame).

    For ``d_sae > d_in`` it is ``sqrt(d_sae^2 / d_in - d_sae) > 0`` (docs/spec.md §3 d7), so the penalty
    never vanishes; reports subtract it to show how far a decoder is from the optimum.
    """
    return math.sqrt(max(d_sae * d_sae / d_in - d_sae, 0.0))


def moment_sums(pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, " two_d_sae_plus_1"]:
    """``[rows, sum_b pre_b (d_sae), sum_b pre_b^2 (d_sae)]`` in float64: summed over several
    batches (e.g. data-parallel replicas'), :func:`moments_from_sums` gives their union's
    :func:`batch_moments`."""
    pre = pre.double()
    rows = pre.new_tensor([float(pre.shape[0])])
    return torch.cat([rows, pre.sum(dim=0), pre.pow(2).sum(dim=0)])


def moments_from_sums(
    sums: Float[Tensor, " two_d_sae_plus_1"], dtype: torch.dtype
) -> tuple[Float[Tensor, " d_sae"], Float[Tensor, " d_sae"]]:
    """Mean and (biased) variance of the rows :func:`moment_sums` summed, as ``dtype``."""
    d_sae = (sums.shape[0] - 1) // 2
    rows = sums[0]
    mean = sums[1 : 1 + d_sae] / rows
    variance = (sums[1 + d_sae :] / rows - mean * mean).clamp_min(0.0)
    return mean.to(dtype), variance.to(dtype)


def feature_importance(
    codes: Float[Tensor, "batch d_sae"], decoder_norms: Float[Tensor, " d_sae"]
) -> Float[Tensor, " d_sae"]:
    """``u_i = sigmoid(standardize(mean_b f_bi ||w_i||))`` (C7, closed form), without gradient.

    ``||f_bi w_i|| = f_bi ||w_i||`` replaces the paper code's d_sae full decodes per step.
    """
    return importance_from_mean_codes(codes.detach().mean(dim=0), decoder_norms)


def importance_from_mean_codes(
    mean_codes: Float[Tensor, " d_sae"], decoder_norms: Float[Tensor, " d_sae"]
) -> Float[Tensor, " d_sae"]:
    """:func:`feature_importance` from each feature's mean code over the batch (which
    data-parallel replicas average into the global batch's)."""
    with torch.no_grad():
        importance = mean_codes * decoder_norms
        # One feature has no spread to standardize by: it gets 0 (sigmoid 0.5), not 0/0.
        spread = importance.std(correction=1 if importance.numel() > 1 else 0)
        standardized = (importance - importance.mean()) / spread.clamp_min(1e-8)
        return torch.sigmoid(standardized)


def next_lr_factor(
    factor: float,
    grad_norm: float,
    grad_norm_ema: float | None,
    step: int,
    *,
    spike_ratio: float,
    decay: float,
    recovery: float,
    recovery_interval: int,
    minimum: float,
) -> float:
    """The adaptive learning-rate factor rho (C9, docs/spec.md §3 d11).

    A pre-clip gradient norm above ``spike_ratio`` times its running average shrinks rho by
    ``decay`` (not below ``minimum``); otherwise every ``recovery_interval`` steps it grows by
    ``recovery`` back towards 1. Before the average exists nothing changes.
    """
    if grad_norm_ema is not None and grad_norm > spike_ratio * grad_norm_ema:
        return max(minimum, factor * decay)
    if step > 0 and step % recovery_interval == 0:
        return min(1.0, factor * recovery)
    return factor


def reactivation_directions(
    residual: Float[Tensor, "batch d_in"],
    n_features: int,
    rank: int,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "n_features d_in"]:
    """Unit directions for revived features from a rank-``rank`` SVD of the residual (C10).

    Each direction is a residual row, sampled with probability proportional to its squared norm,
    projected onto the residual's top ``rank`` right-singular subspace (randomized SVD), so more
    dead features than ``rank`` still get distinct directions in the badly reconstructed subspace.
    """
    rank = min(rank, *residual.shape)
    _, _, basis = torch.svd_lowrank(residual, q=rank)  # basis: [d_in, rank]
    weights = residual.pow(2).sum(dim=-1)
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    rows = torch.multinomial(weights, n_features, replacement=True, generator=generator)
    projected = (residual[rows] @ basis) @ basis.T
    return unit_norm_rows(projected)


def dead_features(steps_since_fired: Tensor, window: int) -> Bool[Tensor, " d_sae"]:
    """Features that have not fired in the last ``window`` steps."""
    return steps_since_fired >= window


def interleave_rows(parts: list[Tensor]) -> Float[Tensor, "rows ..."]:
    """The inverse of splitting rows into ``x[j::M]`` for ``j < M`` (``M = len(parts)``): row
    ``i`` of the result is row ``i // M`` of part ``i % M``."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    out = first.new_empty((sum(p.shape[0] for p in parts), *first.shape[1:]))
    for j, part in enumerate(parts):
        out[j :: len(parts)] = part
    return out

"""The maths of PositionAwareSAE (seed 004), as pure functions (spec §6, P1-P6).

Every normalization of the spec is computed where it is cheap. The codes are ``s ReLU(n)`` with
``n`` a normalized pre-activation and ``s`` the scale it removed; since ``s > 0`` that is
``ReLU(s n)``, and ``s n`` is an affine map of the input whose per-row scalars can ride along as
extra input columns. So each of P1 (LayerNorm over the d_sae pre-activations, whose moments are
quadratic forms in the d_in-dimensional input), input LayerNorm and P3 (a LayerNorm over the
d_sae outputs of a rank-rho adapter, whose moments are quadratic forms in its rho hidden units)
becomes one matrix product: no ``[rows, d_sae]`` normalization, scaling or dropout pass. These
were most of the variant's step time (issue 7: 2.9x SAELens standard before, see
``sae-variants benchmark --architecture position_aware``). Tests check every function against
the spec's literal formula.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_variants.functional import stacked_affine


def position_ranges(positions: Int[Tensor, "*rows"], context_size: int, n_ranges: int) -> Int[Tensor, "*rows"]:
    """P2: ``r(p) = min(floor(p R / L), R - 1)``: equal ranges of the training context, positions
    beyond it clamped to the last range."""
    return torch.clamp(torch.div(positions * n_ranges, context_size, rounding_mode="floor"), max=n_ranges - 1)


def curriculum_alpha(step: int, total_steps: int, warm_up_fraction: float, end_fraction: float) -> float:
    """P6: ``clip((t - t_w) / (t_e - t_w), 0, 1)`` with ``t_w = min(1000, f_w T)`` and
    ``t_e = min(10000, f_e T)``: the paper's 1k/10k steps on long runs, fractions of the run otherwise."""
    start = min(1000.0, warm_up_fraction * total_steps)
    end = max(min(10000.0, end_fraction * total_steps), start + 1.0)
    return float(min(1.0, max(0.0, (step - start) / (end - start))))


def _centred_second_moment(
    inputs: Float[Tensor, "rows k"], weight_c: Float[Tensor, "k d_sae"], bias_c: Float[Tensor, " d_sae"]
) -> Float[Tensor, "rows 1"]:
    """``mean_i (inputs W_c + b_c)_i^2`` without forming the ``[rows, d_sae]`` product: a
    quadratic form in the k inputs (``W_c``, ``b_c`` centred over the d_sae axis, so this is the
    biased variance LayerNorm uses)."""
    d_sae = weight_c.shape[1]
    gram = weight_c @ weight_c.T  # [k, k]
    quadratic = ((inputs @ gram) * inputs).sum(dim=1, keepdim=True)
    cross = 2.0 * inputs @ (weight_c @ bias_c).unsqueeze(1)
    return ((quadratic + cross + bias_c.dot(bias_c)) / d_sae).clamp_min(0.0)


def _centred_over_features(
    weight: Float[Tensor, "k d_sae"], bias: Float[Tensor, " d_sae"]
) -> tuple[Float[Tensor, "k d_sae"], Float[Tensor, " d_sae"]]:
    return weight - weight.mean(dim=1, keepdim=True), bias - bias.mean()


def preact_ln_codes_preactivation(
    x: Float[Tensor, "rows d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"],
    gain: Float[Tensor, " d_sae"], bias: Float[Tensor, " d_sae"], eps: float, restore_scale: bool,
) -> tuple[Float[Tensor, "rows d_sae"], Float[Tensor, "rows 1"] | None]:
    """P1 (paper): ``pre = x W + b``, ``n = gain (pre - mean_i pre) / s + bias`` with ``s`` the
    std of ``pre`` over the features; returns ``(s n, s)`` (restored: codes ``ReLU(s n)``) or
    ``(n, None)``. ``s n = x (W_c gain) + b_c gain + s bias``, with ``s`` from a d_in x d_in
    quadratic form."""
    W_c, b_c = _centred_over_features(W_enc, b_enc)
    scale = torch.sqrt(_centred_second_moment(x, W_c, b_c) + eps)
    weights = [W_c * gain, (b_c * gain).unsqueeze(0), bias.unsqueeze(0)]
    if restore_scale:
        return stacked_affine([x, torch.ones_like(scale), scale], weights), scale
    inverse = 1.0 / scale
    return stacked_affine([x * inverse, inverse, torch.ones_like(scale)], weights), None


def range_adapter_shift(
    base_codes: Float[Tensor, "rows d_sae"],
    scale: Float[Tensor, "rows 1"] | None,
    down: Float[Tensor, "d_sae rank"],
    down_bias: Float[Tensor, " rank"],
    up: Float[Tensor, "rank d_sae"],
    up_bias: Float[Tensor, " d_sae"],
    ln_gain: Float[Tensor, " d_sae"] | None,
    ln_bias: Float[Tensor, " d_sae"] | None,
    eps: float,
    alpha: float,
    hidden_dropout: nn.Dropout | None = None,
) -> tuple[Float[Tensor, "rows k"], Float[Tensor, "k d_sae"]]:
    """P3 for one range, as factors ``(Z, U)`` with ``Z @ U = s alpha LN(B z + c)``,
    ``z = Dropout(ReLU(A (h_b / s) + a))`` (``s = 1`` when ``scale`` is None; LN skipped when
    ``ln_gain`` is None). The LayerNorm's moments over d_sae come from a rank x rank Gram matrix,
    so the caller adds the shift to the pre-activations in one ``addmm``."""
    hidden = base_codes @ down
    if scale is not None:
        hidden = hidden / scale
    hidden = torch.relu(hidden + down_bias)
    if hidden_dropout is not None:
        hidden = hidden_dropout(hidden)
    row_factor = alpha if scale is None else alpha * scale
    ones = torch.ones_like(hidden[:, :1])
    if ln_gain is None:
        return torch.cat([hidden, ones], dim=1) * row_factor, torch.cat([up, up_bias.unsqueeze(0)])
    assert ln_bias is not None
    up_c, up_bias_c = _centred_over_features(up, up_bias)
    inverse_std = torch.rsqrt(_centred_second_moment(hidden, up_c, up_bias_c) + eps)
    factors = torch.cat([hidden * inverse_std, inverse_std, ones], dim=1) * row_factor
    return factors, torch.cat([up_c * ln_gain, (up_bias_c * ln_gain).unsqueeze(0), ln_bias.unsqueeze(0)])

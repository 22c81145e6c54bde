"""The maths of PositionAwareSAE (seed 004), as pure functions (docs/spec.md §6, P1-P6).

Every normalization of the spec is computed where it is cheap. The codes are ``s ReLU(n)`` with
``n`` a normalized pre-activation and ``s`` the scale it removed; since ``s > 0`` that is
``ReLU(s n)``, and ``s n`` is an affine map of the input whose per-row scalars can ride along as
extra input columns. So each of P1 (LayerNorm over the d_sae pre-activations, whose moments are
quadratic forms in the d_in-dimensional input), input LayerNorm and P3 (a LayerNorm over the
d_sae outputs of a rank-rho adapter, whose moments are quadratic forms in its rho hidden units)
becomes one matrix product: no ``[rows, d_sae]`` normalization, scaling or dropout pass (those
passes were most of the variant's step time; ``sae-variants benchmark --architecture
position_aware`` measures it). Tests check every function against the spec's literal formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sae_variants.functional import power_of_two_scale, scaled_root, stacked_affine


def position_ranges(
    positions: Int[Tensor, "*rows"], context_size: int, n_ranges: int
) -> Int[Tensor, "*rows"]:
    """P2: ``r(p) = min(floor(p R / L), R - 1)``: equal ranges of the training context, positions
    beyond it clamped to the last range."""
    return torch.clamp(
        torch.div(positions * n_ranges, context_size, rounding_mode="floor"), max=n_ranges - 1
    )


def curriculum_alpha(
    step: int, total_steps: int, warm_up_fraction: float, end_fraction: float
) -> float:
    """P6: ``clip((t - t_w) / (t_e - t_w), 0, 1)`` with ``t_w = min(1000, f_w T)`` and
    ``t_e = min(10000, f_e T)``: the paper's 1k/10k steps on long runs, fractions of the run otherwise."""
    start = min(1000.0, warm_up_fraction * total_steps)
    end = max(min(10000.0, end_fraction * total_steps), start + 1.0)
    return float(min(1.0, max(0.0, (step - start) / (end - start))))


def _centred_over_features(
    weight: Float[Tensor, "*group k d_sae"], bias: Float[Tensor, "*group d_sae"]
) -> tuple[Float[Tensor, "*group k d_sae"], Float[Tensor, "*group d_sae"]]:
    """``W`` and ``b`` minus their means over the d_sae axis: ``z W_c + b_c`` is ``z W + b``
    centred over the features, as a LayerNorm over them centres it."""
    return weight - weight.mean(dim=-1, keepdim=True), bias - bias.mean(dim=-1, keepdim=True)


def _second_moment_form(
    weight_c: Float[Tensor, "*group k d_sae"], bias_c: Float[Tensor, "*group d_sae"]
) -> tuple[Float[Tensor, "*group k k"], Float[Tensor, "*group k"], Float[Tensor, "*group"]]:
    """``(G, l, c)`` with ``mean_i (z W_c + b_c)_i^2 = z G z + l . z + c`` for any k-vector z:
    the biased variance a LayerNorm over the d_sae outputs uses, without forming them."""
    d_sae = weight_c.shape[-1]
    gram = weight_c @ weight_c.transpose(-1, -2) / d_sae
    linear = 2.0 * (weight_c @ bias_c.unsqueeze(-1)).squeeze(-1) / d_sae
    return gram, linear, (bias_c * bias_c).sum(dim=-1) / d_sae


def preact_ln_codes_preactivation(
    x: Float[Tensor, "rows d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    gain: Float[Tensor, " d_sae"],
    bias: Float[Tensor, " d_sae"],
    eps: float,
    restore_scale: bool,
) -> tuple[Float[Tensor, "rows d_sae"], Float[Tensor, "rows 1"] | None]:
    """P1 (paper): ``pre = x W + b``, ``n = gain (pre - mean_i pre) / s + bias`` with ``s`` the
    std of ``pre`` over the features; returns ``(s n, s)`` (restored: codes ``ReLU(s n)``) or
    ``(n, None)``. ``s n = x (W_c gain) + b_c gain + s bias``, with ``s`` from a d_in x d_in
    quadratic form."""
    W_c, b_c = _centred_over_features(W_enc, b_enc)
    gram, linear, constant = _second_moment_form(W_c, b_c)
    # The quadratic form of y = x / f (f a power of two, exact), so no square of a large x
    # overflows: var = f^2 (y G y + l.y / f + c / f^2).
    factor = power_of_two_scale(x)
    y = x / factor
    scaled_variance = (
        ((y @ gram) * y).sum(dim=1, keepdim=True)
        + (y @ linear).unsqueeze(1) / factor
        + constant / (factor * factor)
    )
    scale = scaled_root(scaled_variance.clamp_min(0.0), factor, eps)
    weights = [W_c * gain, (b_c * gain).unsqueeze(0), bias.unsqueeze(0)]
    if restore_scale:
        return stacked_affine([x, torch.ones_like(scale), scale], weights), scale
    inverse = 1.0 / scale
    return stacked_affine([x * inverse, inverse, torch.ones_like(scale)], weights), None


def range_adapter_shift(
    base_codes: Float[Tensor, "rows d_sae"],
    scale: Float[Tensor, "rows 1"] | None,
    ranges: Int[Tensor, " rows"],
    down: Float[Tensor, "n_ranges d_sae rank"],
    down_bias: Float[Tensor, "n_ranges rank"],
    up: Float[Tensor, "n_ranges rank d_sae"],
    up_bias: Float[Tensor, "n_ranges d_sae"],
    ln_gain: Float[Tensor, "n_ranges d_sae"] | None,
    ln_bias: Float[Tensor, "n_ranges d_sae"] | None,
    eps: float,
    alpha: float,
    hidden_dropout: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Float[Tensor, "rows factors"], Float[Tensor, "factors d_sae"]]:
    """P3 for every row through its own range's adapter, as factors ``(Z, U)`` with
    ``(Z @ U)[b] = s_b alpha LN_r(B_r z_b + c_r)``, ``z_b = Dropout(ReLU(A_r (h_b / s_b) + a_r))``,
    ``r = ranges[b]`` (``s = 1`` when ``scale`` is None; no LN when ``ln_gain`` is None).

    ``Z`` is block-sparse (row b is zero outside range r's block of columns) and ``U`` stacks the
    ranges' blocks, so the caller adds every row's shift to its pre-activation in one ``addmm``:
    the ``[rows, d_sae]`` tensors are each read or written once, rows stay in place. The
    LayerNorm's moments over d_sae come from each range's rank x rank Gram matrix."""
    n_ranges, d_sae, rank = down.shape
    rows = torch.arange(base_codes.shape[0], device=base_codes.device)
    # Every range's down-projection in one product (rank x n_ranges thin), then each row's own.
    hidden = (base_codes @ down.permute(1, 0, 2).reshape(d_sae, n_ranges * rank)).view(
        -1, n_ranges, rank
    )
    hidden = hidden[rows, ranges]
    if scale is not None:
        hidden = hidden / scale
    hidden = torch.relu(hidden + down_bias[ranges])
    if hidden_dropout is not None:
        hidden = hidden_dropout(hidden)
    row_factor = alpha if scale is None else alpha * scale
    ones = torch.ones_like(hidden[:, :1])
    if ln_gain is None:
        factors = torch.cat([hidden, ones], dim=1) * row_factor
        blocks = torch.cat([up, up_bias.unsqueeze(1)], dim=1)
    else:
        assert ln_bias is not None
        up_c, up_bias_c = _centred_over_features(up, up_bias)
        gram, linear, constant = _second_moment_form(up_c, up_bias_c)  # one form per range
        # As in preact_ln_codes_preactivation: the form of hidden / f, f an exact power of two.
        factor = power_of_two_scale(hidden)
        scaled = hidden / factor
        scaled_variance = (
            torch.einsum("bk,bkl,bl->b", scaled, gram[ranges], scaled).unsqueeze(1)
            + (scaled * linear[ranges]).sum(dim=1, keepdim=True) / factor
            + constant[ranges].unsqueeze(1) / (factor * factor)
        )
        inverse_std = 1.0 / scaled_root(scaled_variance.clamp_min(0.0), factor, eps)
        factors = torch.cat([hidden * inverse_std, inverse_std, ones], dim=1) * row_factor
        blocks = torch.cat(
            [up_c * ln_gain.unsqueeze(1), (up_bias_c * ln_gain).unsqueeze(1), ln_bias.unsqueeze(1)],
            dim=1,
        )
    width = factors.shape[1]
    placed = factors.unsqueeze(1) * F.one_hot(ranges, n_ranges).to(factors.dtype).unsqueeze(2)
    return placed.reshape(-1, n_ranges * width), blocks.reshape(n_ranges * width, d_sae)


class _CodesAndPenalties(torch.autograd.Function):
    """Forward: ``h_r = ReLU(adapted_pre)``, ``sum h_b`` and ``sum |h_r - h_b|``. Backward in four
    passes over ``[rows, d_sae]`` (autograd's own graph of relu, subtraction, abs and two sums
    takes about twice as many)."""

    @staticmethod
    def forward(ctx: Any, base_codes: Tensor, adapted_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        codes = torch.relu(adapted_pre)
        sign = codes - base_codes
        deviation = torch.linalg.vector_norm(sign, ord=1)
        sign.sign_()
        ctx.save_for_backward(sign, adapted_pre > 0)
        return codes, base_codes.sum(), deviation

    @staticmethod
    def backward(
        ctx: Any, grad_codes: Tensor, grad_l1: Tensor, grad_deviation: Tensor
    ) -> tuple[Tensor, Tensor]:
        sign, active = ctx.saved_tensors
        c_l1, c_dev = float(grad_l1), float(grad_deviation)
        grad_adapted = torch.add(grad_codes, sign, alpha=c_dev).mul_(active)
        grad_base = torch.mul(sign, -c_dev).add_(c_l1)
        return grad_base, grad_adapted


def codes_and_penalties(
    base_codes: Float[Tensor, "rows d_sae"], adapted_pre: Float[Tensor, "rows d_sae"]
) -> tuple[Float[Tensor, "rows d_sae"], Float[Tensor, ""], Float[Tensor, ""]]:
    """P5's ingredients: the adapted codes ``h_r = ReLU(adapted_pre)``, ``sum ||h_b||_1`` and
    ``sum ||h_r - h_b||_1`` over the rows (codes are non-negative, so ``||h_b||_1 = sum h_b``)."""
    return _CodesAndPenalties.apply(base_codes, adapted_pre)

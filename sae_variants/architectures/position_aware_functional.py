"""The maths of PositionAwareSAE (seed 004), as pure functions (spec §6, P1-P6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sae_variants.functional import token_moments, token_scale


def position_ranges(positions: Int[Tensor, "*rows"], context_size: int, n_ranges: int) -> Int[Tensor, "*rows"]:
    """P2: ``r(p) = min(floor(p R / L), R - 1)``: equal ranges of the training context, positions
    beyond it clamped to the last range."""
    return torch.clamp(torch.div(positions * n_ranges, context_size, rounding_mode="floor"), max=n_ranges - 1)


def preactivation_layer_norm(
    pre: Float[Tensor, "*batch d_sae"], gain: Float[Tensor, " d_sae"], bias: Float[Tensor, " d_sae"], eps: float
) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch 1"]]:
    """P1 (paper): ``gain (pre - mean_i pre) / s + bias`` over the features of each token, and
    the scale ``s`` it removed (restored on the codes)."""
    mean, variance = token_moments(pre)
    scale = token_scale(variance, eps)
    return gain * (pre - mean) / scale + bias, scale


def curriculum_alpha(step: int, total_steps: int, warm_up_fraction: float, end_fraction: float) -> float:
    """P6: ``clip((t - t_w) / (t_e - t_w), 0, 1)`` with ``t_w = min(1000, f_w T)`` and
    ``t_e = min(10000, f_e T)``: the paper's 1k/10k steps on long runs, fractions of the run otherwise."""
    start = min(1000.0, warm_up_fraction * total_steps)
    end = max(min(10000.0, end_fraction * total_steps), start + 1.0)
    return float(min(1.0, max(0.0, (step - start) / (end - start))))


def range_adapter(
    u: Float[Tensor, "rows d_sae"],
    down: Float[Tensor, "d_sae rank"],
    down_bias: Float[Tensor, " rank"],
    up: Float[Tensor, "rank d_sae"],
    up_bias: Float[Tensor, " d_sae"],
    ln_gain: Float[Tensor, " d_sae"] | None,
    ln_bias: Float[Tensor, " d_sae"] | None,
    eps: float,
) -> Float[Tensor, "rows d_sae"]:
    """P3 without dropout: ``LN(B ReLU(A u))`` (LN on the output as in eq. 3; None: no LN)."""
    out = torch.relu(u @ down + down_bias) @ up + up_bias
    if ln_gain is None:
        return out
    return F.layer_norm(out, (out.shape[-1],), ln_gain, ln_bias, eps)

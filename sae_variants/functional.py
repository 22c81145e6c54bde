"""Pure, shape-annotated tensor operations shared by the variants (no modules, no state)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def unit_norm_rows(
    weight: Float[Tensor, "rows cols"], eps: float = 1e-8
) -> Float[Tensor, "rows cols"]:
    """Each row scaled to unit L2 norm (decoder rows are dictionary directions)."""
    return weight / weight.norm(dim=-1, keepdim=True).clamp_min(eps)


def remove_parallel_component(
    grad: Float[Tensor, "rows cols"], weight: Float[Tensor, "rows cols"]
) -> Float[Tensor, "rows cols"]:
    """``grad`` minus its component along each (unit-normalized) row of ``weight``.

    Projecting decoder gradients onto the tangent space of the unit sphere keeps a step from
    fighting the renormalization that follows it.
    """
    direction = unit_norm_rows(weight)
    return grad - (grad * direction).sum(dim=-1, keepdim=True) * direction


def fraction_of_variance_unexplained(
    x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"]
) -> Float[Tensor, ""]:
    """``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over the batch."""
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
    return residual / total

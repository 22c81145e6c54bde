"""Reconstruction by position range: fraction of variance unexplained in each quarter of the context.

Seed 004's claim is that position-range adapters reconstruct position-specific structure better.
On held-out contexts (special tokens left out), for R equal ranges of the context:

    FVU_r = sum_{t in r} ||x_t - x^_t||^2 / sum_{t in r} ||x_t - mean_r(x)||^2

with ``x^ = decode(encode(x))`` on whole ``[context, pos, d_in]`` inputs, from the held-out pass
``heldout_codes.encode_contexts`` shares with contextual consistency.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def fvu_by_position_range(
    activations: Float[Tensor, "contexts pos d_in"],
    residual: Float[Tensor, "contexts pos d_in"],
    usable: Bool[Tensor, "contexts pos"],
    n_ranges: int = 4,
) -> list[float]:
    """FVU in each of ``n_ranges`` equal ranges of the context positions, over usable tokens."""
    length = activations.shape[1]
    ranges = torch.clamp(torch.arange(length) * n_ranges // length, max=n_ranges - 1)
    fvus = []
    for r in range(n_ranges):
        keep = usable & (ranges == r).unsqueeze(0)
        xr, er = activations[keep], residual[keep]
        fvus.append(float(er.pow(2).sum() / (xr - xr.mean(dim=0)).pow(2).sum()))
    return fvus

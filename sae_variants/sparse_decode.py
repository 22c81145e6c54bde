"""The decoder product ``f W_dec`` that pays for the features that fire.

At the L0 of a trained SAE (tens of d_sae's thousands) almost every code is zero, yet the dense
product and its two gradients (``grad W_dec = f^T g``, ``grad f = g W_dec^T``) each cost
``2 B d_sae d_in`` FLOPs. Over the active entries only, as one ``embedding_bag`` (a gather of the
active decoder rows weighted by their codes, summed per row), the forward and both gradients
cost ``2 nnz d_in``: the gradient reaches only the active entries of ``f`` and the decoder rows
that fired. That is the exact gradient of every variant's loss wherever the codes come from an
activation whose derivative is zero where its output is zero (ReLU, JumpReLU-style gates, the
variants here), since autograd would multiply the dense ``grad f`` there by zero anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

SPARSE_DECODE_CROSSOVER = 0.0
"""The code density below which :func:`sparse_decode` beats the dense product, measured on this
project's CI machine (2 CPU cores) by ``sae-variants benchmark --sparse-decode``."""


def sparse_decode(
    codes: Float[Tensor, "rows d_sae"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "rows d_in"]:
    """``codes @ W_dec`` over the non-zero codes only (gradients flow to those codes and to the
    decoder rows that fired). Costs one pass over ``codes`` to find them, and a host sync."""
    rows, cols = codes.nonzero(as_tuple=True)  # row-major: each row's entries are contiguous
    counts = torch.bincount(rows, minlength=codes.shape[0])
    offsets = torch.cumsum(counts, dim=0) - counts
    return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=codes[rows, cols])


def decode_product(
    codes: Float[Tensor, "*batch d_sae"], W_dec: Float[Tensor, "d_sae d_in"], max_density: float
) -> Float[Tensor, "*batch d_in"]:
    """``codes @ W_dec``: by :func:`sparse_decode` when at most ``max_density`` of the codes are
    non-zero (the measured crossover below which it is faster), densely otherwise (early in
    training, codes are dense)."""
    if max_density <= 0 or codes.numel() == 0:
        return codes @ W_dec
    flat = codes.reshape(-1, codes.shape[-1])
    density = float(torch.count_nonzero(flat)) / flat.numel()
    if density > max_density:
        return codes @ W_dec
    return sparse_decode(flat, W_dec).reshape(*codes.shape[:-1], W_dec.shape[1])

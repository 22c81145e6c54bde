"""The maths of QuCL-SAE (seed 000) as pure functions: projection, quantizer, pyramid, curriculum
signals and the code-uniformity InfoNCE. Spec: ``docs/spec.md`` §2, items B0-B8.

Nothing here holds state; ``qucl.py`` owns the buffers and decides when each function runs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

PYRAMID_SCALES: tuple[float, ...] = (1.0, 0.5, 0.25)
"""Rank fractions of the multi-scale pyramid (B2): 100%, 50%, 25%."""


@dataclass(frozen=True)
class RankSchedule:
    """Rank bounds and steps in units of ``d_ref = min(d_in, d_sae)`` (docs/spec.md §2 d4)."""

    minimum: int
    initial: int
    maximum: int
    grow: int
    shrink: int


def rank_schedule(
    d_in: int,
    d_sae: int,
    min_fraction: float,
    initial_fraction: float,
    max_fraction: float,
    grow_fraction: float,
    shrink_fraction: float,
) -> RankSchedule:
    """``r_min = floor(0.1 d_ref)``, ``r_0 = floor(0.25 d_ref)``, ``r_max = floor(0.9 d_ref)``,
    steps ``ceil(0.05 d_ref)`` up and ``ceil(0.02 d_ref)`` down, each at least 1."""
    d_ref = min(d_in, d_sae)
    minimum = max(1, math.floor(min_fraction * d_ref))
    maximum = max(minimum, math.floor(max_fraction * d_ref))
    initial = min(max(minimum, math.floor(initial_fraction * d_ref)), maximum)
    return RankSchedule(
        minimum=minimum,
        initial=initial,
        maximum=maximum,
        grow=max(1, math.ceil(grow_fraction * d_ref)),
        shrink=max(1, math.ceil(shrink_fraction * d_ref)),
    )


def jl_projection(
    d_in: int, width: int, seed: int, dtype: torch.dtype
) -> Float[Tensor, "d_in width"]:
    """The frozen Johnson-Lindenstrauss matrix ``P_jk ~ N(0, 1/d_in)`` (B0), seeded on the CPU so
    the same seed gives the same projection on every device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(d_in, width, generator=generator) / math.sqrt(d_in)).to(dtype)


def fake_quantize(values: Float[Tensor, "*batch r"], bits: int) -> Float[Tensor, "*batch r"]:
    """Per-row asymmetric min-max quantization to ``2**bits`` levels, straight-through (B1).

    Statistics are per row (token), never per batch, so a token's code does not depend on the
    other rows it is batched with (docs/spec.md §2 d2). The forward value is quantized; the gradient is
    the identity (``q = u + sg(Q(u) - u)``).
    """
    levels = 2**bits - 1
    low = values.amin(dim=-1, keepdim=True)
    step = ((values.amax(dim=-1, keepdim=True) - low) / levels).clamp_min(1e-8)
    quantized = low + step * torch.clamp(torch.round((values - low) / step), 0, levels)
    return values + (quantized - values).detach()


def pyramid_blocks(d_sae: int) -> tuple[tuple[int, int], ...]:
    """Contiguous dictionary blocks ``G_1, G_1/2, G_1/4`` of sizes ceil(d/3), ceil(d/3), rest."""
    third = math.ceil(d_sae / 3)
    edges = [0, min(third, d_sae), min(2 * third, d_sae), d_sae]
    return tuple((edges[i], edges[i + 1]) for i in range(3))


def scale_ranks(rank: int) -> tuple[int, ...]:
    """``r_sigma = max(1, floor(sigma r))`` for each pyramid scale."""
    return tuple(max(1, math.floor(scale * rank)) for scale in PYRAMID_SCALES)


def pyramid_pre_activations(
    projected: Float[Tensor, "*batch rank"],
    W_r: Float[Tensor, "r_max d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    multiscale: bool,
) -> Float[Tensor, "*batch d_sae"]:
    """Encoder pre-activations from the quantized projection (B2).

    With ``multiscale`` each dictionary block reads only the first ``r_sigma`` projected
    coordinates (a rank prefix), so codes stay one-to-one with decoder rows and the three scales
    together cost less than one full-rank encoder. Rows of ``W_r`` at or beyond the current rank
    take no part and get no gradient.
    """
    rank = projected.shape[-1]
    if not multiscale:
        return projected @ W_r[:rank] + b_enc
    parts = [
        projected[..., :r_scale] @ W_r[:r_scale, start:stop] + b_enc[start:stop]
        for (start, stop), r_scale in zip(
            pyramid_blocks(W_r.shape[1]), scale_ranks(rank), strict=True
        )
    ]
    return torch.cat(parts, dim=-1)


def effective_encoder(
    projection: Float[Tensor, "d_in r_max"],
    W_r: Float[Tensor, "r_max d_sae"],
    rank: int,
    multiscale: bool,
) -> Float[Tensor, "d_in d_sae"]:
    """The linear encoder the pyramid applies when quantization is ignored: block ``G_sigma`` is
    ``P[:, :r_sigma] W_r[:r_sigma, G_sigma]``. For weight analyses and the ``standard`` export."""
    if not multiscale:
        return projection[:, :rank] @ W_r[:rank]
    parts = [
        projection[:, :r_scale] @ W_r[:r_scale, start:stop]
        for (start, stop), r_scale in zip(
            pyramid_blocks(W_r.shape[1]), scale_ranks(rank), strict=True
        )
    ]
    return torch.cat(parts, dim=-1)


def batch_diversity(x: Float[Tensor, "batch d_in"]) -> Float[Tensor, ""]:
    """``D(X) = 1 - mean off-diagonal cosine`` of the rows, in O(B d_in) through
    ``||sum_b x_b/||x_b||||^2 = B + sum_{a != b} cos(a, b)`` (B4, eq. 4)."""
    n_rows = x.shape[0]
    if n_rows < 2:
        raise ValueError(f"batch diversity needs at least 2 rows, got {n_rows}")
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    off_diagonal = unit.sum(dim=0).pow(2).sum() - n_rows
    return 1.0 - off_diagonal / (n_rows * (n_rows - 1))


def diversity_sums(x: Float[Tensor, "batch d_in"]) -> Float[Tensor, " d_in_plus_1"]:
    """``[rows, sum_b x_b/||x_b|| (d_in)]`` in float64: summed over several batches (e.g.
    data-parallel replicas'), :func:`diversity_from_sums` gives their union's
    :func:`batch_diversity`."""
    x = x.double()
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return torch.cat([x.new_tensor([float(x.shape[0])]), unit.sum(dim=0)])


def diversity_from_sums(sums: Float[Tensor, " d_in_plus_1"]) -> Float[Tensor, ""]:
    """:func:`batch_diversity` of the rows :func:`diversity_sums` summed."""
    n_rows = sums[0]
    if float(n_rows) < 2:
        raise ValueError(f"batch diversity needs at least 2 rows, got {int(n_rows)}")
    off_diagonal = sums[1:].pow(2).sum() - n_rows
    return 1.0 - off_diagonal / (n_rows * (n_rows - 1))


def feature_importance_weights(x: Float[Tensor, "batch d_in"]) -> Float[Tensor, " d_in"]:
    """Eq. 5's input-dimension weights ``softplus(v_j) / mean_k softplus(v_k)`` with
    ``v_j = Var_b(x_bj / ||x_:,j||)``, detached (B6).

    Implemented literally: ``v_j`` is about ``1/B``, so the weights are 1 to within ~1e-3 and the
    term reproduces the paper's own "no effect" ablation (docs/spec.md §2 d11).
    """
    x = x.detach()
    column_norms = x.norm(dim=0).clamp_min(1e-8)
    variance = (x / column_norms).var(dim=0, unbiased=False)
    weights = torch.nn.functional.softplus(variance)
    return weights / weights.mean()


def importance_sums(x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "3 d_in"]:
    """The sums eq. 5's weights are made of, in float64: ``[sum_b x_bj, sum_b x_bj^2, rows]``
    (the row count broadcast over d_in). Summed over several batches (e.g. data-parallel
    replicas'), :func:`importance_weights_from_sums` gives the weights of their union."""
    x = x.detach().double()
    return torch.stack([x.sum(dim=0), x.pow(2).sum(dim=0), torch.full_like(x[0], x.shape[0])])


def importance_weights_from_sums(sums: Float[Tensor, "3 d_in"]) -> Float[Tensor, " d_in"]:
    """:func:`feature_importance_weights` of the rows :func:`importance_sums` summed, in
    float64 (cast them to the activations' dtype):
    ``v_j = E_b[(x_bj / n_j)^2] - E_b[x_bj / n_j]^2`` with ``n_j^2 = sum_b x_bj^2``."""
    column_sums, squares, rows = sums[0], sums[1], sums[2]
    norms = squares.sqrt().clamp_min(1e-8)
    variance = squares / norms.pow(2) / rows - (column_sums / norms / rows).pow(2)
    weights = torch.nn.functional.softplus(variance)
    return weights / weights.mean()


def next_rank(
    rank: int, mean_fvu: float, threshold: float, shrink_ratio: float, schedule: RankSchedule
) -> int:
    """One curriculum decision (B5): grow when the windowed FVU is above the threshold, shrink
    when it is below ``shrink_ratio`` times it, otherwise keep the rank."""
    if mean_fvu > threshold and rank < schedule.maximum:
        return min(rank + schedule.grow, schedule.maximum)
    if mean_fvu < shrink_ratio * threshold and rank > schedule.minimum:
        return max(rank - schedule.shrink, schedule.minimum)
    return rank


class _SparseAnchorGram(torch.autograd.Function):
    """``(codes[anchors] @ codes.T, ||codes||^2)`` computed from the nonzeros only.

    For trained codes (L0 ~ 30 of 4096) this replaces three dense ``A x B x d_sae`` matmuls by
    sparse ones. The returned gradient is exact on the support of ``codes`` and zero elsewhere,
    which equals the true gradient once it passes back through the ReLU that produced the codes
    (a zero code has a non-positive pre-activation, where ReLU's derivative is 0). Only call it on
    ReLU outputs.
    """

    @staticmethod
    def forward(ctx: Any, codes: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        with warnings.catch_warnings():
            # torch flags its CSR support "beta"; the operations used here are long-standing.
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            support = codes.to_sparse_csr()
            anchor_codes = codes[anchors]
            gram = (support @ anchor_codes.T).T
        squared_norms = torch.linalg.vector_norm(codes, dim=-1).pow(2)
        ctx.save_for_backward(codes, anchors, anchor_codes)
        ctx.support = support
        return gram, squared_norms

    @staticmethod
    def backward(ctx: Any, grad_gram: Tensor, grad_squared_norms: Tensor) -> tuple[Tensor, None]:
        codes, anchors, anchor_codes = ctx.saved_tensors
        support: Tensor = ctx.support
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            # Key side: d gram[a, k] / d codes[k, i] = anchor_codes[a, i], sampled on the support.
            key_side = torch.sparse.sampled_addmm(
                support, grad_gram.T.contiguous(), anchor_codes, beta=0.0
            )
            row_of_value = torch.repeat_interleave(
                torch.arange(codes.shape[0], device=codes.device), support.crow_indices().diff()
            )
            values = key_side.values() + 2.0 * support.values() * grad_squared_norms[row_of_value]
            grad = torch.sparse_csr_tensor(
                support.crow_indices(),
                support.col_indices(),
                values,
                codes.shape,
                check_invariants=False,  # the indices come from a valid CSR tensor
            ).to_dense()
            # Anchor side: d gram[a, k] / d codes[anchors[a], i] = codes[k, i], on the anchors' support.
            anchor_side = torch.sparse.sampled_addmm(
                anchor_codes.to_sparse_csr(), grad_gram, codes, beta=0.0
            ).to_dense()
        grad.index_add_(0, anchors, anchor_side)
        return grad, None


SPARSE_GRAM_MAX_DENSITY = 0.05
"""Above this fraction of nonzero codes the dense matmuls are faster than the sparse ones."""


def code_uniformity_infonce(
    codes: Float[Tensor, "batch d_sae"],
    anchors: Int[Tensor, " n_anchors"],
    temperature: float,
) -> Float[Tensor, ""]:
    """Eq. 7 in its self-positive form (B8, docs/spec.md §2 d13):
    ``mean_a [-s_aa / t + logsumexp_k s_ak / t]`` over anchor rows ``a``, with ``s`` the cosine of
    the codes and ``k`` ranging over the whole batch. With a single view ``s_aa = 1``, so the term
    only pushes the codes of different tokens apart (a uniformity loss).

    ``codes`` must be non-negative ReLU outputs: sparse batches take an exact sparse route (see
    :class:`_SparseAnchorGram`), and no ``B x B`` matrix is formed (``n_anchors x B`` at most).
    """
    density = int(torch.count_nonzero(codes)) / codes.numel() if codes.requires_grad else 1.0
    if codes.requires_grad and density <= SPARSE_GRAM_MAX_DENSITY:
        gram, squared_norms = _SparseAnchorGram.apply(codes, anchors)
    else:
        gram = codes[anchors] @ codes.T
        squared_norms = codes.pow(2).sum(dim=-1)
    # max(||f||, 1e-8); clamping before the root keeps the gradient finite for all-zero codes.
    norms = squared_norms.clamp_min(1e-16).sqrt()
    logits = gram / (norms[anchors, None] * norms[None, :]) / temperature
    positives = logits[torch.arange(anchors.shape[0], device=codes.device), anchors]
    return (torch.logsumexp(logits, dim=-1) - positives).mean()

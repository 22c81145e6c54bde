"""The cubic co-activation orthogonality penalty of seed 002 (eq. 2), in a dense and a block form.

    Omega = sum_{i != j} w_ij * c_ij^p * max(0, g_ij - eps_ij)

with ``c_ij = |f~_i . f~_j|`` the uncentered cosine of feature i's and j's activation columns over
the batch (``f~_i = F[:, i] / (||F[:, i]|| + 1e-6)``), ``g_ij = |w_i . w_j|`` the overlap of the
unit decoder rows, ``p = 3``, and per-pair weights ``w_ij`` / margins ``eps_ij`` that are 1 / 0
unless an activation-aware mode is on (``docs/spec.md`` §4, O6).

``c_ij`` is zero unless i and j fire together on some row of the batch, so the sum only has
co-active pairs. Two forms, which agree in expected value and gradient:

- :func:`cubic_ortho_penalty_dense` forms the ``d_sae x d_sae`` matrices: the reference, fine at
  small width, ``O(batch * d_sae^2)``.
- :func:`cubic_ortho_penalty_blocks` splits the features that fired into random blocks of
  ``block_size`` each step and sums the within-block pairs, scaled by the inverse probability that
  a pair shares a block: an unbiased estimate at ``O(batch * n_active * block_size)`` dense cost,
  exact when one block holds every active feature. Every active feature gets a penalty gradient
  every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_variants.functional import unit_norm_rows
from sae_variants.replicas import Replicas
from sae_variants.sparse_decode import sampled_gram

PairTerms = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(i, j) -> (w_ij, eps_ij)`` for index tensors of pairs; constants (no gradient)."""

COLUMN_EPS = 1e-6


def normalize_columns(acts: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
    """Each feature's activation column over the batch scaled to (almost) unit norm."""
    return acts / (acts.norm(dim=0, keepdim=True) + COLUMN_EPS)


def column_norms(squares: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """``sqrt(squares) + COLUMN_EPS``, with a zero gradient (not an infinite one) at 0."""
    return squares.clamp_min(torch.finfo(squares.dtype).tiny).sqrt() + COLUMN_EPS


def cubic_ortho_penalty_dense(
    acts: Float[Tensor, "batch d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    exponent: float = 3.0,
    pair_weight: Float[Tensor, "d_sae d_sae"] | None = None,
    pair_margin: Float[Tensor, "d_sae d_sae"] | None = None,
    replicas: Replicas | None = None,
) -> Float[Tensor, ""]:
    """Omega from dense ``d_sae x d_sae`` matrices (reference implementation). With
    ``replicas`` (data-parallel training), the co-activations are those of the replicas'
    batches together: their column products are summed over the replicas, with gradient."""
    unit = unit_norm_rows(W_dec)
    if replicas is None or replicas.world_size == 1:
        normalized = normalize_columns(acts)
        coactivation = (normalized.T @ normalized).abs()
    else:
        products = replicas.differentiable_sum(acts.T @ acts)
        norms = column_norms(products.diagonal())
        coactivation = (products / norms[:, None] / norms[None, :]).abs()
    overlap = (unit @ unit.T).abs()
    if pair_margin is not None:
        overlap = torch.relu(overlap - pair_margin)
    terms = coactivation.pow(exponent) * overlap
    if pair_weight is not None:
        terms = terms * pair_weight
    return terms.sum() - terms.diagonal().sum()


def _pairs_within_groups(group: Int[Tensor, " n"]) -> tuple[Int[Tensor, " m"], Int[Tensor, " m"]]:
    """Every ordered pair (a, b), self-pairs included, of entries that share a group id."""
    order = torch.argsort(group, stable=True)
    _, counts = torch.unique_consecutive(group[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    own_count = torch.repeat_interleave(counts, counts)
    own_start = torch.repeat_interleave(starts, counts)
    first = torch.repeat_interleave(torch.arange(group.shape[0], device=group.device), own_count)
    offsets = torch.arange(first.shape[0], device=group.device) - torch.repeat_interleave(
        torch.cumsum(own_count, 0) - own_count, own_count
    )
    return order[first], order[own_start[first] + offsets]


def _block_products_from_pairs(
    acts: Tensor, rows: Tensor, feats: Tensor, slot_of: Tensor, n_blocks: int, size: int
) -> Tensor:
    """``sum_b f_bi f_bj`` for every within-block pair, accumulated from pairs of nonzeros
    sharing a row and block."""
    values = acts[rows, feats]
    entry_slot = slot_of[feats]
    entry_block, entry_pos = entry_slot // size, entry_slot % size
    a, b = _pairs_within_groups(rows * n_blocks + entry_block)
    cell = (entry_block[a] * size + entry_pos[a]) * size + entry_pos[b]
    flat = torch.zeros(n_blocks * size * size, dtype=acts.dtype, device=acts.device)
    return flat.index_add(0, cell, values[a] * values[b]).view(n_blocks, size, size)


def _block_products_dense(acts: Tensor, blocks: Tensor) -> Tensor:
    """The same products from the gathered dense columns (bounded cost, any L0)."""
    padded = torch.cat([acts, acts.new_zeros(acts.shape[0], 1)], dim=1)
    n_blocks, size = blocks.shape
    columns = padded[:, blocks.reshape(-1)].view(acts.shape[0], n_blocks, size)
    return torch.einsum("bki,bkj->kij", columns, columns)


def cubic_ortho_penalty_blocks(
    acts: Float[Tensor, "batch d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    exponent: float = 3.0,
    block_size: int = 128,
    pair_terms: PairTerms | None = None,
    generator: torch.Generator | None = None,
    replicas: Replicas | None = None,
) -> Float[Tensor, ""]:
    """Unbiased Omega from random blocks of the active features (exact for a single block).

    With ``replicas`` (data-parallel training) the blocks hold the features active on any
    replica, laid out as rank 0 drew them, and the co-activations are those of the replicas'
    batches together (products and column norms summed over them, with gradient).

    ``c`` is accumulated from the pairs of nonzeros that share a row and a block, about
    ``batch * L0^2 / n_blocks`` of them, so at training sparsity the cost does not grow with
    ``batch * d_sae``. While codes are still dense (early in training) that count would explode,
    so above ``batch * n_active / 2`` pairs the block columns are gathered and multiplied densely
    instead, which costs ``batch * n_active`` memory and ``batch * n_active * block_size`` flops
    whatever the L0. The decoder overlaps are read at the co-firing pairs only while few pairs
    co-fire (:func:`_coactive_cell_terms`), else from whole-block products (:func:`_block_terms`).
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    d_sae = W_dec.shape[0]
    replicas = None if replicas is None or replicas.world_size == 1 else replicas
    rows, feats = acts.detach().nonzero(as_tuple=True)
    if replicas is None:
        active = torch.unique(feats)
    else:
        fired = torch.zeros(d_sae, dtype=torch.int32, device=acts.device)
        fired[feats] = 1
        active = replicas.sum_(fired).nonzero().squeeze(1)
    n_active = active.shape[0]
    if n_active < 2:
        return acts.sum() * 0.0
    n_blocks = -(-n_active // block_size)
    size = min(block_size, n_active)
    n_slots = n_blocks * size
    slot_of = torch.full((d_sae,), -1, dtype=torch.long, device=acts.device)
    slot_of[active] = torch.randperm(n_slots, generator=generator, device=acts.device)[:n_active]
    if replicas is not None:
        replicas.broadcast_(slot_of)
    # Padding slots hold an extra all-zero feature (index d_sae), which adds nothing.
    feature_in_slot = torch.full((n_slots,), d_sae, dtype=torch.long, device=acts.device)
    feature_in_slot[slot_of[active]] = active
    blocks = feature_in_slot.view(n_blocks, size)

    group_sizes = torch.bincount(rows * n_blocks + slot_of[feats] // size)
    n_pairs = int((group_sizes * group_sizes).sum())
    # Each pair costs a few index entries; past about half the gathered matrix's size the dense
    # route is both faster and smaller.
    if n_pairs <= acts.shape[0] * n_slots // 2:
        products = _block_products_from_pairs(acts, rows, feats, slot_of, n_blocks, size)
    else:
        products = _block_products_dense(acts, blocks)
    squares = torch.zeros(d_sae + 1, dtype=acts.dtype, device=acts.device)
    squares = squares.index_add(0, feats, acts[rows, feats].pow(2))
    if replicas is not None:
        products = replicas.differentiable_sum(products)
        squares = replicas.differentiable_sum(squares)
    norms = column_norms(squares)[blocks]  # the padding feature d_sae has no squares
    coactivation = products / norms[:, :, None] / norms[:, None, :]
    cells = coactivation.detach() != 0
    cells.diagonal(dim1=1, dim2=2).fill_(False)
    n_cells = int(cells.sum())
    if n_cells <= cells.numel() // COACTIVE_CELL_SHARE:
        within = _coactive_cell_terms(coactivation, cells, blocks, W_dec, exponent, pair_terms)
    else:
        within = _block_terms(coactivation, blocks, W_dec, exponent, pair_terms)
    # A given pair lands in the same block with probability (size - 1) / (n_slots - 1).
    return within * ((n_slots - 1) / (size - 1))


COACTIVE_CELL_SHARE = 4
"""Past this fraction (1/4) of a block's pairs co-firing, the overlaps of whole blocks (batched
products) are taken instead of sampling the co-firing pairs': a rough break-even of the sampled
product's cost per pair against the batched products, not a tuned crossover."""


def _pair_term(
    coactivation: Tensor,
    overlap: Tensor,
    exponent: float,
    weight: Tensor | None,
    margin: Tensor | None,
) -> Tensor:
    if margin is not None:
        overlap = torch.relu(overlap - margin)
    terms = coactivation.abs().pow(exponent) * overlap
    return terms if weight is None else terms * weight


def _block_terms(
    coactivation: Float[Tensor, "blocks size size"],
    blocks: Int[Tensor, "blocks size"],
    W_dec: Float[Tensor, "d_sae d_in"],
    exponent: float,
    pair_terms: PairTerms | None,
) -> Float[Tensor, ""]:
    """The sum of every within-block pair's term, overlaps from whole-block batched products."""
    d_sae, d_in = W_dec.shape
    size = blocks.shape[1]
    unit = torch.cat([unit_norm_rows(W_dec), W_dec.new_zeros(1, d_in)], dim=0)[blocks]
    overlap = torch.bmm(unit, unit.transpose(1, 2)).abs()
    weight = margin = None
    if pair_terms is not None:
        i = blocks[:, :, None].expand(-1, -1, size).clamp_max(d_sae - 1)
        j = blocks[:, None, :].expand(-1, size, -1).clamp_max(d_sae - 1)
        weight, margin = pair_terms(i, j)
    terms = _pair_term(coactivation, overlap, exponent, weight, margin)
    return terms.sum() - terms.diagonal(dim1=1, dim2=2).sum()


def _coactive_cell_terms(
    coactivation: Float[Tensor, "blocks size size"],
    cells: Bool[Tensor, "blocks size size"],
    blocks: Int[Tensor, "blocks size"],
    W_dec: Float[Tensor, "d_sae d_in"],
    exponent: float,
    pair_terms: PairTerms | None,
) -> Float[Tensor, ""]:
    """The same sum over the within-block pairs that co-fire (``cells``, diagonal excluded): the
    others' terms are zero, with zero gradient. Each overlap ``|w_i . w_j| / (|w_i| |w_j|)`` comes
    from the Gram matrix sampled at the pair and at both diagonals, so no ``d_sae x d_in``
    temporary is formed and the cost is ``~6 n_cells d_in`` FLOPs, not the blocks' products."""
    d_sae = W_dec.shape[0]
    block, a, b = cells.nonzero(as_tuple=True)
    i, j = blocks[block, a], blocks[block, b]  # co-firing slots never hold the padding feature
    features = torch.unique(torch.cat([i, j]))
    rows = torch.cat([i, features])
    cols = torch.cat([j, features])
    key = rows * d_sae + cols  # distinct: each pair shares one block, the diagonals are apart
    order = torch.argsort(key)
    products = sampled_gram(W_dec, rows[order], cols[order])[torch.argsort(order)]
    dots, squared_norms = products[: i.shape[0]], products[i.shape[0] :].clamp_min(1e-16)
    norm_i = squared_norms[torch.searchsorted(features, i)]
    norm_j = squared_norms[torch.searchsorted(features, j)]
    overlap = dots.abs() / torch.sqrt(norm_i * norm_j)
    weight, margin = pair_terms(i, j) if pair_terms is not None else (None, None)
    return _pair_term(coactivation[block, a, b], overlap, exponent, weight, margin).sum()

"""The maths of SeqContrastiveSAE (seed 003), as pure functions (docs/spec.md §5, S1 and S4-S5).

Positive pairs are drawn from a batch's own rows: two rows of the same sequence whose positions
are at most ``window`` apart. Negatives are every row of every other sequence; rows of the
anchor's own sequence other than its positive are masked out of the denominator (they are
neither positives nor trustworthy negatives), and so is the anchor itself.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def window_partners(
    positions: Int[Tensor, " rows"],
    sequence_ids: Int[Tensor, " rows"],
    window: int,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " rows"]:
    """For every row, a uniformly chosen other row of its sequence at most ``window`` positions
    away (S4, "window" mode), or -1 where there is none.

    Sorting rows by (sequence, position) makes each row's candidates one contiguous run of the
    order, so the choice costs a sort and two binary searches, not a rows x rows mask. Rows at the
    same position of the same sequence (duplicates) are not partners.
    """
    n = positions.shape[0]
    device = positions.device
    _, sequence_rank = torch.unique(sequence_ids, return_inverse=True)
    # Keys of different sequences are further apart than any window, so runs never cross them.
    stride = int(positions.max()) + 2 * window + 2 if n else 1
    key = sequence_rank * stride + positions
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    low = torch.searchsorted(sorted_key, key - window, right=False)
    high = torch.searchsorted(sorted_key, key + window, right=True)
    same_low = torch.searchsorted(sorted_key, key, right=False)
    same_high = torch.searchsorted(sorted_key, key, right=True)
    # Candidates are [low, high) minus the run of rows sharing this key, [same_low, same_high).
    n_candidates = (high - low) - (same_high - same_low)
    draw = (
        torch.rand(n, generator=generator, device=device)
        if generator is not None
        else torch.rand(n, device=device)
    )
    pick = (draw * n_candidates.clamp_min(1)).long().clamp_max((n_candidates - 1).clamp_min(0))
    slot = low + pick
    slot = torch.where(slot >= same_low, slot + (same_high - same_low), slot)
    partners = order[slot.clamp(0, max(n - 1, 0))]
    return torch.where(n_candidates > 0, partners, torch.full_like(partners, -1))


def sample_anchor_pairs(
    partners: Int[Tensor, " rows"],
    eligible: Bool[Tensor, " rows"],
    n_pairs: int,
    generator: torch.Generator | None = None,
) -> tuple[Int[Tensor, " anchors"], Int[Tensor, " anchors"]]:
    """Up to ``n_pairs`` (row, partner) pairs among eligible rows with a partner, used in both
    directions (the symmetric NT-Xent form), so at most ``2 * n_pairs`` anchors: this bounds the
    contrastive cost at ``2 n_pairs x rows`` similarities whatever the batch size (docs/spec.md §5 g)."""
    candidates = (eligible & (partners >= 0)).nonzero().squeeze(1)
    if candidates.numel() > n_pairs:
        keep = (
            torch.randperm(candidates.numel(), generator=generator, device=candidates.device)[
                :n_pairs
            ]
            if generator is not None
            else torch.randperm(candidates.numel(), device=candidates.device)[:n_pairs]
        )
        candidates = candidates[keep]
    mates = partners[candidates]
    return torch.cat([candidates, mates]), torch.cat([mates, candidates])


def soft_support(codes: Float[Tensor, "rows d_sae"]) -> Float[Tensor, "rows d_sae"]:
    """``1 - exp(-f_i / kappa_i)``, kappa_i the mean non-zero code of feature i in the batch (a
    constant of the step): a differentiable stand-in for the active set, about 0.63 for a feature
    firing at its typical strength whatever that strength is, 0 for an inactive one. Cosines of
    soft supports approach the overlap ``|A n B| / sqrt(|A| |B|)`` of the active sets."""
    detached = codes.detach()
    fires = (detached > 0).sum(dim=0)
    kappa = torch.where(
        fires > 0, detached.sum(dim=0) / fires.clamp_min(1), torch.ones_like(detached[0])
    )
    return -torch.expm1(-codes / kappa)


def masked_info_nce(
    codes: Float[Tensor, "rows d_sae"],
    anchors: Int[Tensor, " anchors"],
    partners: Int[Tensor, " anchors"],
    sequence_ids: Int[Tensor, " rows"],
    temperature: float,
    hard_negatives: int | None = None,
) -> tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """S5: mean over anchors with a non-zero code of ``-s(b, p(b)) + logsumexp_k(s(b, k) + M(b, k))``
    with ``s`` the cosine of codes over ``temperature``; ``M`` is ``-inf`` on the anchor itself
    and on its sequence's other rows, 0 elsewhere. Also returns the top-1 retrieval accuracy of
    the positive among the unmasked candidates (the spec's contrastive diagnostic).

    ``hard_negatives=k`` (docs/spec.md §5 d10) keeps only each anchor's k most similar other-sequence rows
    in the denominator beside its positive, so the gradient goes to the strangers the anchor is
    most confused with rather than spreading over thousands of easy ones.

    Returns zeros when no anchor has a non-zero code (nothing to contrast).
    """
    norms = codes.norm(dim=-1).clamp_min(1e-8)
    active = codes[anchors].detach().gt(0).any(dim=-1)
    anchors, partners = anchors[active], partners[active]
    if anchors.numel() == 0:
        zero = codes.sum() * 0.0
        return zero, zero.detach()
    # Only features some anchor fires can make a dot product non-zero, and a code's zero entries
    # pass no gradient (they are ReLU zeros), so dropping the other columns is exact; it pays
    # when the anchors fire a small part of the dictionary. Cosines are dot products over the
    # outer product of norms, so no normalized copy of the whole batch is made.
    columns = codes[anchors].detach().gt(0).any(dim=0).nonzero().squeeze(1)
    fired = codes[:, columns] if 2 * columns.numel() < codes.shape[1] else codes
    similarity = (fired[anchors] @ fired.T) / (
        norms[anchors].unsqueeze(1) * norms.unsqueeze(0) * temperature
    )
    rows = torch.arange(anchors.numel(), device=codes.device)
    masked = sequence_ids[anchors].unsqueeze(1) == sequence_ids.unsqueeze(0)
    masked[rows, partners] = False  # the positive stays in the denominator
    masked[rows, anchors] = True  # ...and the anchor never pairs with itself
    logits = similarity.masked_fill(masked, float("-inf"))
    positive = logits[rows, partners]
    if hard_negatives is not None:
        negatives = logits.clone()
        negatives[rows, partners] = float("-inf")
        hardest = negatives.topk(min(hard_negatives, negatives.shape[1]), dim=-1).values
        loss = (
            torch.logsumexp(torch.cat([positive.unsqueeze(1), hardest], dim=1), dim=-1) - positive
        ).mean()
        # Retrieved when it beats every stranger, i.e. the hardest one.
        accuracy = (positive > hardest[:, 0]).float().mean()
        return loss, accuracy.detach()
    loss = (torch.logsumexp(logits, dim=-1) - positive).mean()
    accuracy = (logits.argmax(dim=-1) == partners).float().mean()
    return loss, accuracy.detach()

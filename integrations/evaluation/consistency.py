"""Contextual consistency: do nearby tokens of one sequence share active features?

Seed 003's claim is that sequence-aware positives make features consistent within a context. The
measure, on held-out contexts (special tokens such as BOS left out):

    J(a, b)      = |active(a) & active(b)| / |active(a) | active(b)|       (Jaccard of feature sets)
    within       = mean J over every pair of tokens of one context at most ``window`` positions apart
    across       = mean J over random pairs of tokens from different contexts
    consistency  = within / across

``across`` is the baseline overlap any two tokens have (frequent features, shared syntax), so a
consistency of 1 means nearby tokens share no more than strangers do. Pairs where both tokens have
no active feature are left out (J is undefined).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor


@dataclass
class Consistency:
    within: float
    across: float
    window: int
    n_contexts: int

    @property
    def ratio(self) -> float:
        return self.within / self.across if self.across > 0 else float("inf")


def _jaccard_sum(
    a: Bool[Tensor, "*pairs d_sae"], b: Bool[Tensor, "*pairs d_sae"], valid: Bool[Tensor, "*pairs"]
) -> tuple[float, int]:
    inter = (a & b).sum(-1).float()
    union = (a | b).sum(-1).float()
    keep = valid & (union > 0)
    return float((inter[keep] / union[keep]).sum()), int(keep.sum())


def contextual_consistency(
    active: Bool[Tensor, "contexts pos d_sae"],
    usable: Bool[Tensor, "contexts pos"],
    window: int = 8,
    seed: int = 0,
) -> Consistency:
    """The measure of the module docstring for precomputed active sets."""
    n, length, _ = active.shape
    if n < 2:
        raise ValueError(f"contextual consistency needs at least 2 contexts, got {n}")
    total, count = 0.0, 0
    for delta in range(1, min(window, length - 1) + 1):
        s, c = _jaccard_sum(
            active[:, :-delta], active[:, delta:], usable[:, :-delta] & usable[:, delta:]
        )
        total, count = total + s, count + c
    within = total / max(count, 1)
    generator = torch.Generator().manual_seed(seed)
    # Each token against a random token of a different context (as many pairs as tokens).
    other = (
        torch.arange(n).unsqueeze(1) + torch.randint(1, n, (n, length), generator=generator)
    ) % n
    position = torch.randint(0, length, (n, length), generator=generator)
    s, c = _jaccard_sum(active, active[other, position], usable & usable[other, position])
    return Consistency(within=within, across=s / max(c, 1), window=window, n_contexts=n)

"""How much the activations and an SAE's codes carry that persists through a context.

Seed 003's contrastive term can only make nearby tokens share features if the activations hold
something that nearby tokens share and strangers do not. These measures say how much there is,
on held-out contexts (special tokens left out):

    between-context share  the fraction of the activations' variance (about their global mean)
                           explained by the mean of the token's own context (leave-one-out, so a
                           token never predicts itself); 0 when contexts are exchangeable.
    neighbour cosine       mean cosine of centred activations of adjacent tokens, next to that of
                           tokens of different contexts (local, not context-wide, similarity).
    overdispersion_i       variance over contexts of feature i's firing rate, over the variance
                           a feature firing independently at its overall rate would give
                           (p (1 - p) / tokens per context): about 1 for a feature that ignores
                           context, large for one that fires in some contexts and not others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor


@dataclass
class ActivationContextSignal:
    between_context_share: float
    adjacent_cosine: float
    cross_context_cosine: float


def _centred(
    activations: Float[Tensor, "contexts pos d_in"], usable: Bool[Tensor, "contexts pos"]
) -> Float[Tensor, "contexts pos d_in"]:
    """Activations minus the mean of the usable ones, with unusable tokens zeroed."""
    mean = activations[usable].double().mean(dim=0)
    return (activations.double() - mean) * usable.unsqueeze(-1)


def activation_context_signal(
    activations: Float[Tensor, "contexts pos d_in"],
    usable: Bool[Tensor, "contexts pos"],
    seed: int = 0,
) -> ActivationContextSignal:
    """The between-context share and neighbour cosines of the module docstring."""
    counts = usable.sum(dim=1, keepdim=True)
    if activations.shape[0] < 2 or bool((counts < 2).any()):
        raise ValueError(
            "the context signal needs at least 2 contexts with at least 2 usable tokens each; "
            f"got {activations.shape[0]} contexts, fewest usable tokens {int(counts.min())}"
        )
    centred = _centred(activations, usable)
    total = centred.pow(2).sum(-1)[usable].mean()
    others_mean = (centred.sum(dim=1, keepdim=True) - centred) / (counts.unsqueeze(-1) - 1)
    unexplained = (centred - others_mean).pow(2).sum(-1)[usable].mean()
    unit = torch.nn.functional.normalize(centred, dim=-1)
    adjacent = (unit[:, :-1] * unit[:, 1:]).sum(-1)[usable[:, :-1] & usable[:, 1:]].mean()
    generator = torch.Generator().manual_seed(seed)
    n = activations.shape[0]
    # Context c against context c + shift (never itself), position for position.
    other = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
    cross = (unit * unit[other]).sum(-1)[usable & usable[other]].mean()
    return ActivationContextSignal(float(1 - unexplained / total), float(adjacent), float(cross))


def feature_context_overdispersion(
    active: Bool[Tensor, "contexts pos d_sae"], usable: Bool[Tensor, "contexts pos"]
) -> Float[Tensor, " d_sae"]:
    """overdispersion_i of the module docstring; NaN for features that never or always fire."""
    counts = usable.sum(dim=1).double()
    fires = (active & usable.unsqueeze(-1)).sum(dim=1).double()
    overall = fires.sum(dim=0) / counts.sum()
    rates = fires / counts.unsqueeze(1)
    # Weighted by context length, so unequal numbers of usable tokens do not inflate it.
    observed = (counts.unsqueeze(1) * (rates - overall).pow(2)).sum(dim=0) / (len(counts) - 1)
    expected = overall * (1 - overall)
    return torch.where(expected > 0, observed / expected, torch.full_like(expected, float("nan")))

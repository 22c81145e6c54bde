"""The context-signal measures: zero-ish for exchangeable contexts, large where contexts differ."""

from __future__ import annotations

import math

import pytest
import torch

from sae_variants.integrations.evaluation.context_signal import (
    activation_context_signal,
    feature_context_overdispersion,
)

CONTEXTS, POSITIONS, D = 64, 32, 16


def test_between_context_share_is_the_variance_of_context_offsets() -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(CONTEXTS, POSITIONS, D, generator=generator)
    usable = torch.ones(CONTEXTS, POSITIONS, dtype=torch.bool)
    usable[:, 0] = False  # a BOS-like token, left out
    exchangeable = activation_context_signal(noise, usable)
    assert abs(exchangeable.between_context_share) < 0.05
    assert abs(exchangeable.adjacent_cosine) < 0.05
    # Each context shifted by its own offset with the noise's variance: half of it is context.
    offsets = torch.randn(CONTEXTS, 1, D, generator=generator)
    shifted = activation_context_signal(noise + offsets, usable)
    assert 0.4 < shifted.between_context_share < 0.6
    assert shifted.adjacent_cosine > 0.4
    assert abs(shifted.cross_context_cosine) < 0.1
    # The unusable token is ignored whatever it holds.
    poisoned = (noise + offsets).clone()
    poisoned[:, 0] = 1e6
    assert math.isclose(
        activation_context_signal(poisoned, usable).between_context_share,
        shifted.between_context_share,
        rel_tol=1e-9,
    )


def test_overdispersion_is_about_one_for_context_blind_features_and_large_for_contextual_ones() -> (
    None
):
    generator = torch.Generator().manual_seed(1)
    usable = torch.ones(CONTEXTS, POSITIONS, dtype=torch.bool)
    blind = torch.rand(CONTEXTS, POSITIONS, 1, generator=generator) < 0.2
    # Fires at rate 0.4 in half of the contexts, never in the others: same overall rate.
    on = (torch.arange(CONTEXTS) % 2 == 0).view(-1, 1, 1)
    contextual = on & (torch.rand(CONTEXTS, POSITIONS, 1, generator=generator) < 0.4)
    never = torch.zeros(CONTEXTS, POSITIONS, 1, dtype=torch.bool)
    ratio = feature_context_overdispersion(torch.cat([blind, contextual, never], dim=-1), usable)
    assert 0.6 < ratio[0] < 1.5
    assert ratio[1] > 5
    assert math.isnan(ratio[2])


def test_too_few_tokens_is_refused() -> None:
    usable = torch.ones(1, POSITIONS, dtype=torch.bool)
    with pytest.raises(ValueError, match="at least 2 contexts"):
        activation_context_signal(torch.zeros(1, POSITIONS, D), usable)

"""Contextual consistency (the Jaccard ratio against hand-computed cases) and per-range FVU, and
both in `evaluate`."""

from __future__ import annotations

import pytest
import torch

from sae_variants.integrations.evaluation.consistency import contextual_consistency
from sae_variants.integrations.evaluation.evaluate import evaluate_sae


def test_within_window_and_cross_sequence_jaccard_by_hand() -> None:
    # Two contexts of 3 tokens over 4 features.
    active = torch.tensor(
        [
            [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]],
            [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]],
        ],
        dtype=torch.bool,
    )
    usable = torch.ones(2, 3, dtype=torch.bool)
    result = contextual_consistency(active, usable, window=1)
    # Window pairs (t, t+1): J = 1/2 and 0 in context 0; 1 and 0 (one side empty) in context 1.
    assert result.within == pytest.approx(1.5 / 4)
    assert result.ratio == pytest.approx(result.within / result.across)
    # A pair where neither token fires anything is left out, and unusable tokens never count.
    usable[1, 2] = False
    assert contextual_consistency(active, usable, window=1).within == pytest.approx(1.5 / 3)


def test_features_that_persist_along_a_context_score_higher() -> None:
    generator = torch.Generator().manual_seed(0)
    per_context = torch.rand(32, 1, 64, generator=generator) < 0.05  # a context's own features
    noise = torch.rand(32, 40, 64, generator=generator) < 0.05
    usable = torch.ones(32, 40, dtype=torch.bool)
    persistent = contextual_consistency(per_context | noise, usable, window=4)
    shuffled = contextual_consistency(noise, usable, window=4)
    assert persistent.ratio > 2.0
    assert shuffled.ratio == pytest.approx(1.0, abs=0.15)


def test_evaluate_reports_consistency(trained_standard_sae, embedded_model) -> None:
    metrics = evaluate_sae(
        trained_standard_sae.output_path, model=embedded_model, n_batches=1
    ).metrics
    assert metrics["contextual_consistency"] == pytest.approx(
        metrics["window_jaccard"] / metrics["cross_sequence_jaccard"]
    )
    assert 0 < metrics["cross_sequence_jaccard"] < metrics["window_jaccard"] < 1
    # Per-range FVU: four ranges, each a fraction of variance (the SAE explains most of it).
    fvus = [metrics[f"fvu_positions_{r}"] for r in range(4)]
    assert all(0 < f < 1 for f in fvus)
    assert "fvu_positions_4" not in metrics

"""Exports to stock SAELens architectures: the maths, the exact cases, and a distillation that
must be exact when the variant's encoder happens to be affine."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE
from sae_lens.saes.standard_sae import StandardSAE

from sae_variants import (
    MultiScaleNormSAE,
    NothingToExportError,
    PositionAwareSAE,
    SeqContrastiveSAE,
    export_to_saelens,
)
from sae_variants.architectures.multiscale_norm import MultiScaleNormSAEConfig
from sae_variants.architectures.position_aware import PositionAwareSAEConfig
from sae_variants.architectures.seq_contrastive import SeqContrastiveSAEConfig
from sae_variants.saelens_export import (
    EXPORT_METADATA_KEY,
    active_set_jaccard,
    least_squares_affine,
    rate_matched_thresholds,
)

D_IN, D_SAE, ROWS = 16, 48, 2048


def _activations(rows: int = ROWS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(D_IN, D_IN, generator=generator)
    return torch.randn(rows, D_IN, generator=generator) @ mixing + 3.0


def _randomized(sae: SAE, seed: int = 1) -> SAE:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            if name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return sae.eval()


def test_least_squares_recovers_an_affine_map() -> None:
    x = _activations().double()
    W, b = torch.randn(D_IN, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    fitted_W, fitted_b = least_squares_affine(x, x @ W + b, chunk_rows=300)
    torch.testing.assert_close(fitted_W, W, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted_b, b, atol=1e-3, rtol=1e-4)


def test_thresholds_reproduce_each_features_firing_count() -> None:
    pre = torch.randn(1000, 6)
    rates = torch.tensor([0.0, 0.01, 0.1, 0.25, 0.5, 1.0])
    threshold = rate_matched_thresholds(pre, rates)
    fires = (pre > threshold).sum(dim=0)
    # A threshold is never below 0, so a rate above the share of positive values is capped there.
    expected = torch.minimum((rates * 1000).round().long(), (pre > 0).sum(dim=0))
    assert fires.tolist() == expected.tolist()
    assert (threshold >= 0).all()


def test_active_set_jaccard_by_hand() -> None:
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    assert float(active_set_jaccard(a, b)) == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_a_plain_relu_seq_contrastive_exports_to_standard_exactly() -> None:
    sae = _randomized(
        SeqContrastiveSAE(SeqContrastiveSAEConfig(d_in=D_IN, d_sae=D_SAE, layer_norm=False))
    )
    x = _activations()
    report = export_to_saelens(sae, x, max_explained_variance_change=0.0)
    assert isinstance(report.sae, StandardSAE)
    assert report.exact
    torch.testing.assert_close(report.sae.encode(x), sae.encode(x))
    torch.testing.assert_close(report.sae.decode(report.sae.encode(x)), sae.decode(sae.encode(x)))
    assert report.active_set_jaccard == 1.0
    assert report.sae.cfg.metadata[EXPORT_METADATA_KEY]["method"] == "exact"
    assert "sae_lens alone" in report.sae.cfg.metadata["load_with"]


def test_distillation_is_exact_when_the_variants_encoder_is_affine() -> None:
    """MultiScaleNorm without normalization or attention is a gated affine encoder: the least
    squares fit recovers it and the rate-matched thresholds its gate (up to where the gate falls
    between two of the fitted rows), so the JumpReLU export reproduces the codes (a wrong target,
    fit or threshold would break this)."""
    cfg = MultiScaleNormSAEConfig(
        d_in=D_IN, d_sae=D_SAE, normalization="none", attention=False, restore_scale=False
    )
    sae = _randomized(MultiScaleNormSAE(cfg))
    with torch.no_grad():
        sae.gate_mean.copy_(torch.linspace(-0.5, 0.5, D_SAE))
        sae.gate_var.fill_(0.04)
    x = _activations(8192)
    report = export_to_saelens(sae, x, max_explained_variance_change=1e-3)
    assert isinstance(report.sae, JumpReLUSAE)
    assert report.method == "distilled"
    test = x[6144:]
    exported, source = report.sae.encode(test), sae.encode(test)
    both = (exported > 0) & (source > 0)
    torch.testing.assert_close(exported[both], source[both], atol=1e-4, rtol=1e-4)
    assert ((exported > 0) != (source > 0)).float().mean() < 1e-3
    assert report.active_set_jaccard > 0.99
    assert abs(report.change) < 1e-4
    assert report.evaluated_rows == 2048


def test_a_layer_normalizing_encoder_is_distilled_and_measured() -> None:
    sae = _randomized(SeqContrastiveSAE(SeqContrastiveSAEConfig(d_in=D_IN, d_sae=D_SAE)))
    x = _activations()
    report = export_to_saelens(sae, x, max_explained_variance_change=1.0, target="standard")
    assert isinstance(report.sae, StandardSAE)
    assert report.method == "distilled"
    assert 0.0 < report.active_set_jaccard <= 1.0
    recorded = report.sae.cfg.metadata[EXPORT_METADATA_KEY]
    assert recorded["from_architecture"] == "seq_contrastive"
    assert recorded["explained_variance_export"] == report.explained_variance_export
    with pytest.raises(
        ValueError, match=r"changes explained variance by .* more than the tolerance 0"
    ):
        export_to_saelens(sae, x, max_explained_variance_change=0.0)


def test_position_aware_needs_positions_and_bad_inputs_are_refused() -> None:
    sae = _randomized(
        PositionAwareSAE(PositionAwareSAEConfig(d_in=D_IN, d_sae=D_SAE, position_context=32))
    )
    x = _activations(512)
    with pytest.raises(ValueError, match="pass positions"):
        export_to_saelens(sae, x)
    report = export_to_saelens(sae, x, torch.arange(512) % 32, max_explained_variance_change=1.0)
    assert isinstance(report.sae, JumpReLUSAE)
    with pytest.raises(ValueError, match=r"positions must have shape \[512\]"):
        export_to_saelens(sae, x, torch.arange(10))
    with pytest.raises(ValueError, match=r"\[rows >= 8, d_in=16\]"):
        export_to_saelens(sae, x[:4], torch.arange(4))
    standard = report.sae
    with pytest.raises(NothingToExportError, match="already SAELens 'jumprelu'"):
        export_to_saelens(standard, x)

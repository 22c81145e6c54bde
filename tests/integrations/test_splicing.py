"""Splicing a trained SAE into the embedded model for circuit analysis."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

from sae_variants.integrations.evaluation.evaluate import load_sae
from sae_variants.integrations.splicing import (
    ablate_feature,
    attach_sae,
    check_sae_fits,
    feature_activations,
    run_with_sae,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def sae(trained_standard_sae):
    return load_sae(trained_standard_sae.output_path)


@pytest.fixture
def tokens(embedded_model):
    return embedded_model.to_tokens(
        [
            "It is a truth universally acknowledged, that a single man",
            "Emma Woodhouse, handsome, clever, and rich, with a comfort",
        ]
    )


def test_both_splicing_routes_reproduce_clean_logits_with_the_error_term(
    embedded_model, sae, tokens
) -> None:
    with torch.no_grad():
        clean = embedded_model(tokens)
        via_hooks = run_with_sae(embedded_model, tokens, sae, use_error_term=True)
        attach_sae(embedded_model, sae, use_error_term=True)
        try:
            via_add_sae = embedded_model(tokens)
        finally:
            embedded_model.reset_saes()
    torch.testing.assert_close(via_hooks, clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(via_add_sae, clean, atol=1e-4, rtol=1e-4)


def test_plain_hooks_equal_hooked_sae_transformer_without_error_term(
    embedded_model, sae, tokens
) -> None:
    with torch.no_grad():
        via_hooks = run_with_sae(embedded_model, tokens, sae, use_error_term=False)
        via_saelens = embedded_model.run_with_saes(tokens, saes=[sae], use_error_term=False)
        clean = embedded_model(tokens)
    torch.testing.assert_close(via_hooks, via_saelens, atol=1e-4, rtol=1e-4)
    assert (via_hooks - clean).abs().max() > 1e-2


def test_ablating_an_active_feature_changes_the_logits(embedded_model, sae, tokens) -> None:
    acts = feature_activations(embedded_model, sae, tokens)
    assert acts.shape == (*tokens.shape, sae.cfg.d_sae)
    strongest = int(acts[0, -1].argmax())
    clean = run_with_sae(embedded_model, tokens, sae)
    ablated = run_with_sae(embedded_model, tokens, sae, edit=ablate_feature(strongest))
    assert (ablated[0, -1] - clean[0, -1]).abs().max() > 1e-3
    # Before the feature first fires at a position, ablating it cannot change anything there.
    first_active = int((acts[0, :, strongest] > 0).nonzero()[0])
    torch.testing.assert_close(
        ablated[0, :first_active], clean[0, :first_active], atol=1e-4, rtol=1e-4
    )


def test_unknown_hook_is_a_clear_error(embedded_model, sae) -> None:
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pots"
    with pytest.raises(
        ValueError, match=r"unknown hook 'blocks.1.hook_resid_pots'.*blocks.1.hook_resid_post"
    ):
        check_sae_fits(embedded_model, sae)


def test_missing_hook_name_is_a_clear_error(embedded_model, sae) -> None:
    sae.cfg.metadata.hook_name = None
    with pytest.raises(ValueError, match=r"records no hook_name"):
        attach_sae(embedded_model, sae)


def test_wrong_width_is_a_clear_error(embedded_model, sae) -> None:
    sae.cfg.metadata.hook_name = "blocks.1.mlp.hook_post"
    with pytest.raises(
        ValueError, match=r"d_in=256 but hook blocks.1.mlp.hook_post of this model is 1024"
    ):
        check_sae_fits(embedded_model, sae)


def test_ablating_an_out_of_range_feature_is_refused() -> None:
    with pytest.raises(ValueError, match=r"out of range"):
        ablate_feature(10)(torch.zeros(2, 4))


def test_splice_and_ablate_example_runs(trained_standard_sae, capsys) -> None:
    module = runpy.run_path(str(EXAMPLES / "splice_and_ablate.py"))
    report = module["main"](["--sae", str(trained_standard_sae.output_path), "--top", "3"])
    assert len(report["top_features"]) == 3
    assert report["splice_max_logit_diff"] < 1e-3
    assert any(abs(delta) > 0 for _, delta in report["logit_changes"])
    assert "top features" in capsys.readouterr().out

"""Gemma-2-2B presets, checked against TransformerLens's own config (resolves offline)."""

import pytest

from sae_variants.integrations.models import gemma2
from sae_variants.integrations.training.presets import TRAINING_PRESETS, training_preset


def test_known_sizes_match_transformer_lens() -> None:
    cfg = gemma2.gemma2_2b_config()
    assert cfg.d_model == gemma2.GEMMA2_2B_D_MODEL == 2304
    assert cfg.n_layers == gemma2.GEMMA2_2B_N_LAYERS
    assert cfg.n_heads * cfg.d_head == gemma2.GEMMA2_2B_ATTN_Z_WIDTH


@pytest.mark.parametrize(("layer", "site"), gemma2.GEMMA2_2B_HOOK_PRESETS)
def test_every_preset_has_the_right_hook_and_width(layer: int, site: str) -> None:
    preset = gemma2.gemma2_2b_hook_preset(layer, site)
    cfg = gemma2.gemma2_2b_config()
    expected = {
        "resid_post": (f"blocks.{layer}.hook_resid_post", cfg.d_model),
        "mlp_out": (f"blocks.{layer}.hook_mlp_out", cfg.d_model),
        "attn_z": (f"blocks.{layer}.attn.hook_z", cfg.n_heads * cfg.d_head),
    }[site]
    assert (preset.hook_name, preset.d_in) == expected


def test_bad_layer_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"\[5, 12, 19\]"):
        gemma2.gemma2_2b_hook_preset(7)


def test_bad_site_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="resid_post"):
        gemma2.gemma2_2b_hook_preset(12, "hook_nonsense")


def test_paper_training_preset_carries_the_papers_settings() -> None:
    paper = training_preset("paper")
    assert (paper.context_size, paper.lr, paper.lr_warm_up_steps) == (128, 3e-4, 1000)
    assert paper.training_tokens // paper.train_batch_size_tokens == 4882


def test_unknown_training_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=", ".join(TRAINING_PRESETS)):
        training_preset("fast")

"""Gemma-2-2B hook and training presets, as the five seed papers used them.

The papers trained on ``google/gemma-2-2b`` at layers 5, 12 and 19, on the residual stream after
the block (their training settings are the ``paper`` preset of ``presets.py``). The architectures
themselves only ever see ``d_in``.
"""

from __future__ import annotations

from transformer_lens import HookedTransformerConfig
from transformer_lens.loading_from_pretrained import get_pretrained_model_config

from sae_variants.integrations.models.hooks import HOOK_SITES, HookPreset, hook_name, hook_width

GEMMA2_2B = "gemma-2-2b"
PAPER_LAYERS = (5, 12, 19)
PRESET_SITES = ("resid_post", "mlp_out", "attn_z")

# Known sizes of gemma-2-2b, asserted against TransformerLens's own config in the tests.
GEMMA2_2B_D_MODEL = 2304
GEMMA2_2B_N_LAYERS = 26
GEMMA2_2B_ATTN_Z_WIDTH = 8 * 256


def gemma2_2b_config() -> HookedTransformerConfig:
    """TransformerLens's config for gemma-2-2b; hard-coded in TL, so it resolves offline."""
    return get_pretrained_model_config(GEMMA2_2B)


def gemma2_2b_hook_preset(layer: int, site: str = "resid_post") -> HookPreset:
    """A paper hook preset: ``layer`` in :data:`PAPER_LAYERS`, ``site`` in :data:`PRESET_SITES`."""
    if layer not in PAPER_LAYERS:
        raise ValueError(
            f"no Gemma-2-2B preset for layer {layer}; the papers' layers are {list(PAPER_LAYERS)} "
            "(any layer 0..25 can still be trained with `--layer N` outside the presets)"
        )
    if site not in PRESET_SITES:
        raise ValueError(
            f"no Gemma-2-2B preset for site {site!r}; valid sites: {list(PRESET_SITES)}"
        )
    cfg = gemma2_2b_config()
    name = hook_name(cfg, layer, site)
    return HookPreset(GEMMA2_2B, layer, site, name, hook_width(cfg, name))


GEMMA2_2B_HOOK_PRESETS: tuple[tuple[int, str], ...] = tuple(
    (layer, site) for layer in PAPER_LAYERS for site in PRESET_SITES
)
"""Every (layer, site) pair with a Gemma-2-2B preset; ``HOOK_SITES`` names the site patterns."""

__all__ = [
    "GEMMA2_2B",
    "GEMMA2_2B_HOOK_PRESETS",
    "HOOK_SITES",
    "PAPER_LAYERS",
    "HookPreset",
    "gemma2_2b_config",
    "gemma2_2b_hook_preset",
]

"""Hook sites of TransformerLens models: names, validation and widths, computed from the config.

Nothing here loads weights, so hooks can be checked for ``gemma-2-2b`` without the hub.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from transformer_lens import HookedTransformerConfig

HOOK_SITES: dict[str, str] = {
    "resid_post": "blocks.{layer}.hook_resid_post",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "attn_z": "blocks.{layer}.attn.hook_z",
}
"""The sites an SAE is usually trained on; ``resid_post`` is the residual stream after the block."""


@dataclass(frozen=True)
class HookPreset:
    """Where an SAE reads its activations: a named model's block, site, hook and width."""

    model_name: str
    layer: int
    site: str
    hook_name: str
    d_in: int


def hook_name(cfg: HookedTransformerConfig, layer: int, site: str = "resid_post") -> str:
    """The TransformerLens hook name for ``site`` of block ``layer``, validated against ``cfg``."""
    if site not in HOOK_SITES:
        raise ValueError(f"unknown hook site {site!r}; valid sites: {', '.join(HOOK_SITES)}")
    if not isinstance(layer, int) or not 0 <= layer < cfg.n_layers:
        raise ValueError(
            f"layer {layer!r} is out of range for a {cfg.n_layers}-layer model; "
            f"valid layers: 0..{cfg.n_layers - 1}"
        )
    return HOOK_SITES[site].format(layer=layer)


def site_hook_names(cfg: HookedTransformerConfig) -> list[str]:
    """Every hook name of :data:`HOOK_SITES` that exists in a model with this config."""
    return [
        pattern.format(layer=layer)
        for layer in range(cfg.n_layers)
        for pattern in HOOK_SITES.values()
    ]


def hook_width(cfg: HookedTransformerConfig, name: str) -> int:
    """``d_in`` of an SAE at hook ``name`` (``attn.hook_z`` is flattened over heads, as SAELens
    does); ``ValueError`` for a block the model does not have or a site of unknown width."""
    block = re.match(r"blocks\.(\d+)\.", name)
    if block is not None and int(block.group(1)) >= cfg.n_layers:
        raise ValueError(
            f"hook {name!r} names block {block.group(1)}, but the model has {cfg.n_layers} blocks "
            f"(0-{cfg.n_layers - 1})"
        )
    if name.endswith("attn.hook_z"):
        return cfg.n_heads * cfg.d_head
    if name.endswith(
        ("hook_resid_post", "hook_resid_pre", "hook_resid_mid", "hook_mlp_out", "hook_attn_out")
    ):
        return cfg.d_model
    if name.endswith(("mlp.hook_post", "mlp.hook_pre")):
        if cfg.d_mlp is None:
            raise ValueError(f"the model has no MLP width, so {name} has no known width")
        return cfg.d_mlp
    raise ValueError(
        f"cannot infer the width of hook {name!r} from the config; supported hooks end in "
        "hook_resid_pre/mid/post, hook_mlp_out, hook_attn_out, attn.hook_z or mlp.hook_pre/post"
    )


def check_hook_exists(name: str, available: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the closest valid hooks when ``name`` is not a hook of the model."""
    names = list(available)
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; did you mean one of {close}?" if close else ""
    raise ValueError(
        f"unknown hook {name!r} for this model{hint} (it has {len(names)} hooks, e.g. "
        f"{names[:3]}; common sites: {', '.join(HOOK_SITES)})"
    )

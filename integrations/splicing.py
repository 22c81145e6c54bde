"""Splice SAEs into TransformerLens models for circuit analysis.

Two routes, which give the same logits:

- SAELens's ``HookedSAETransformer`` (``add_sae``, ``run_with_saes``, ``run_with_cache_with_saes``),
  through :func:`attach_sae`, which first checks that the hook exists and the widths agree;
- a plain ``HookedTransformer.run_with_hooks`` hook from :func:`sae_replacement_hook`, for models
  that are not ``HookedSAETransformer`` and for feature edits written as a function.

Both call exactly ``decode(encode(x))``, as SAELens's splicing and evals do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE, HookedSAETransformer
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from sae_variants.integrations.models.hooks import check_hook_exists, hook_width

FeatureEdit = Callable[[Tensor], Tensor]
"""Maps feature activations ``[..., d_sae]`` to edited ones of the same shape."""


def check_sae_fits(model: HookedTransformer, sae: SAE[Any]) -> str:
    """The SAE's hook name, after checking it exists in ``model`` and the widths agree."""
    name = sae.cfg.metadata.hook_name
    if name is None:
        raise ValueError(
            "the SAE records no hook_name (sae.cfg.metadata.hook_name is None), so SAELens would "
            "silently attach nothing; set it to the hook the SAE was trained on"
        )
    check_hook_exists(name, model.hook_dict)
    try:
        width = hook_width(model.cfg, name)
    except ValueError:
        return name  # an unusual hook: the SAE's own input check will catch a mismatch
    if width != sae.cfg.d_in:
        raise ValueError(
            f"the SAE expects d_in={sae.cfg.d_in} but hook {name} of this model is {width} wide"
        )
    return name


def attach_sae(model: HookedSAETransformer, sae: SAE[Any], use_error_term: bool = True) -> None:
    """``model.add_sae`` after :func:`check_sae_fits`; with the error term, logits stay clean."""
    check_sae_fits(model, sae)
    model.add_sae(sae, use_error_term=use_error_term)


def sae_replacement_hook(
    sae: SAE[Any], *, use_error_term: bool = True, edit: FeatureEdit | None = None
) -> Callable[[Tensor, HookPoint], Tensor]:
    """A forward hook replacing the activation with the SAE's reconstruction.

    With ``use_error_term`` the unedited reconstruction error is added back, so without an
    ``edit`` the model's output is unchanged and with one only the edit's effect propagates.
    """

    def hook(activation: Tensor, hook: HookPoint) -> Tensor:  # noqa: ARG001 (TL's hook signature)
        features = sae.encode(activation)
        edited = features if edit is None else edit(features)
        reconstruction = sae.decode(edited)
        if use_error_term:
            with torch.no_grad():
                error = activation - (sae.decode(features) if edit is not None else reconstruction)
            reconstruction = reconstruction + error
        return reconstruction.to(activation.dtype)

    return hook


def run_with_sae(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    sae: SAE[Any],
    *,
    use_error_term: bool = True,
    edit: FeatureEdit | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``model`` with ``sae`` spliced in through plain ``run_with_hooks``."""
    name = check_sae_fits(model, sae)
    hook = sae_replacement_hook(sae, use_error_term=use_error_term, edit=edit)
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def feature_activations(
    model: HookedSAETransformer, sae: SAE[Any], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_sae"]:
    """The SAE's feature activations for ``tokens``, read from ``run_with_cache_with_saes``."""
    name = check_sae_fits(model, sae)
    with torch.no_grad():
        _, cache = model.run_with_cache_with_saes(tokens, saes=[sae], use_error_term=True)
    return cache[f"{name}.hook_sae_acts_post"]


def ablate_feature(index: int) -> FeatureEdit:
    """An edit that zeroes feature ``index`` at every position."""

    def edit(features: Tensor) -> Tensor:
        if not 0 <= index < features.shape[-1]:
            raise ValueError(f"feature index {index} out of range for d_sae={features.shape[-1]}")
        edited = features.clone()
        edited[..., index] = 0.0
        return edited

    return edit

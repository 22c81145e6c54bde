"""Folding SAELens's input scaling into an SAE whose encoder may normalize each token.

SAELens trains on ``c * x`` (``normalize_activations="expected_average_only_in"``) and afterwards
folds ``c`` into the weights so the saved SAE reads raw activations. MultiScaleNorm,
SeqContrastive and PositionAware share the rule: a per-token normalization is scale-invariant
once its epsilon is divided by ``c^2``; otherwise the matrices reading the input absorb ``c``.
Codes that restore the token scale shrink by ``c`` with it, so the decoder keeps its rows;
other codes do not, so ``W_dec`` is divided by ``c``. ``b_dec`` lives in input space, so it is
divided by ``c`` too.

Input *whitening* cannot be folded into a per-token normalizing encoder; the configs refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sae_variants.architectures.base import VariantModule


@torch.no_grad()
def fold_input_scale(
    sae: Any,
    c: float,
    *,
    normalizes_input: bool,
    eps_field: str,
    restores_scale: bool,
    reads_input: Sequence[Tensor] = (),
    writes_input: Sequence[Tensor] = (),
) -> None:
    """Make ``sae`` compute on ``x`` what it computed on ``c * x``, exactly.

    ``reads_input``: tensors multiplied by the (unnormalized) input, scaled by ``c``;
    ``writes_input``: tensors added to it, divided by ``c``. Both apply only when the encoder does
    not normalize its input (``normalizes_input`` False); ``eps_field`` names the config's
    normalization epsilon.
    """
    cfg = sae.cfg
    if normalizes_input:
        setattr(cfg, eps_field, getattr(cfg, eps_field) / (c * c))
    else:
        for tensor in reads_input:
            tensor.data.mul_(c)
        for tensor in writes_input:
            tensor.data.div_(c)
    if not (normalizes_input and restores_scale):
        sae.W_dec.data.div_(c)
    sae.b_dec.data.div_(c)
    cfg.normalize_activations = "none"


class TokenNormalizingEncoder(VariantModule):
    """Base of an encoder that normalizes each token: an input scale folds into it exactly
    (:func:`fold_input_scale`), an input whitening cannot."""

    def fold_activation_whitening(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"a {self.cfg.architecture()} SAE normalizes inside its encoder, so an input whitening "
            "cannot be folded into its weights; train with normalize_activations="
            "'expected_average_only_in' or 'none'"
        )


def require_foldable_input_normalization(cfg: Any) -> None:
    """``ValueError`` for ``normalize_activations="covariance_whitening"`` (see the module doc)."""
    if cfg.normalize_activations == "covariance_whitening":
        raise ValueError(
            "normalize_activations='covariance_whitening' cannot be folded into a "
            f"{cfg.architecture()} SAE (it normalizes inside its encoder); use "
            "'expected_average_only_in' or 'none'"
        )

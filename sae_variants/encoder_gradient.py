"""Encoder pre-activations whose backward pass does not multiply back through the encoder.

SAELens centres an SAE's input on the decoder bias, ``x' = x - b_dec``, so ``b_dec`` is a
parameter of the encoder's input and autograd computes the gradient of every input row,
``grad x' = G W_enc^T`` (``G`` the pre-activation's gradient): a third ``2 B d_in d_sae``-FLOP
product beside the encoder's forward and its weight gradient, as large as either, only to sum its
rows into ``grad b_dec``. When ``b_dec`` is the only way a gradient can reach ``x'`` (the raw
activations carry none, as in every training step), the sum can be taken first:
``grad b_dec = -(sum_rows G) W_enc^T``, a vector product. The forms below do exactly that by
writing ``x' = rows + delta``: ``rows = sg(x')``, the same numbers with no gradient, and
``delta = sg(b_dec) - b_dec``, zero-valued and shared by every row, carrying ``b_dec``'s gradient.
Autograd then gives the same gradients (up to summation order) without the product.

Callers get the split from :func:`split_centred_input`, which returns ``None`` whenever the
input's gradient might reach anything but ``b_dec`` (the raw activations require a gradient, a
hook on SAELens's ``hook_sae_input`` made them depend on a parameter, or no offset was applied);
the plain form is exact then, and must be used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from sae_variants.functional import token_moments, token_scale


class CentredInput(NamedTuple):
    """``x' = rows + delta`` (see the module docstring): ``rows`` holds the values, ``delta``
    (zero) the decoder bias's gradient path."""

    rows: Float[Tensor, "*batch d_in"]
    delta: Float[Tensor, " d_in"]


def split_centred_input(
    sae_in: Float[Tensor, "*batch d_in"], b_dec: Float[Tensor, " d_in"], offset_applied: bool
) -> CentredInput | None:
    """``sae_in`` (SAELens's ``process_sae_in`` output, ``x - b_dec``) as ``rows + delta`` when
    its gradient can reach ``b_dec`` alone, else ``None``.

    Read from the autograd graph: ``sae_in`` must be the subtraction whose minuend (the processed
    raw input) carries no gradient. Any other shape of graph (SAELens changing the centring, a
    parametric input hook, an input that requires a gradient) gives ``None``: the caller falls
    back to the plain form, never to a wrong gradient.
    """
    if not (offset_applied and torch.is_grad_enabled() and sae_in.requires_grad):
        return None
    node = sae_in.grad_fn
    if node is None or type(node).__name__ != "SubBackward0":
        return None
    (minuend, _), (subtrahend, _) = node.next_functions
    if minuend is not None or subtrahend is None or not b_dec.requires_grad:
        return None
    return CentredInput(sae_in.detach(), b_dec.detach() - b_dec)


def affine_preactivation(
    centred: CentredInput, W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"]
) -> Float[Tensor, "*batch d_sae"]:
    """``x' W_enc + b_enc`` for ``x' = rows + delta``: the same values as the plain form (``delta``
    is zero), ``b_dec``'s gradient through the bias vector ``delta W_enc``."""
    return centred.rows @ W_enc + (b_enc + centred.delta @ W_enc)


def layer_normalized_scaled_preactivation(
    centred: CentredInput,
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    gain: Float[Tensor, " d_in"],
    bias: Float[Tensor, " d_in"],
    eps: float,
) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch 1"]]:
    """``(s n, s)`` of ``functional.layer_normalized_preactivation`` with ``restore_scale``, for
    ``x' = rows + delta``:

        s n = (x' - mu) (gain * W_enc) + s (bias W_enc + b_enc)

    The product reads ``rows - mu`` (no gradient) against the gain-scaled weights, so its backward
    is the weight gradient alone; the token moments (``mu``, ``s``), the only per-row functions of
    ``b_dec``, are ``[rows, d_in]``-sized and cheap to differentiate, and ``delta``'s share of the
    centring is the vector ``(delta - mean(delta)) (gain * W_enc)``.
    """
    leading = centred.rows.shape[:-1]
    rows = centred.rows.reshape(-1, centred.rows.shape[-1])
    shifted = rows + centred.delta  # the values of rows, with b_dec's per-row path
    moments = token_moments(shifted)
    scale = token_scale(moments, eps)
    scaled_weights = gain.unsqueeze(1) * W_enc
    shared = (centred.delta - centred.delta.mean()) @ scaled_weights
    pre = torch.addmm(
        torch.addr(shared, scale.squeeze(1), bias @ W_enc + b_enc),
        rows - moments.mean.detach(),
        scaled_weights,
    )
    return pre.reshape(*leading, W_enc.shape[1]), scale.reshape(*leading, 1)

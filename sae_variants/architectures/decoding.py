"""SAELens's decode chain with an explicit decoder matrix, shared by variants that decode with a
view of ``W_dec`` (a gradient-projected or gradient-scaled one) while training."""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from sae_lens.saes.sae import SAE
from torch import Tensor


def decode_through_hooks(
    sae: SAE[Any], feature_acts: Float[Tensor, "*batch d_sae"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "*batch d_in"]:
    """``f W_dec + b_dec`` through ``hook_sae_recons``, output normalization and hook_z reshape,
    exactly as SAELens's own ``decode`` does with ``sae.W_dec``."""
    sae_out = sae.hook_sae_recons(feature_acts @ W_dec + sae.b_dec)
    sae_out = sae.run_time_activation_norm_fn_out(sae_out)
    return sae.reshape_fn_out(sae_out, sae.d_head)

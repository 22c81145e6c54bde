"""The tensor-shape vocabulary shared by every module of ``sae_variants``.

Axis names (used literally inside jaxtyping annotations, so a signature reads alone):

=========  ==========================================================================
``batch``  rows fed to the SAE; ``*batch`` means "any leading dims" ([B] or [B, pos])
``seq``    sequences (contexts) in a sequence-structured batch
``pos``    positions within a context
``d_in``   width of the hooked activation (2304 for the Gemma-2-2B residual stream)
``d_sae``  dictionary width (number of features)
``k``      active latents, for TopK-like variants
=========  ==========================================================================

Only the aliases every variant shares live here; everything else is written inline.
Annotations are checked at run time only under pytest (``--jaxtyping-packages``).
"""

from __future__ import annotations

from typing import TypeAlias

from jaxtyping import Float
from torch import Tensor

SaeIn: TypeAlias = Float[Tensor, "*batch d_in"]
"""Activations entering an SAE: ``[batch, d_in]`` or ``[batch, pos, d_in]``."""

FeatureActs: TypeAlias = Float[Tensor, "*batch d_sae"]
"""Feature activations (codes) an SAE's encoder produces for :data:`SaeIn`."""

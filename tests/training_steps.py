"""A training step's input built the way the sequence-aware pipeline builds it, for tests that
call ``training_forward_pass`` directly (imported by test modules; not itself a test module)."""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE, TrainStepInput

from sae_variants import NeedsTokenContext, TokenContext


def step_input(
    sae: TrainingSAE[Any], x: torch.Tensor, context_size: int, n_training_steps: int = 0
) -> TrainStepInput:
    """The step input for rows ``x`` that are whole contexts of ``context_size`` tokens, row-major
    (the token context attached for a sequence-aware SAE is their true provenance), with the
    SAE's coefficients at their configured values."""
    if isinstance(sae, NeedsTokenContext):
        rows = torch.arange(x.shape[0])
        sae.attach_token_context(
            TokenContext(rows % context_size, rows // context_size, torch.zeros_like(rows))
        )
    coefficients = {
        name: (c if isinstance(c, float) else c.value) for name, c in sae.get_coefficients().items()
    }
    return TrainStepInput(
        sae_in=x,
        coefficients=coefficients,
        dead_neuron_mask=None,
        n_training_steps=n_training_steps,
        is_logging_step=False,
    )

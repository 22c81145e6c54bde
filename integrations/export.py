"""``sae-variants export-standard``: a saved QuCL SAE as a SAELens ``standard`` SAE, measured first.

The explained-variance change is measured on held-out activations of the embedded model at the
SAE's own hook (BOS positions excluded, as in training). For other models, call
:func:`sae_variants.export_to_standard` with activations you collected.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sae_variants.architectures.qucl import QuCLSAE, StandardExport, export_to_standard
from sae_variants.integrations.evaluation import heldout_dataset, load_sae
from sae_variants.integrations.models import load_model
from sae_variants.integrations.tiny_gemma2 import EMBEDDED_MODEL_NAME


@torch.no_grad()
def heldout_activations(model_name: str, hook_name: str, context_size: int, n_contexts: int) -> torch.Tensor:
    """``[n_contexts * (context_size - 1), d_in]`` activations of held-out text at ``hook_name``."""
    if model_name != EMBEDDED_MODEL_NAME:
        raise ValueError(
            f"held-out text is only bundled for {EMBEDDED_MODEL_NAME!r}, not {model_name!r}; call "
            "sae_variants.export_to_standard(sae, activations) with activations of your own"
        )
    model = load_model(model_name)
    tokens = torch.tensor(heldout_dataset(context_size)["tokens"][:n_contexts])
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][:, 1:].reshape(-1, cache[hook_name].shape[-1])


def export_saved_qucl(path: str | Path, output: str | Path, max_explained_variance_change: float = 0.01,
                      n_contexts: int = 64) -> StandardExport:
    """Load the QuCL SAE at ``path``, export it, and save the ``standard`` SAE to ``output``."""
    sae = load_sae(path)
    if not isinstance(sae, QuCLSAE):
        raise ValueError(f"{path} holds a {sae.cfg.architecture()!r} SAE; export-standard takes a 'qucl' SAE")
    meta = sae.cfg.metadata
    activations = heldout_activations(meta.model_name, meta.hook_name, meta.context_size or 128, n_contexts)
    export = export_to_standard(sae, activations, max_explained_variance_change)
    export.sae.save_model(str(output))
    return export

"""``sae-variants export-standard``: a saved QuCL SAE as a SAELens ``standard`` SAE, measured first.

The explained-variance change is measured on held-out activations of the embedded model at the
SAE's own hook (BOS positions excluded, as in training). For other models, call
:func:`sae_variants.export_to_standard` with activations you collected.
"""

from __future__ import annotations

from pathlib import Path

from sae_variants.architectures.qucl import QuCLSAE, StandardExport, export_to_standard
from sae_variants.integrations.evaluation.evaluate import load_sae
from sae_variants.integrations.evaluation.heldout import heldout_activations


def export_saved_qucl(
    path: str | Path,
    output: str | Path,
    max_explained_variance_change: float = 0.01,
    n_contexts: int = 64,
) -> StandardExport:
    """Load the QuCL SAE at ``path``, export it, and save the ``standard`` SAE to ``output``."""
    sae = load_sae(path)
    if not isinstance(sae, QuCLSAE):
        raise ValueError(
            f"{path} holds a {sae.cfg.architecture()!r} SAE; export-standard takes a 'qucl' SAE"
        )
    meta = sae.cfg.metadata
    activations = heldout_activations(
        meta.model_name, meta.hook_name, meta.context_size or 128, n_contexts
    )
    export = export_to_standard(sae, activations, max_explained_variance_change)
    export.sae.save_model(str(output))
    return export

"""Evaluation on held-out text: SAELens's ``run_evals`` plus the variant papers' metrics
(``evaluate``), the held-out data and the shared pass over whole contexts (``heldout``),
contextual consistency (``consistency``), reconstruction by position range
(``position_metrics``) and how much context signal activations and codes carry
(``context_signal``)."""

from sae_variants.integrations.evaluation.evaluate import (
    EvalResult,
    evaluate_sae,
    format_table,
    load_sae,
)

__all__ = ["EvalResult", "evaluate_sae", "format_table", "load_sae"]

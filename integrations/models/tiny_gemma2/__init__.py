"""The embedded default model: a Gemma-2-architecture transformer trained on Jane Austen.

Weights (fp16), tokenizer and corpus ship inside the package, so nothing is downloaded.
``build.py`` regenerates all three; ``training_report.json`` records how the shipped weights were
made and their held-out loss.
"""

from sae_variants.integrations.models.tiny_gemma2.config import (
    CONTEXT_SIZE,
    EMBEDDED_MODEL_NAME,
    random_tiny_gemma2_config,
    tiny_gemma2_config,
)
from sae_variants.integrations.models.tiny_gemma2.model import (
    austen_dataset,
    heldout_loss,
    load_tiny_gemma2,
    load_tokenizer,
)

__all__ = [
    "CONTEXT_SIZE",
    "EMBEDDED_MODEL_NAME",
    "austen_dataset",
    "heldout_loss",
    "load_tiny_gemma2",
    "load_tokenizer",
    "random_tiny_gemma2_config",
    "tiny_gemma2_config",
]

"""Resolve a model name to a TransformerLens config (offline) and to a loaded model.

``tiny-gemma2-austen`` is the embedded model and ``gemma-3-270m`` a real one from an optional
extra (``gemma3.py``); every other name goes to TransformerLens's ``from_pretrained_no_processing``,
which needs the Hugging Face hub for weights. Hub failures are re-raised as :class:`HubAccessError`
naming what could not be fetched and how to get it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig
from transformer_lens.loading_from_pretrained import get_pretrained_model_config

from sae_variants.integrations.models.gemma3 import (
    GEMMA3_270M,
    gemma3_270m_config,
    load_gemma3_270m,
)
from sae_variants.integrations.models.local_checkpoint import load_local_checkpoint
from sae_variants.integrations.models.tiny_gemma2 import (
    EMBEDDED_MODEL_NAME,
    load_tiny_gemma2,
    tiny_gemma2_config,
)


class HubAccessError(RuntimeError):
    """A model or dataset had to come from the Hugging Face hub and could not."""


def model_config(model_name: str) -> HookedTransformerConfig:
    """The model's TransformerLens config; official names such as ``gemma-2-2b`` resolve offline."""
    if model_name == EMBEDDED_MODEL_NAME:
        return tiny_gemma2_config()
    if model_name == GEMMA3_270M:
        return gemma3_270m_config()
    try:
        return get_pretrained_model_config(model_name)
    except ValueError as err:
        raise ValueError(
            f"unknown model {model_name!r}: it is neither the embedded {EMBEDDED_MODEL_NAME!r}, "
            f"{GEMMA3_270M!r} nor an official TransformerLens model name (e.g. 'gemma-2-2b')"
        ) from err
    except OSError as err:
        raise HubAccessError(
            f"the config of {model_name!r} is not built into TransformerLens and the Hugging Face "
            f"hub could not be reached to fetch it ({err.__class__.__name__})"
        ) from err


def load_model(
    model_name: str, device: str = "cpu", model_path: str | Path | None = None
) -> HookedSAETransformer:
    """Load ``model_name`` as a HookedSAETransformer, ready for training, evaluation and splicing.

    With ``model_path``, the weights come from that local Hugging Face folder instead of the hub
    (:func:`~.local_checkpoint.load_local_checkpoint`); ``model_name`` still names the
    TransformerLens architecture.
    """
    if model_path is not None:
        return load_local_checkpoint(model_name, Path(model_path), device)
    if model_name == EMBEDDED_MODEL_NAME:
        model = load_tiny_gemma2()
        # TransformerLens prints "Moving model to device" by default, which would corrupt --json.
        return model.to(device, print_details=False) if device != "cpu" else model
    if model_name == GEMMA3_270M:
        return load_gemma3_270m(device)
    model_config(model_name)  # fails fast and clearly on an unknown name
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            model = HookedSAETransformer.from_pretrained_no_processing(model_name, device=device)
    except OSError as err:
        raise HubAccessError(
            f"could not fetch the weights of {model_name!r} from the Hugging Face hub: {err}. "
            "This needs network access to huggingface.co (and, for Gemma, an accepted licence and "
            "`huggingface-cli login`). Offline, use the embedded model "
            f"(--model {EMBEDDED_MODEL_NAME})."
        ) from err
    model.eval()
    return model

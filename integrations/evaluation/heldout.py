"""Held-out data: the embedded model's held-out text, its activations, and one pass of an SAE over
held-out contexts shared by the metrics that need whole contexts.

Contextual consistency (``consistency.py``) needs which features fire at each position of a
context; the per-range FVU (``position_metrics.py``) needs each token's activation and residual.
Both come from the same model forward and the same ``encode`` of ``[context, pos, d_in]`` inputs
(what splicing passes, so a position-aware SAE sees each token's true position), done once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from jaxtyping import Bool, Float
from sae_lens import HookedSAETransformer
from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name
from torch import Tensor

from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME, austen_dataset


def special_token_ids(model: HookedSAETransformer) -> list[int]:
    """BOS, EOS and padding ids of the model's tokenizer (none without a tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return []
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def heldout_dataset(context_size: int) -> Dataset:
    """The Austen held-out split (never seen by the tiny model or by SAE training)."""
    return austen_dataset("held_out", context_size)


@torch.no_grad()
def heldout_activations(
    model_name: str, hook_name: str, context_size: int, n_contexts: int
) -> torch.Tensor:
    """``[n_contexts * (context_size - 1), d_in]`` activations of held-out text at ``hook_name``."""
    if model_name != EMBEDDED_MODEL_NAME:
        raise ValueError(
            f"held-out text is only bundled for {EMBEDDED_MODEL_NAME!r}, not {model_name!r}; use "
            "activations of your own"
        )
    model = load_model(model_name)
    tokens = torch.tensor(heldout_dataset(context_size)["tokens"][:n_contexts])
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][:, 1:].reshape(-1, cache[hook_name].shape[-1])


@dataclass
class HeldoutCodes:
    activations: Float[Tensor, "contexts pos d_in"]
    active: Bool[Tensor, "contexts pos d_sae"]
    """Which features fire at each token."""
    residual: Float[Tensor, "contexts pos d_in"]
    """``x - decode(encode(x))``."""
    usable: Bool[Tensor, "contexts pos"]
    """Tokens that are not special (BOS, EOS, padding)."""

    def mean_l0(self) -> float:
        """Mean number of firing features per usable token."""
        return float(self.active.sum(dim=-1)[self.usable].float().mean())


def usable_tokens(tokens: Tensor, special_token_ids: list[int]) -> Bool[Tensor, "contexts pos"]:
    """Tokens that are not special (BOS, EOS, padding)."""
    return ~torch.isin(tokens, torch.tensor(special_token_ids, dtype=tokens.dtype))


@torch.no_grad()
def encode_contexts(
    sae: Any, model: Any, tokens: Tensor, special_token_ids: list[int], batch_size: int = 16
) -> HeldoutCodes:
    """Run ``model`` to the SAE's hook on ``tokens`` ([contexts, pos]) and encode/decode each
    chunk of contexts; only the firing pattern of the codes is kept (bool, not floats)."""
    hook = sae.cfg.metadata.hook_name
    stop = extract_stop_at_layer_from_tlens_hook_name(hook)
    activations, active, residual = [], [], []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(
            chunk, names_filter=[hook], stop_at_layer=stop, prepend_bos=False
        )
        x = cache[hook].to(sae.dtype)
        codes = sae.encode(x)
        activations.append(x)
        active.append(codes > 0)
        residual.append(x - sae.decode(codes))
    return HeldoutCodes(
        torch.cat(activations),
        torch.cat(active),
        torch.cat(residual),
        usable_tokens(tokens, special_token_ids),
    )

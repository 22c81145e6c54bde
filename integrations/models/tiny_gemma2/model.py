"""Load the embedded tiny Gemma-2 (weights and tokenizer ship inside the package; no hub)."""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import torch
from datasets import Dataset
from sae_lens import HookedSAETransformer
from safetensors.torch import load_file
from transformer_lens import HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from sae_variants.integrations.models.tiny_gemma2 import corpus
from sae_variants.integrations.models.tiny_gemma2.config import CONTEXT_SIZE, tiny_gemma2_config

ASSET_DIR = Path(__file__).parent
WEIGHTS_PATH = ASSET_DIR / "model.safetensors"
TOKENIZER_DIR = ASSET_DIR / "tokenizer"
REPORT_PATH = ASSET_DIR / "training_report.json"
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""The class the shipped ``tokenizer_config.json`` names: one every transformers release has
(transformers 5 writes its own ``TokenizersBackend``, which transformers 4 cannot import)."""


@cache
def load_tokenizer() -> PreTrainedTokenizerBase:
    """The byte-level BPE (4096 entries) trained on the Austen train split."""
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"the embedded tokenizer is missing ({TOKENIZER_DIR}); regenerate it with "
            "`python -m sae_variants.integrations.models.tiny_gemma2.build`"
        )
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def build_model(
    cfg: HookedTransformerConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> HookedSAETransformer:
    """A HookedSAETransformer from a config, without loading anything from the hub."""
    with warnings.catch_warnings():
        # TL 3.9 deprecates HookedTransformer in favour of TransformerBridge on every
        # construction; SAELens's splicing still needs the HookedTransformer family.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        model = HookedSAETransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def load_weights(model: HookedSAETransformer) -> None:
    """Load the shipped fp16 weights into ``model`` (kept in the model's own dtype)."""
    if not WEIGHTS_PATH.is_file():
        raise FileNotFoundError(
            f"the embedded model weights are missing ({WEIGHTS_PATH}); regenerate them with "
            "`python -m sae_variants.integrations.models.tiny_gemma2.build`"
        )
    state = {k: v.to(torch.float32) for k, v in load_file(str(WEIGHTS_PATH)).items()}
    # The attention masks and rotary tables are rebuilt from the config, so they are not shipped.
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".mask", ".IGNORE")) and "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(
            f"embedded weights do not match the config: missing {missing}, unexpected {unexpected}"
        )


def load_tiny_gemma2() -> HookedSAETransformer:
    """The trained tiny Gemma-2 with its tokenizer, in eval mode, on the CPU."""
    model = build_model(tiny_gemma2_config(), tokenizer=load_tokenizer())
    load_weights(model)
    return model


@torch.no_grad()
def heldout_loss(model: HookedSAETransformer, max_contexts: int | None = None) -> float:
    """Mean next-token cross-entropy (nats/token) on the held-out tail of every novel."""
    contexts = corpus.token_contexts(
        corpus.corpus_split("held_out"), load_tokenizer(), CONTEXT_SIZE
    )
    if max_contexts is not None:
        contexts = contexts[:max_contexts]
    total, count = 0.0, 0
    for batch in contexts.split(32):
        loss = model(batch, return_type="loss", loss_per_token=True)
        total += loss.sum().item()
        count += loss.numel()
    return total / count


def austen_dataset(split: str = "train", context_size: int = CONTEXT_SIZE) -> Dataset:
    """The Austen ``"train"`` or ``"held_out"`` split as pretokenized ``[BOS] + text`` contexts
    (column ``tokens``), ready for SAELens's runner as ``override_dataset`` (the embedded model
    has no hub dataset, so a config's ``dataset_path`` cannot name it)."""
    return corpus.contexts_dataset(
        corpus.token_contexts(corpus.corpus_split(split), load_tokenizer(), context_size)
    )

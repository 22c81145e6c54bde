"""The Jane Austen corpus shipped with the package, its train/held-out split, and token contexts.

The text of the six novels (public domain) ships as ``austen.json.xz``, extracted from Debian's
``r-cran-janeaustenr`` by ``build.py``. The last ``HELD_OUT_FRACTION`` of every novel is held out:
the tiny model never trained on it, and SAE evaluation reads only from it.
"""

from __future__ import annotations

import json
import lzma
import re
from functools import cache
from pathlib import Path

import torch
from datasets import Dataset
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

ASSET_DIR = Path(__file__).parent
CORPUS_PATH = ASSET_DIR / "austen.json.xz"
HELD_OUT_FRACTION = 0.05


def normalize_novel(raw: str) -> str:
    """Join the hard-wrapped lines of each paragraph; paragraphs stay separated by a blank line."""
    paragraphs = re.split(r"\n\s*\n", raw)
    joined = (" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs)
    return "\n\n".join(p for p in joined if p)


@cache
def load_novels() -> dict[str, str]:
    """The six novels as normalized text, keyed by janeaustenr's names, in publication order."""
    if not CORPUS_PATH.is_file():
        raise FileNotFoundError(
            f"the Austen corpus is missing from the package ({CORPUS_PATH}); reinstall "
            "sae-variants or regenerate it with `python -m sae_variants.integrations.models.tiny_gemma2.build`"
        )
    return json.loads(lzma.decompress(CORPUS_PATH.read_bytes()).decode("utf-8"))


def split_novel(text: str, held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[str, str]:
    """Split one novel into (train, held-out) at the paragraph boundary nearest the cut point."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    cut = int(len(text) * (1.0 - held_out_fraction))
    boundary = text.rfind("\n\n", 0, cut)
    cut = boundary if boundary > 0 else cut
    return text[:cut], text[cut:].lstrip("\n")


def corpus_split(split: str) -> list[str]:
    """The novels' ``"train"`` parts or ``"held_out"`` parts, one string per novel."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    index = 0 if split == "train" else 1
    return [split_novel(text)[index] for text in load_novels().values()]


def token_contexts(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, context_size: int
) -> Int[Tensor, "n_contexts context"]:
    """Cut each text's token stream into rows of ``[BOS] + (context_size - 1)`` tokens.

    Rows never straddle two novels, so every row is contiguous prose. The incomplete tail of each
    novel is dropped.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2, got {context_size}")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("the tokenizer has no BOS token; the contexts need one at position 0")
    body = context_size - 1
    rows: list[Tensor] = []
    for text in texts:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        n_rows = len(ids) // body
        if n_rows == 0:
            continue
        chunks = ids[: n_rows * body].view(n_rows, body)
        rows.append(torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), chunks], dim=1))
    if not rows:
        raise ValueError(f"the texts hold fewer than {body} tokens; no context can be made")
    return torch.cat(rows)


def contexts_dataset(contexts: Int[Tensor, "n_contexts context"]) -> Dataset:
    """A pretokenized ``datasets.Dataset`` (column ``tokens``) as SAELens's store expects."""
    return Dataset.from_dict({"tokens": contexts.tolist()})

"""``sae-variants export``: a saved variant SAE as a stock SAELens SAE, measured first.

The rows that fit (distilled exports) and measure the export are held-out activations at the
SAE's own hook with each row's position: the bundled held-out Austen text run through the model
for the offline models (the embedded one and gemma-3-270m), or the contexts of an activation
cache (``--activations DIR``, any model). Special tokens are left out, as in training. The
export is written to a sibling folder and moved into place, so a failure leaves nothing that looks
like an SAE; an existing SAE at the output is replaced only with ``overwrite``, and never the
input.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from torch import Tensor

from sae_variants.integrations.evaluation.evaluate import check_sae_hook, load_sae
from sae_variants.integrations.evaluation.heldout import special_token_ids, usable_tokens
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.output_folders import move_into_place
from sae_variants.integrations.training.activation_cache import cached_token_ids, open_cache
from sae_variants.integrations.training.datasets import austen_contexts
from sae_variants.integrations.training.request import OFFLINE_MODELS
from sae_variants.saelens_export import ExportReport, ExportTarget, export_to_saelens

logger = logging.getLogger(__name__)

DEFAULT_CONTEXTS = 256
"""Held-out contexts read for an export: about 32 k rows at context 128, three quarters fit."""


@dataclass
class HeldoutRows:
    activations: Tensor
    """``[rows, d_in]``, special tokens left out, contexts in order."""
    positions: Tensor
    """``[rows]``: each row's position in its context."""


def _rows_of_contexts(acts: Tensor, tokens: Tensor, specials: list[int]) -> HeldoutRows:
    """Flatten ``[contexts, pos, d_in]`` to the rows of non-special tokens, with positions."""
    keep = usable_tokens(tokens, specials)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    return HeldoutRows(acts[keep], positions[keep])


@torch.no_grad()
def model_heldout_rows(
    sae: SAE[Any], n_contexts: int, model_path: str | Path | None = None, device: str = "cpu"
) -> HeldoutRows:
    """Rows at the SAE's hook of the first ``n_contexts`` held-out Austen contexts, tokenized and
    run by the SAE's model (an offline model: the embedded one or gemma-3-270m)."""
    meta = sae.cfg.metadata
    model_name = meta.model_name or EMBEDDED_MODEL_NAME
    if model_name not in OFFLINE_MODELS:
        raise ValueError(
            f"held-out text is bundled only for {sorted(OFFLINE_MODELS)}; the SAE is on "
            f"{model_name!r}: pass --activations DIR, a cache of its hook "
            "(`sae-variants cache`)"
        )
    model = load_model(model_name, device=device, model_path=model_path)
    check_sae_hook("this export's input", meta.hook_name, model, model_name)
    context_size = meta.context_size or 128
    dataset = austen_contexts("held_out", model.tokenizer, context_size)
    tokens = torch.as_tensor(dataset[:n_contexts]["tokens"])[:, :context_size]
    chunks = []
    for chunk in tokens.split(16):
        _, cache = model.run_with_cache(chunk, names_filter=[meta.hook_name], prepend_bos=False)
        chunks.append(cache[meta.hook_name].to(sae.dtype))
    return _rows_of_contexts(torch.cat(chunks), tokens, special_token_ids(model))


def cache_heldout_rows(sae: SAE[Any], cache_path: str | Path, n_contexts: int) -> HeldoutRows:
    """Rows of the *last* ``n_contexts`` contexts of an activation cache of the SAE's hook (the
    end of a cache is the part a run reading fewer tokens than it holds never trains on)."""
    dataset, info = open_cache(cache_path)
    hook = sae.cfg.metadata.hook_name
    if info.hook_name != hook:
        raise ValueError(
            f"the cache at {cache_path} holds {info.hook_name!r}, the SAE reads {hook!r}"
        )
    start = max(0, len(dataset) - n_contexts)
    window = dataset.select(range(start, len(dataset)))
    acts = torch.as_tensor(window.with_format("torch")[hook]).to(sae.dtype)
    tokens = cached_token_ids(window)
    if info.special_token_ids is None:
        # A cache that does not record its tokenizer's special ids: its contexts start with BOS
        # (SAELens prepends it), so the first token of every context stands for them.
        logger.warning(
            "the cache at %s records no special token ids; leaving out each context's first "
            "token (ids %s) wherever it occurs",
            cache_path,
            sorted(set(tokens[:, 0].tolist())),
        )
        return _rows_of_contexts(acts, tokens, sorted(set(tokens[:, 0].tolist())))
    return _rows_of_contexts(acts, tokens, info.special_token_ids)


def _check_paths(source: Path, output: Path, overwrite: bool) -> None:
    if output.resolve() == source.resolve():
        raise ValueError(f"the output {output} is the input SAE; write the export elsewhere")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is a file; choose another output")
    if output.exists() and any(output.iterdir()):
        if not (output / "cfg.json").is_file():
            raise FileExistsError(
                f"{output} is a folder that holds no SAE; choose an empty or new output"
            )
        if not overwrite:
            raise FileExistsError(f"{output} already holds an SAE; pass --overwrite to replace it")


def _write_atomically(sae: SAE[Any], output: Path) -> None:
    """Save into a sibling temporary folder, then move it into place (replacing ``output``)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        sae.save_model(str(staging))
        move_into_place(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def export_saved_sae(
    path: str | Path,
    output: str | Path,
    *,
    target: ExportTarget = "auto",
    max_explained_variance_change: float = 0.01,
    n_contexts: int = DEFAULT_CONTEXTS,
    activations_path: str | Path | None = None,
    model_path: str | Path | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Load the SAE at ``path``, export it (:func:`sae_variants.export_to_saelens`) on held-out
    rows (:func:`model_heldout_rows`, or :func:`cache_heldout_rows` with ``activations_path``) and
    save the stock SAE to ``output``. Paths are checked before any model loads."""
    source, output = Path(path), Path(output)
    _check_paths(source, output, overwrite)
    sae = load_sae(source)
    rows = (
        cache_heldout_rows(sae, activations_path, n_contexts)
        if activations_path is not None
        else model_heldout_rows(sae, n_contexts, model_path)
    )
    report = export_to_saelens(
        sae,
        rows.activations,
        rows.positions,
        target=target,
        max_explained_variance_change=max_explained_variance_change,
    )
    _write_atomically(report.sae, output)
    return report

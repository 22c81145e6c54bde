"""Evaluate a saved SAE with SAELens's ``run_evals`` on held-out text.

Nothing here recomputes what ``run_evals`` already defines: explained variance, L0/L1, CE loss
score, KL divergence score and the clean/spliced/ablated CE come straight from its output; the
dead and dense fractions are read off its per-feature densities.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sae_lens import SAE, ActivationsStore, HookedSAETransformer
from sae_lens.constants import SAE_WEIGHTS_FILENAME, TRAINER_STATE_FILENAME
from sae_lens.evals import get_eval_everything_config, run_evals
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.training.activation_scaler import ActivationScaler
from safetensors import SafetensorError

import sae_variants  # noqa: F401  (registers this package's architectures with SAELens)
from sae_variants.functional import mean_max_decoder_cosine
from sae_variants.integrations.evaluation.consistency import contextual_consistency
from sae_variants.integrations.evaluation.heldout import (
    HeldoutCodes,
    encode_contexts,
    special_token_ids,
)
from sae_variants.integrations.evaluation.position_metrics import fvu_by_position_range
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.datasets import austen_contexts
from sae_variants.integrations.training.request import OFFLINE_MODELS

CONSISTENCY_CONTEXTS = 64
"""Held-out contexts the contextual-consistency measure uses (``consistency.py``)."""

POSITION_RANGES = 4
"""Equal ranges of the context the per-range FVU is reported for (``position_metrics.py``)."""

DENSE_THRESHOLD = 0.1
"""A feature is *dense* when it fires on more than this fraction of held-out tokens."""


def _refuse_a_run_in_progress(path: Path) -> None:
    # A training checkpoint (SAELens's trainer state beside the weights) or the staging folder
    # of an unfinished run is not a finished SAE: say how to finish it.
    staged = path.name.endswith(".partial") and (path / "checkpoints").is_dir()
    if (path / TRAINER_STATE_FILENAME).is_file() or staged:
        raise ValueError(
            f"{path} is a training checkpoint or an unfinished run, not a finished SAE; "
            f"continue the run with `sae-variants train --resume {path}`"
        )


def _read_cfg(cfg_file: Path) -> dict[str, Any]:
    try:
        saved = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{cfg_file} is not valid JSON ({error})") from error
    if not isinstance(saved, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object, found a {type(saved).__name__}")
    missing = [key for key in ("d_in", "d_sae") if not isinstance(saved.get(key), int)]
    if missing:
        raise ValueError(f"{cfg_file} lacks the integer field(s) {', '.join(missing)}")
    return saved


def _check_weights(sae: SAE[Any], weights_file: Path) -> None:
    bad = [
        name
        for name, tensor in sae.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise ValueError(f"{weights_file} holds NaN/inf values in {', '.join(bad)}")


def check_sae_hook(path: str | Path, hook_name: str, model: Any, model_name: str) -> None:
    """``ValueError`` when the hook a saved SAE's metadata names is not one of ``model``'s."""
    if hook_name not in model.hook_dict:
        raise ValueError(
            f"the SAE in {path} reads hook {hook_name!r}, which {model_name} does not have "
            f"(its cfg.json metadata names the hook; {model_name} has {model.cfg.n_layers} blocks)"
        )


def load_sae(path: str | Path, device: str = "cpu") -> SAE[Any]:
    """``SAE.load_from_disk`` in eval mode, with errors (``ValueError``/``FileNotFoundError``)
    that say what is wrong with ``path``: not a folder, no SAE, a training checkpoint, a
    ``cfg.json`` that is not an SAE config, an unregistered architecture, weights that are
    unreadable, of the wrong shape or not finite."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; a saved SAE is a folder (cfg.json + weights)")
    _refuse_a_run_in_progress(path)
    cfg_file, weights_file = path / "cfg.json", path / SAE_WEIGHTS_FILENAME
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{path} holds no saved SAE (expected {cfg_file.name} and {SAE_WEIGHTS_FILENAME} "
            "as written by `sae-variants train` or SAELens)"
        )
    saved = _read_cfg(cfg_file)
    architecture = saved.get("architecture", "standard")
    if architecture not in SAE_CLASS_REGISTRY:
        needs = (saved.get("metadata") or {}).get("load_with")
        raise ValueError(
            f"the SAE in {path} has architecture {architecture!r}, which is not registered with "
            f"SAELens (registered: {', '.join(sorted(SAE_CLASS_REGISTRY))}); "
            + (
                f"its cfg.json says: {needs}"
                if needs
                else "import the package that defines it before loading"
            )
        )
    if not weights_file.is_file():
        raise FileNotFoundError(f"{path} has a cfg.json but no {SAE_WEIGHTS_FILENAME}")
    try:
        sae = SAE.load_from_disk(str(path), device=device)
    except SafetensorError as error:
        raise ValueError(f"{weights_file} is not a readable safetensors file ({error})") from error
    except (RuntimeError, KeyError, TypeError) as error:
        # load_state_dict's size mismatches and missing keys, a config field of the wrong kind.
        detail = " ".join(str(error).split())[:400]
        raise ValueError(
            f"the SAE in {path} does not load: its weights or cfg.json do not match the "
            f"{architecture!r} architecture ({type(error).__name__}: {detail})"
        ) from error
    _check_weights(sae, weights_file)
    sae.eval()
    return sae


@dataclass
class EvalResult:
    path: str
    architecture: str
    hook_name: str
    model_name: str
    metrics: dict[str, float]
    """The headline figures, flat, in the order the terminal table prints them."""
    run_evals: dict[str, Any]
    """``run_evals``'s own grouped output, unchanged."""


def _flatten(metrics: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for group in metrics.values():
        if isinstance(group, dict):
            flat.update({k: float(v) for k, v in group.items() if isinstance(v, (int, float))})
    return flat


def _encode_heldout(
    sae: SAE[Any], model: HookedSAETransformer, dataset: Dataset, context_size: int, contexts: int
) -> HeldoutCodes:
    """The SAE over the first ``contexts`` tokenized held-out contexts, whole (see heldout_codes.py)."""
    tokens = torch.as_tensor(dataset[:contexts]["tokens"])[:, :context_size]
    return encode_contexts(sae, model, tokens, special_token_ids(model))


def evaluate_sae(
    path: str | Path,
    *,
    model: HookedSAETransformer | None = None,
    dataset: Dataset | str | None = None,
    n_batches: int = 8,
    batch_size_prompts: int = 16,
    device: str = "cpu",
    model_path: str | Path | None = None,
) -> EvalResult:
    """Run SAELens's full eval suite for the SAE at ``path`` on held-out text.

    For SAEs of the embedded model and gemma-3-270m the held-out Austen split (tokenized by the
    model) is the default; for other models pass ``dataset`` (and ``model``, or let it load by its
    metadata name).
    """
    sae = load_sae(path, device=device)
    meta = sae.cfg.metadata
    model_name = meta.model_name or EMBEDDED_MODEL_NAME
    if meta.hook_name is None:
        raise ValueError(
            f"the SAE in {path} records no hook_name in its metadata; cannot evaluate it"
        )
    if model is None:
        model = load_model(model_name, device=device, model_path=model_path)
    check_sae_hook(path, meta.hook_name, model, model_name)
    context_size = meta.context_size or 128
    if dataset is None:
        if model_name not in OFFLINE_MODELS:
            raise ValueError(
                f"pass a held-out dataset to evaluate an SAE of {model_name!r} (the bundled "
                f"held-out Austen text is the default only for {sorted(OFFLINE_MODELS)})"
            )
        # The held-out Austen split, tokenized by the model's own tokenizer.
        dataset = austen_contexts("held_out", model.tokenizer, context_size)
    store = ActivationsStore.from_sae(
        model,
        sae,
        dataset=dataset,
        context_size=context_size,
        streaming=False,
        store_batch_size_prompts=batch_size_prompts,
        n_batches_in_buffer=8,
        train_batch_size_tokens=batch_size_prompts * context_size,
        device=device,
    )
    config = get_eval_everything_config(
        batch_size_prompts=batch_size_prompts,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
    )
    with torch.no_grad():
        grouped, feature_metrics = run_evals(
            sae, store, model, ActivationScaler(), config, exclude_special_tokens=True
        )
    density = torch.as_tensor(feature_metrics["feature_density"], dtype=torch.float64)
    flat = _flatten(grouped)
    metrics = {
        "explained_variance": flat["explained_variance"],
        "l0": flat["l0"],
        "l1": flat["l1"],
        "dead_fraction": float((density == 0).double().mean()),
        "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
        "ce_loss_score": flat["ce_loss_score"],
        "kl_div_score": flat["kl_div_score"],
        "ce_loss_clean": flat["ce_loss_without_sae"],
        "ce_loss_spliced": flat["ce_loss_with_sae"],
        "ce_loss_zero_ablated": flat["ce_loss_with_ablation"],
        "mse": flat["mse"],
        "cossim": flat["cossim"],
        "mean_max_decoder_cosine": float(mean_max_decoder_cosine(sae.W_dec)),
    }
    if isinstance(dataset, Dataset) and "tokens" in dataset.column_names:
        heldout = _encode_heldout(sae, model, dataset, context_size, CONSISTENCY_CONTEXTS)
        consistency = contextual_consistency(heldout.active, heldout.usable)
        metrics.update(
            {
                "contextual_consistency": consistency.ratio,
                "window_jaccard": consistency.within,
                "cross_sequence_jaccard": consistency.across,
            }
        )
        fvus = fvu_by_position_range(
            heldout.activations, heldout.residual, heldout.usable, POSITION_RANGES
        )
        metrics.update({f"fvu_positions_{r}": fvu for r, fvu in enumerate(fvus)})
    nonfinite = [k for k, v in metrics.items() if not math.isfinite(v)]
    if nonfinite:
        raise RuntimeError(f"evaluation of {path} produced non-finite metrics: {nonfinite}")
    return EvalResult(
        path=str(path),
        architecture=sae.cfg.architecture(),
        hook_name=meta.hook_name,
        model_name=model_name,
        metrics=metrics,
        run_evals=grouped,
    )


@torch.no_grad()
def heldout_l0(
    path: str | Path,
    model: HookedSAETransformer | None = None,
    contexts: int = CONSISTENCY_CONTEXTS,
) -> float:
    """Mean number of firing features per non-special token of the first ``contexts`` held-out
    Austen contexts (SAEs of the offline models): the few-second L0 a calibration steers by, on
    the same text ``evaluate_sae`` starts from."""
    sae = load_sae(path)
    meta = sae.cfg.metadata
    model_name = meta.model_name or EMBEDDED_MODEL_NAME
    if model_name not in OFFLINE_MODELS:
        raise ValueError(
            f"heldout_l0 needs an SAE of a model with bundled held-out text "
            f"({sorted(OFFLINE_MODELS)}); {path} is on {meta.model_name!r}"
        )
    model = model if model is not None else load_model(model_name)
    context_size = meta.context_size or 128
    dataset = austen_contexts("held_out", model.tokenizer, context_size)
    heldout = _encode_heldout(sae, model, dataset, context_size, contexts)
    return heldout.mean_l0()


def format_table(result: EvalResult) -> str:
    """A two-column terminal table of the headline metrics."""
    header = f"{result.path}  ({result.architecture} on {result.model_name} @ {result.hook_name})"
    width = max(len(k) for k in result.metrics)
    rows = [f"  {k:<{width}}  {v:>10.4f}" for k, v in result.metrics.items()]
    return "\n".join([header, *rows])

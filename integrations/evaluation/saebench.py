"""SAEBench's core evaluation (``sae_bench.evals.core``) of a saved SAE, offline.

SAEBench's own entry point (``multiple_evals``) loads the model by its official TransformerLens
name and the data by hub name, and skips an SAE whose model or data fails to load (returning an
empty list, without raising). This runs the same per-SAE body with the model and the held-out
text handed over as objects: the SAE loaded in eval mode, ``load_and_format_sae`` (which copies
the metadata SAEBench reads onto the config), an activation store over a tokenized ``Dataset``,
``run_evals`` with every compute flag on (its summary helpers need the feature-wise ones), and
SAEBench's own result file.

SAEBench 0.6.0 is not a dependency: it pins ``numpy<2`` and ``datasets<4`` and pulls a torchvision
that breaks ``import transformers`` beside a CPU torch wheel. Its core evaluation imports nothing
this package lacks but ``pandas``, ``pydantic`` and ``tabulate``, so install it without its
dependencies: ``pip install --no-deps sae-bench==0.6.0 && pip install tabulate pandas pydantic``.

SAEBench 0.6.0's ``explained_variance`` is uncentred (it subtracts the squared mean of the
per-dimension second moments rather than the squared norm of the mean), so on a residual stream
whose mean is large it reads well above SAELens's centred figure; compare SAEBench's
``explained_variance_legacy`` or SAELens's ``explained_variance`` across tools, not it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sae_lens import ActivationsStore, HookedSAETransformer

from sae_variants.integrations.evaluation.evaluate import load_sae
from sae_variants.integrations.evaluation.heldout import special_token_ids
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.datasets import austen_contexts
from sae_variants.integrations.training.request import OFFLINE_MODELS

HEADLINE = (
    ("reconstruction_quality", "explained_variance"),
    ("reconstruction_quality", "explained_variance_legacy"),
    ("model_performance_preservation", "ce_loss_score"),
    ("model_behavior_preservation", "kl_div_score"),
    ("sparsity", "l0"),
    ("reconstruction_quality", "cossim"),
    ("shrinkage", "l2_ratio"),
    ("misc_metrics", "frac_alive"),
)
"""The figures :func:`saebench_core_eval` returns, as SAEBench names them (group, metric)."""


class MissingSAEBenchError(ImportError):
    """sae-bench is not installed."""


def _sae_bench() -> Any:
    try:
        from sae_bench.evals.core import main as core
    except ImportError as error:
        raise MissingSAEBenchError(
            "SAEBench is not installed; install its core evaluation without its pins: "
            "pip install --no-deps sae-bench==0.6.0 && pip install tabulate pandas pydantic "
            f"({error})"
        ) from error
    return core


@dataclass
class SAEBenchResult:
    metrics: dict[str, float]
    """The :data:`HEADLINE` figures, by metric name."""
    result_file: Path
    """SAEBench's own JSON result (every metric and the feature-wise statistics)."""


def saebench_core_eval(
    path: str | Path,
    output_dir: str | Path,
    *,
    model: HookedSAETransformer | None = None,
    dataset: Dataset | None = None,
    batch_size_prompts: int = 16,
    reconstruction_batches: int = 12,
    sparsity_batches: int = 12,
    device: str = "cpu",
) -> SAEBenchResult:
    """SAEBench's core evaluation of the SAE saved at ``path``; its result JSON goes to
    ``output_dir``. ``dataset``: tokenized held-out contexts (a ``tokens`` column), by default
    the bundled held-out Austen text for the offline models.

    SAEBench's store neither rewinds between its reconstruction and sparsity passes nor says when
    it wraps around, so both passes together must fit in the dataset: that is checked here.
    """
    core = _sae_bench()
    from sae_bench.sae_bench_utils import get_eval_uuid, get_sae_lens_version
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath, load_and_format_sae

    sae = load_sae(path, device=device)  # eval mode: SAEBench never calls .eval()
    meta = sae.cfg.metadata
    model_name = meta.model_name or EMBEDDED_MODEL_NAME
    context_size = meta.context_size or 128
    if model is None:
        model = load_model(model_name, device=device)
    if dataset is None:
        if model_name not in OFFLINE_MODELS:
            raise ValueError(
                f"pass a tokenized held-out dataset for an SAE of {model_name!r} (held-out text is "
                f"bundled for {sorted(OFFLINE_MODELS)})"
            )
        dataset = austen_contexts("held_out", model.tokenizer, context_size)
    needed = (reconstruction_batches + sparsity_batches) * batch_size_prompts
    if needed > len(dataset):
        raise ValueError(
            f"SAEBench's two passes read {needed} contexts "
            f"(({reconstruction_batches} + {sparsity_batches}) batches x {batch_size_prompts}) "
            f"but the dataset holds {len(dataset)}, and its store would silently wrap around; "
            "use fewer batches"
        )
    _, sae, _ = load_and_format_sae("sae_variants", sae, device)
    cfg = core.CoreEvalConfig(
        model_name=model_name,
        batch_size_prompts=batch_size_prompts,
        n_eval_reconstruction_batches=reconstruction_batches,
        n_eval_sparsity_variance_batches=sparsity_batches,
        dataset=meta.dataset_path or "held-out",  # a label: the data is handed over below
        context_size=context_size,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        exclude_special_tokens_from_reconstruction=True,
        llm_dtype="float32",
    )
    store = ActivationsStore.from_sae(
        model, sae, dataset=dataset, context_size=context_size, streaming=False, device=device
    )
    store.shuffle_input_dataset(seed=42)  # as multiple_evals does
    with torch.no_grad():
        scalar, feature = core.run_evals(
            sae=sae,
            activation_store=store,
            model=model,
            eval_config=cfg,
            ignore_tokens=set(special_token_ids(model)),
        )
    result = core.nested_dict()
    name = Path(path).resolve().name
    result["unique_id"] = f"sae_variants_{name}"
    result["sae_set"] = "sae_variants"
    result["sae_id"] = name
    result["eval_cfg"] = cfg
    result["metrics"] = scalar
    result["metrics"]["misc_metrics"] = core.calculate_misc_metrics(feature)
    result["feature_metrics"] = feature
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # SAEBench's own version would be `git rev-parse HEAD` of the working directory, which from
    # a checkout of this repository is our commit: record it as unknown instead.
    json_path = core.save_single_eval_result(
        core.replace_nans_with_negative_one(result),
        get_eval_uuid(),
        get_sae_lens_version(),
        "unknown",
        get_results_filepath(str(output_dir), "sae_variants", name),
        sae,
    )
    metrics = {key: float(result["metrics"][group][key]) for group, key in HEADLINE}
    return SAEBenchResult(metrics, Path(json_path))

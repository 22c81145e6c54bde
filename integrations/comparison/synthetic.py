"""Part 2 of the comparison: recovery of known features from SAELens's synthetic generator.

The data is ``sae_lens.synthetic``'s: a :class:`FeatureDictionary` of unit directions and an
:class:`ActivationGenerator` of Zipfian firings, by default with SAELens's feature hierarchy and
low-rank firing correlation (settings in
:class:`~sae_variants.integrations.comparison.settings.SyntheticSettings`). Each architecture
trains with SAELens's own ``train_toy_sae`` on the same stream (re-seeded per run), its knob
calibrated to the generator's true L0, and is scored with ``eval_sae_on_synthetic_data``: MCC
(Hungarian-matched decoder/feature cosine), uniqueness, and the F1 of each latent as a detector of
its best-matching feature.

Architectures that need sequence structure (positions, same-sequence pairs) are reported as not
applicable: the generator's samples are independent, with no sequence to take them from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.synthetic import (
    ActivationGenerator,
    FeatureDictionary,
    HierarchyConfig,
    SyntheticActivationIterator,
    eval_sae_on_synthetic_data,
    generate_hierarchy,
    generate_random_low_rank_correlation_matrix,
    zipfian_firing_probabilities,
)
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from sae_variants.architectures.base import RunInfo
from sae_variants.integrations.comparison.matched_l0 import Attempt, calibrate
from sae_variants.integrations.comparison.result_cache import load_result, store_result
from sae_variants.integrations.comparison.settings import ARCHITECTURE_PLANS, SyntheticSettings
from sae_variants.integrations.training.request import (
    build_sae_config,
    config_fields,
    training_config_class,
)
from sae_variants.integrations.training.runner import attach_to_trainer, bind_sae_config
from sae_variants.token_context import needs_sequence_pipeline

logger = logging.getLogger(__name__)

RESULT_FILENAME = "synthetic_result.json"
NOT_APPLICABLE = "needs sequence structure; the synthetic samples are independent"
TOLERANCE = 0.10


@dataclass
class SyntheticRun:
    architecture: str
    knob: str
    knob_value: float | None
    true_l0: float
    metrics: dict[str, float]
    """sae_l0, explained_variance, mcc, uniqueness, f1_score, precision, recall, dead_latents, shrinkage."""
    attempts: list[dict[str, float]]
    skipped: str | None = None
    matched: bool = False
    """Achieved L0 within :data:`TOLERANCE` of the true L0."""


def ground_truth(settings: SyntheticSettings) -> tuple[FeatureDictionary, ActivationGenerator]:
    """The feature dictionary and firing generator every SAE of the comparison sees: SAELens's
    components, with its hierarchy (probabilities compensated, as ``SyntheticModel`` does) and
    low-rank correlation when the settings ask for them."""
    torch.manual_seed(settings.seed)
    features = FeatureDictionary(settings.num_features, settings.hidden_dim, seed=settings.seed)
    probabilities = zipfian_firing_probabilities(
        settings.num_features, min_prob=settings.min_firing, max_prob=settings.max_firing
    )
    modifier = None
    if settings.hierarchy_roots > 0:
        hierarchy = generate_hierarchy(
            settings.num_features,
            HierarchyConfig(
                total_root_nodes=settings.hierarchy_roots,
                branching_factor=settings.hierarchy_branching,
                max_depth=settings.hierarchy_depth,
                mutually_exclusive_portion=settings.mutually_exclusive_portion,
                compensate_probabilities=True,
            ),
            seed=settings.seed + 3,
        )
        compensated = probabilities * hierarchy.compute_probability_correction_factors(
            probabilities
        )
        clamped = int((compensated >= 1.0).sum())
        if clamped:
            logger.warning(
                "hierarchy compensation puts %d of %d features at firing probability 1 (they "
                "fire whenever their parent does)",
                clamped,
                settings.num_features,
            )
        probabilities = compensated.clamp(max=1.0)
        modifier = hierarchy.modifier
    correlation = None
    if settings.correlation_rank > 0:
        correlation = generate_random_low_rank_correlation_matrix(
            settings.num_features,
            rank=settings.correlation_rank,
            correlation_scale=settings.correlation_scale,
            seed=settings.seed + 4,
        )
    generator = ActivationGenerator(
        settings.num_features,
        probabilities,
        std_firing_magnitudes=settings.magnitude_std,
        mean_firing_magnitudes=settings.magnitude,
        modify_activations=modifier,
        correlation_matrix=correlation,
    )
    return features, generator


TRUE_L0_SAMPLES = 200_000


def true_l0(settings: SyntheticSettings) -> float:
    """Mean number of features firing per sample: the sum of the firing probabilities for
    independent flat features, measured on :data:`TRUE_L0_SAMPLES` samples otherwise (a hierarchy
    silences children of silent parents; correlation leaves the mean alone)."""
    if not settings.structured:
        return float(
            zipfian_firing_probabilities(
                settings.num_features, min_prob=settings.min_firing, max_prob=settings.max_firing
            ).sum()
        )
    _, generator = ground_truth(settings)
    torch.manual_seed(settings.seed + 5)
    with torch.no_grad():
        fired = sum(
            float((generator.sample(10_000) != 0).sum()) for _ in range(TRUE_L0_SAMPLES // 10_000)
        )
    return fired / TRUE_L0_SAMPLES


def synthetic_run(settings: SyntheticSettings) -> RunInfo:
    """The synthetic runs' facts: constant learning rate (no warm-up); the samples have no
    context, so the context size is 1."""
    return RunInfo(
        total_steps=settings.training_samples // settings.batch_size,
        lr_warm_up_steps=0,
        context_size=1,
    )


def synthetic_config(
    architecture: str, options: dict[str, Any], settings: SyntheticSettings
) -> TrainingSAEConfig:
    """The bound training config of ``architecture`` on the synthetic data."""
    cfg = build_sae_config(
        architecture, settings.hidden_dim, settings.num_features, options, "none"
    )
    return bind_sae_config(cfg, synthetic_run(settings))


def train_on_synthetic(
    sae: TrainingSAE[Any],
    features: FeatureDictionary,
    generator: ActivationGenerator,
    settings: SyntheticSettings,
) -> None:
    """SAELens's trainer on the synthetic stream at a constant learning rate (what
    ``sae_lens.synthetic.train_toy_sae`` runs), built here so the SAE can be bound to the
    trainer's optimizer, which ``train_toy_sae`` keeps to itself."""
    steps = settings.training_samples // settings.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * settings.batch_size,
        train_batch_size_samples=settings.batch_size,
        lr=settings.lr,
        lr_end=settings.lr,
        lr_scheduler_name="constant",
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )
    features.eval()
    data = SyntheticActivationIterator(
        feature_dict=features, activations_generator=generator, batch_size=settings.batch_size
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
    attach_to_trainer(trainer)
    trainer.fit()


def _train_and_score(
    architecture: str, options: dict[str, Any], settings: SyntheticSettings
) -> dict[str, float]:
    features, generator = ground_truth(settings)
    cfg = synthetic_config(architecture, options, settings)
    torch.manual_seed(settings.seed + 1)
    sae = SAE_TRAINING_CLASS_REGISTRY[architecture][0](cfg)
    train_on_synthetic(sae, features, generator, settings)
    torch.manual_seed(settings.seed + 2)  # the same evaluation samples for every SAE
    result = eval_sae_on_synthetic_data(
        sae,
        features,
        generator,
        num_samples=settings.eval_samples,
        batch_size=min(settings.eval_samples, 10_000),
    )
    flat = result.to_dict()
    classification = flat.pop("classification")
    return {
        **{k: float(v) for k, v in flat.items()},
        **{k: float(v) for k, v in classification.items()},
    }


def _cached_score(
    architecture: str, options: dict[str, Any], settings: SyntheticSettings, folder: Path
) -> dict[str, float]:
    """``_train_and_score``, read back when the same run finished before (a resumed comparison)."""
    cfg = synthetic_config(architecture, options, settings)
    key = {
        "architecture": architecture,
        "config": config_fields(cfg),
        "settings": dataclasses.asdict(settings),
    }
    stored = load_result(folder / RESULT_FILENAME, key)
    if stored is not None:
        return stored
    metrics = _train_and_score(architecture, options, settings)
    store_result(folder / RESULT_FILENAME, key, metrics)
    return metrics


def run_synthetic(
    architectures: tuple[str, ...],
    settings: SyntheticSettings,
    work_dir: Path,
    seeded: Mapping[str, Sequence[Attempt]] | None = None,
) -> list[SyntheticRun]:
    """Every architecture calibrated to the true L0 on the synthetic data, and scored;
    ``seeded``: earlier attempts per architecture that each calibration starts from."""
    seeded = seeded or {}
    target = true_l0(settings)
    runs: list[SyntheticRun] = []
    for architecture in tqdm(architectures, desc="synthetic features", unit="SAE"):
        plan = ARCHITECTURE_PLANS[architecture]
        if needs_sequence_pipeline(training_config_class(architecture)):
            runs.append(
                SyntheticRun(architecture, plan.knob, None, target, {}, [], skipped=NOT_APPLICABLE)
            )
            continue
        base = plan.run_options(
            settings.num_features, settings.training_samples // settings.batch_size
        )

        def measure(
            value: float, plan=plan, base=base, architecture=architecture
        ) -> tuple[float, dict[str, float]]:
            knob_value: float | int = int(value) if plan.integer_knob else value
            folder = work_dir / "synthetic" / architecture / f"{plan.knob}={knob_value:.5g}"
            metrics = _cached_score(architecture, {**base, plan.knob: knob_value}, settings, folder)
            return metrics["sae_l0"], metrics

        # L1-style knobs start at their embedded-model value: the synthetic data's L0-vs-knob
        # curve differs, and the calibration moves from there.
        first = plan.first_value(target) if plan.integer_knob else plan.value_at_reference_l0
        attempts, metrics = calibrate(
            measure,
            target,
            initial_value=first,
            tolerance=TOLERANCE,
            max_attempts=settings.max_attempts,
            history=seeded.get(architecture, ()),
            integer_knob=plan.integer_knob,
            l0_rises_with_knob=plan.l0_rises_with_knob,
            prior_slope=plan.l0_slope,
        )
        runs.append(
            SyntheticRun(
                architecture,
                plan.knob,
                attempts[-1].knob_value,
                target,
                metrics,
                [{"knob_value": a.knob_value, "l0": a.l0} for a in attempts],
                matched=abs(metrics["sae_l0"] / target - 1.0) <= TOLERANCE,
            )
        )
    return runs

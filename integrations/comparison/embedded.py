"""Part 1 of the comparison: every architecture on a language model (the embedded one by default,
or gemma-3-270m), at each target L0.

Each (architecture, target) pair is a :func:`~sae_variants.integrations.comparison.matched_l0.train_at_target_l0`
calibration in ``work_dir/<embedded or model name>/<architecture>/<knob>=<value>``: finished attempts and their
evaluations are reused, so an interrupted comparison resumes where it stopped. In a sweep the
attempts for one target seed the first guess for the next.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sae_lens import HookedSAETransformer
from tqdm.auto import tqdm

from sae_variants.integrations.comparison.matched_l0 import (
    Attempt,
    train_at_target_l0,
    training_seconds,
)
from sae_variants.integrations.comparison.settings import ARCHITECTURE_PLANS, ComparisonSettings
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.request import TrainRequest

QUCL_CURRICULUM_FILENAME = "qucl_curriculum.json"


@dataclass
class EmbeddedRun:
    """One architecture calibrated to one target L0 and evaluated on held-out text."""

    architecture: str
    target_l0: float
    knob: str
    knob_value: float
    matched: bool
    """Achieved L0 within the tolerance of the target."""
    metrics: dict[str, float]
    """``sae-variants evaluate``'s metrics, plus architecture-specific ones (QuCL's final rank)."""
    path: str
    training_seconds: float | None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _architecture_metrics(architecture: str, path: Path, d_in: int) -> dict[str, float]:
    """Figures a variant writes beside its SAE that the evaluation does not compute."""
    if architecture == "qucl":
        curriculum = json.loads((path / QUCL_CURRICULUM_FILENAME).read_text())
        return {
            "final_rank": float(curriculum["final_rank"]),
            "final_rank_fraction": curriculum["final_rank"] / d_in,
        }
    return {}


def model_dir(settings: ComparisonSettings) -> str:
    """The part of ``work_dir`` that holds one model's runs (``embedded`` for the embedded model)."""
    return "embedded" if settings.model_name == EMBEDDED_MODEL_NAME else settings.model_name


def train_request(
    settings: ComparisonSettings, architecture: str, work_dir: Path, d_sae: int
) -> TrainRequest:
    """The training request every attempt of ``architecture`` starts from (its knob is added per attempt)."""
    plan = ARCHITECTURE_PLANS[architecture]
    return TrainRequest(
        architecture=architecture,
        model_name=settings.model_name,
        layer=settings.layer,
        activations_path=settings.activations_path,
        output_path=work_dir / model_dir(settings) / architecture,
        sae_options=plan.run_options(d_sae, settings.total_steps),
        training_tokens=settings.training_tokens,
        expansion_factor=settings.expansion_factor,
        d_sae=settings.d_sae,
        train_batch_size_tokens=settings.train_batch_size_tokens,
    )


def run_embedded(
    settings: ComparisonSettings,
    work_dir: Path,
    model: HookedSAETransformer,
    d_in: int,
    seeded: Mapping[str, Sequence[Attempt]] | None = None,
) -> list[EmbeddedRun]:
    """Train and evaluate every architecture at every target L0 (reusing finished work);
    ``d_in``: the width of the hook every request trains on; ``seeded``: earlier attempts per
    architecture that each calibration starts from."""
    d_sae = settings.d_sae or settings.expansion_factor * d_in
    runs: list[EmbeddedRun] = []
    pairs = [(a, t) for a in settings.architectures for t in settings.target_l0s]
    seeded = seeded or {}
    history: dict[str, list[Attempt]] = {a: list(seeded.get(a, ())) for a in settings.architectures}
    for architecture, target in tqdm(pairs, desc=settings.model_name, unit="SAE"):
        plan = ARCHITECTURE_PLANS[architecture]
        matched = train_at_target_l0(
            train_request(settings, architecture, work_dir, d_sae),
            target,
            knob=plan.knob,
            initial_value=plan.first_value(target),
            tolerance=settings.tolerance,
            max_attempts=settings.max_attempts,
            model=model,
            eval_batches=settings.eval_batches,
            history=history[architecture],
            integer_knob=plan.integer_knob,
            l0_rises_with_knob=plan.l0_rises_with_knob,
            prior_slope=plan.l0_slope,
        )
        history[architecture].extend(matched.attempts)
        path = Path(matched.result.path)
        runs.append(
            EmbeddedRun(
                architecture=architecture,
                target_l0=target,
                knob=plan.knob,
                knob_value=matched.attempts[-1].knob_value,
                matched=matched.matched,
                metrics={
                    **matched.result.metrics,
                    **_architecture_metrics(architecture, path, d_in),
                },
                path=str(path),
                training_seconds=training_seconds(path),
                attempts=[asdict(a) for a in matched.attempts],
            )
        )
    return runs

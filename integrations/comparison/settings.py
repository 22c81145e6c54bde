"""What `sae-variants compare` runs: the architectures, their sparsity knobs, and the budgets.

Every architecture is trained on the same hook with the same token budget and training recipe
(the model's default preset: ``demo`` for the embedded model, ``gemma3-cpu`` for gemma-3-270m);
only its sparsity knob moves, calibrated to each target L0. The first
value tried for a knob comes from :data:`ARCHITECTURE_PLANS` (measured on the embedded model at
L0 ~ 32) scaled as ``value * 32 / target``; TopK-style ``k`` is set to the target directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.presets import (
    OFFLINE_MODELS,
    default_preset,
    training_preset,
)

REFERENCE_L0 = 32.0
"""The L0 at which :attr:`ArchitecturePlan.value_at_reference_l0` was measured."""


@dataclass(frozen=True)
class ArchitecturePlan:
    """How one architecture enters the comparison."""

    architecture: str
    source: str
    """Where it comes from: ``SAELens`` or the seed paper's number."""
    knob: str
    """The config field that sets sparsity, calibrated to each target L0."""
    value_at_reference_l0: float
    integer_knob: bool = False
    l0_rises_with_knob: bool = False
    """True for ``k`` (L0 grows with it), False for L1-style weights (L0 falls)."""
    l0_slope: float = 1.0
    """Prior ``s`` of ``L0 ~ knob^-s`` (measured on the embedded model), until the calibration
    measures its own."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Fixed hyperparameters (besides the knob) for every run of this architecture."""
    l1_warm_up: bool = True
    """Ramp the L1 coefficient up over the first :data:`L1_WARM_UP_STEPS` steps (at most a fifth
    of the run), as the demo does; TopK-style architectures have no L1 term."""
    verdict: str = ""
    """What the variant is good for and where it is not, as the comparison measured it (the
    README's summary table shows it beside the figures; empty for SAELens's baselines)."""

    def first_value(self, target_l0: float) -> float:
        if self.integer_knob:
            return float(round(target_l0))
        return self.value_at_reference_l0 * (REFERENCE_L0 / target_l0) ** (1.0 / self.l0_slope)

    def run_options(self, d_sae: int, total_steps: int) -> dict[str, Any]:
        options = dict(self.options)
        if self.l1_warm_up:
            options["l1_warm_up_steps"] = min(L1_WARM_UP_STEPS, total_steps // 5)
        if self.architecture == "matryoshka_batchtopk":
            # Nested prefixes of 1/8, 1/4, 1/2 and all of the dictionary.
            options["matryoshka_widths"] = [d_sae // 8, d_sae // 4, d_sae // 2, d_sae]
        return options


L1_WARM_UP_STEPS = 100

ARCHITECTURE_PLANS: dict[str, ArchitecturePlan] = {
    plan.architecture: plan
    for plan in (
        ArchitecturePlan("standard", "SAELens", "l1_coefficient", 1.0),
        ArchitecturePlan(
            "topk",
            "SAELens",
            "k",
            REFERENCE_L0,
            integer_knob=True,
            l0_rises_with_knob=True,
            l1_warm_up=False,
        ),
        ArchitecturePlan(
            "matryoshka_batchtopk",
            "SAELens",
            "k",
            REFERENCE_L0,
            integer_knob=True,
            l0_rises_with_knob=True,
            l1_warm_up=False,
        ),
        ArchitecturePlan(
            "cubic_ortho",
            "paper 002",
            "l1_coefficient",
            0.7,
            verdict="a less redundant decoder at equal or better quality; leaves many features dead",
        ),
        ArchitecturePlan(
            "qucl",
            "paper 000",
            "l1_coefficient",
            2.0,
            verdict="a low-rank quantized encoder; pays for it in reconstruction and feature recovery",
        ),
        # Reactivation every 100 steps: the spec's 1000-step window is longer than these runs.
        ArchitecturePlan(
            "multiscale_norm",
            "paper 001",
            "l1_coefficient",
            2.5,
            l0_slope=0.63,
            options={"dead_window_steps": 100},
            verdict="quality on a par with standard; its dead-feature claim does not hold at L0 32",
        ),
        ArchitecturePlan(
            "seq_contrastive",
            "paper 003",
            "l1_coefficient",
            0.8,
            verdict="better reconstruction; its consistency claim fails on the embedded model, "
            "whose activations carry little context signal",
        ),
        ArchitecturePlan(
            "position_aware",
            "paper 004",
            "l1_coefficient",
            0.9,
            verdict="better reconstruction in every quarter of the context, but nothing "
            "position-specific: the base without adapters does better still",
        ),
    )
}
ALL_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURE_PLANS)


@dataclass(frozen=True)
class SyntheticSettings:
    """The ground-truth setting: SAELens's synthetic generator at a CPU-sized scale.

    ``num_features`` unit feature directions (orthogonalized as far as ``hidden_dim`` allows) fire
    with Zipfian probabilities between ``min_firing`` and ``max_firing`` and magnitudes
    ``N(magnitude, magnitude_std)``; the magnitude puts activation norms near ``sqrt(hidden_dim)``,
    the scale the language models' activations are normalized to, so the sparsity knobs live in
    the same range. The default is the structure of SAELens's SynthSAEBench-16k (16,384 features
    in 768 dimensions) scaled to a CPU budget: 1,024 features in 128 dimensions (8x overcomplete),
    a forest of feature hierarchies (64 parents with 2-4 children each; a child fires only when
    its parent does; 30% of sibling groups mutually exclusive; probabilities compensated so the
    hierarchy does not starve the children) and a low-rank correlation between firings. ``hierarchy_roots=0`` and ``correlation_rank=0`` give
    independent flat features (the setting of earlier reports: 256 in 64 dimensions). Each SAE has
    ``num_features`` latents and is calibrated to the true L0, measured on samples.
    """

    num_features: int = 1024
    hidden_dim: int = 128
    min_firing: float = 0.005
    max_firing: float = 0.3
    magnitude: float = 4.0
    magnitude_std: float = 0.5
    hierarchy_roots: int = 64
    """Trees of SAELens's ``generate_hierarchy`` (0: no hierarchy)."""
    hierarchy_branching: tuple[int, int] = (2, 4)
    hierarchy_depth: int = 1
    """One level of children: with Zipfian probabilities a second level's compensated
    probabilities exceed 1 for a fifth of the features (they would fire whenever their parent
    does); one level clamps 28 of 1,024."""
    mutually_exclusive_portion: float = 0.3
    correlation_rank: int = 16
    """Rank of SAELens's low-rank firing correlation (0: independent firings)."""
    correlation_scale: float = 0.075
    training_samples: int = 2_000_000
    batch_size: int = 1024
    lr: float = 3e-3
    eval_samples: int = 100_000
    max_attempts: int = 4
    seed: int = 0

    @property
    def structured(self) -> bool:
        return self.hierarchy_roots > 0 or self.correlation_rank > 0


FLAT_SYNTHETIC = dict(
    num_features=256,
    hidden_dim=64,
    min_firing=0.01,
    max_firing=0.3,
    hierarchy_roots=0,
    correlation_rank=0,
)
"""The earlier, easy ground truth: 256 independent flat features in 64 dimensions."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """Training-step timing against SAELens ``standard`` (the shapes the issues fix)."""

    d_in: int = 256
    d_sae: int = 4096
    batch_size: int = 4096
    repeats: int = 5
    steps: int = 3
    memory: bool = True
    pipeline: bool = True
    """Also time the sequence-aware pipeline against SAELens's store (the data path of the sequence-aware variants)."""


def batch_tokens_for(model_name: str, train_batch_size_tokens: int | None) -> int:
    """A comparison's training batch: the one it names, else its model's default recipe's."""
    if train_batch_size_tokens is not None:
        return train_batch_size_tokens
    return training_preset(default_preset(model_name)).train_batch_size_tokens


@dataclass(frozen=True)
class ComparisonSettings:
    """One comparison: which architectures, at which L0s, with which budgets."""

    architectures: tuple[str, ...] = ALL_ARCHITECTURES
    target_l0s: tuple[float, ...] = (REFERENCE_L0,)
    training_tokens: int = 1_000_000
    expansion_factor: int = 8
    d_sae: int | None = None
    """Dictionary width; None means ``expansion_factor * d_in``."""
    train_batch_size_tokens: int | None = None
    """None: the model's default recipe's (``demo``: 4096, ``gemma3-cpu``: 2048)."""
    model_name: str = EMBEDDED_MODEL_NAME
    """One of the models that run offline with held-out text (the embedded model, gemma-3-270m)."""
    layer: int | None = None
    """Block whose ``resid_post`` every SAE trains on; None: the middle block (or the cache's hook)."""
    activations_path: str | None = None
    """An activation cache (``sae-variants cache``) every SAE trains from."""
    eval_batches: int = 8
    max_attempts: int = 3
    tolerance: float = 0.10
    calibration_from: str | None = None
    """An earlier comparison's ``report.json`` whose recorded attempts each calibration starts
    from (see ``calibration_seed.py``); None starts from the plans' first values."""
    synthetic: SyntheticSettings | None = field(default_factory=SyntheticSettings)
    """None skips the ground-truth part."""
    benchmark: BenchmarkSettings | None = field(default_factory=BenchmarkSettings)
    """None skips the performance table."""
    name: str = "full"

    @property
    def batch_tokens(self) -> int:
        return batch_tokens_for(self.model_name, self.train_batch_size_tokens)

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_tokens

    def __post_init__(self) -> None:
        unknown = [a for a in self.architectures if a not in ARCHITECTURE_PLANS]
        if unknown:
            raise ValueError(
                f"no comparison plan for {unknown}; known: {', '.join(ARCHITECTURE_PLANS)}"
            )
        if "standard" not in self.architectures:
            raise ValueError(
                "the comparison needs 'standard': every variant's claim is measured against it"
            )
        if not self.target_l0s or any(t <= 0 for t in self.target_l0s):
            raise ValueError(f"target_l0s must be positive numbers, got {self.target_l0s}")
        if self.training_tokens <= 0 or self.eval_batches <= 0 or self.max_attempts <= 0:
            raise ValueError("training_tokens, eval_batches and max_attempts must be positive")
        if self.model_name not in OFFLINE_MODELS:
            raise ValueError(
                f"the comparison evaluates on the bundled held-out text, which is tokenized for "
                f"{sorted(OFFLINE_MODELS)}; got model {self.model_name!r}"
            )
        if self.d_sae is not None and self.d_sae <= 0:
            raise ValueError(f"d_sae must be positive, got {self.d_sae}")


QUICK = dict(
    training_tokens=200_000,
    train_batch_size_tokens=2048,
    eval_batches=2,
    max_attempts=1,
    name="quick",
    synthetic=SyntheticSettings(training_samples=400_000, eval_samples=20_000, max_attempts=1),
    benchmark=BenchmarkSettings(
        d_sae=1024, batch_size=1024, repeats=2, steps=2, memory=False, pipeline=False
    ),
)
"""``--quick``: one attempt per architecture (achieved L0 reported, no re-calibration), small
budgets everywhere; a smoke run of the whole pipeline in under 10 minutes, not evidence."""

SWEEP_L0S = (16.0, 32.0, 64.0)
"""``--sweep``: the three target L0s of the Pareto curves."""

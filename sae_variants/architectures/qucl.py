"""QuCL-SAE: quantized Johnson-Lindenstrauss curriculum SAE (seed 000).

Paper: seed 000; the algorithm with its resolutions is ``docs/spec.md`` §2, and the measurements
are in ``docs/variants/qucl.md``.

    u = (x - b_dec) P[:, :r]            P ~ N(0, 1/d_in), frozen; r = the curriculum's rank
    q = Q4(u)                           per-token 4-bit min-max fake quantization, straight-through
    f = ReLU(pyramid(q) W_r + b_enc)    dictionary block G_sigma reads q[:, :floor(sigma r)]
    x^ = f W_dec + b_dec                unit-norm decoder rows
    L = sum_j w_j (x_j - x^_j)^2 + lambda0 sigmoid(10 FVU) sum_i f_i + alpha InfoNCE(f)

The rank moves between 10% and 90% of ``min(d_in, d_sae)``: every 100 steps it grows when the
windowed fraction of variance unexplained (FVU) exceeds a threshold set from the activations'
diversity over the first 50 batches, and shrinks when the FVU is below half of it. All of that
state is in buffers, so it is checkpointed and resumed with the weights; in eval mode nothing
moves and every token is encoded on its own.

The trained SAE is saved as architecture ``"qucl"`` (load it with ``SAE.load_from_disk`` after
``import sae_variants``), or exported to SAELens's ``standard`` with :func:`sae_variants.saelens_export.export_to_saelens`,
which measures what dropping the quantizer costs and refuses beyond a tolerance.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from sae_lens.saes.sae import (
    SAEConfig,
    TrainCoefficientConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import Tensor, nn
from typing_extensions import override

from sae_variants.architectures.base import (
    ArchitectureFields,
    VariantModule,
    VariantSAE,
    VariantSAEConfig,
    VariantTrainingSAE,
    VariantTrainingSAEConfig,
)
from sae_variants.architectures.qucl_functional import (
    RankSchedule,
    batch_diversity,
    code_uniformity_infonce,
    diversity_from_sums,
    diversity_sums,
    effective_encoder,
    fake_quantize,
    feature_importance_weights,
    importance_sums,
    importance_weights_from_sums,
    jl_projection,
    next_rank,
    pyramid_blocks,
    pyramid_pre_activations,
    rank_schedule,
    scale_ranks,
)
from sae_variants.functional import (
    fraction_of_variance_unexplained,
    fvu_from_sums,
    unit_norm_rows,
    variance_sums,
)
from sae_variants.replicas import SINGLE, Replicas, replicas_of
from sae_variants.validation import require_fields


@dataclass(kw_only=True)
class QuCLArchitectureFields(ArchitectureFields):
    """Fields the inference SAE needs (shared by the inference and training configs)."""

    architecture_name: ClassVar[str] = "qucl"

    quantization_bits: int = 4
    """Bits of the fake quantizer on the projected activations (paper: 4, i.e. 16 levels)."""
    max_rank_fraction: float = 0.9
    """Largest rank, as a fraction of ``min(d_in, d_sae)``; sizes ``W_r`` (paper: 0.9)."""
    multiscale: bool = True
    """Split the dictionary into three blocks reading rank prefixes of 100%, 50% and 25% (B2).
    False: every feature reads the full current rank (the paper's run 7 ablation)."""
    projection_seed: int = 0
    """Seed of the frozen JL projection (it is also saved with the weights)."""

    @override
    def validate_architecture(self) -> None:
        if not 1 <= self.quantization_bits <= 16:
            raise ValueError(f"quantization_bits must be in [1, 16], got {self.quantization_bits}")
        if not 0.0 < self.max_rank_fraction <= 1.0:
            raise ValueError(f"max_rank_fraction must be in (0, 1], got {self.max_rank_fraction}")


@dataclass
class QuCLSAEConfig(VariantSAEConfig, QuCLArchitectureFields):
    """Inference configuration of a trained QuCL SAE."""


@dataclass
class QuCLTrainingSAEConfig(VariantTrainingSAEConfig, QuCLArchitectureFields):
    """Training configuration of QuCL-SAE; every default is the spec's resolution of the paper."""

    inference_config_class: ClassVar[type[SAEConfig]] = QuCLSAEConfig

    adaptive_sparsity: bool = True
    """lambda_t = lambda0 * sigmoid(slope * windowed FVU) (eq. 6, on FVU: docs/spec.md §2 d8); False: lambda0."""
    sparsity_slope: float = 10.0
    """The slope of that sigmoid (paper: 10, > 0)."""
    min_rank_fraction: float = 0.1
    """Smallest rank, as a fraction of ``min(d_in, d_sae)`` (paper: 0.1)."""
    initial_rank_fraction: float = 0.25
    """Starting rank (the paper's code: 0.25); the fixed rank when ``dynamic_rank`` is off."""
    rank_grow_fraction: float = 0.05
    """Rank added when reconstruction is worse than the threshold (code: +5% of d_ref)."""
    rank_shrink_fraction: float = 0.02
    """Rank removed when reconstruction is better than ``shrink_ratio`` x threshold (code: 2%)."""
    shrink_ratio: float = 0.5
    """The curriculum shrinks the rank when the windowed FVU is below this times the threshold."""
    dynamic_rank: bool = True
    """Run the rank curriculum (B5); False keeps the initial rank (the paper's "+ Curriculum" row)."""
    curriculum_window: int = 100
    """Steps of FVU averaged for each curriculum decision (code: 100)."""
    curriculum_interval: int = 100
    """Steps between curriculum decisions (docs/spec.md §2 d15: 100, so the encoder adapts in between)."""
    diversity_init: bool = True
    """Set the threshold from activation diversity over the first ``diversity_batches`` (eq. 4);
    False: use ``default_threshold`` from the start."""
    diversity_batches: int = 50
    """Batches averaged for the diversity threshold (paper: 50)."""
    threshold_min: float = 0.05
    """Lower clip of the diversity threshold (paper: 0.05)."""
    threshold_max: float = 0.2
    """Upper clip of the diversity threshold (the paper's code: 0.2). The threshold is an FVU
    target: the curriculum holds the windowed FVU between ``shrink_ratio`` x threshold and the
    threshold, so this cap bounds how much reconstruction the curriculum trades for rank."""
    default_threshold: float = 0.1
    """Threshold when ``diversity_init`` is off (the code's default)."""
    feature_weight: bool = True
    """Weight the reconstruction over input dims by eq. 5 (numerically ~1: docs/spec.md §2 d11)."""
    contrastive: bool = True
    """Add the code-uniformity InfoNCE term (eq. 7, B8)."""
    contrastive_coefficient: float = 0.1
    """alpha, the InfoNCE weight (the code's 0.1, >= 0)."""
    contrastive_warm_up_steps: int = 0
    """Linear warm-up of alpha from 0, in steps (>= 0)."""
    contrastive_temperature: float = 0.1
    """InfoNCE temperature (the code's 0.1, > 0)."""
    contrastive_anchors: int = 512
    """Anchor rows per step; keys are the whole batch, so the cost is anchors x batch (>= 1)."""

    @override
    def validate_training(self) -> None:
        require_fields(self, ("contrastive_coefficient",), lambda v: v >= 0, ">= 0")
        require_fields(self, ("contrastive_warm_up_steps",), lambda v: v >= 0, ">= 0 steps")
        require_fields(
            self,
            (
                "curriculum_window",
                "curriculum_interval",
                "diversity_batches",
                "contrastive_anchors",
            ),
            lambda v: v >= 1,
            ">= 1",
        )
        require_fields(self, ("sparsity_slope", "contrastive_temperature"), lambda v: v > 0, "> 0")
        if not 0.0 < self.min_rank_fraction <= self.initial_rank_fraction <= self.max_rank_fraction:
            raise ValueError(
                "rank fractions must satisfy 0 < min_rank_fraction <= initial_rank_fraction <= "
                f"max_rank_fraction; got {self.min_rank_fraction}, {self.initial_rank_fraction}, "
                f"{self.max_rank_fraction}"
            )
        require_fields(
            self,
            ("rank_grow_fraction", "rank_shrink_fraction"),
            lambda v: 0.0 < v <= 1.0,
            "in (0, 1]",
        )
        if not 0.0 <= self.shrink_ratio < 1.0:
            raise ValueError(f"shrink_ratio must be in [0, 1), got {self.shrink_ratio}")
        if not 0.0 < self.threshold_min <= self.threshold_max < 1.0:
            raise ValueError(
                "thresholds must satisfy 0 < threshold_min <= threshold_max < 1; got "
                f"{self.threshold_min}, {self.threshold_max}"
            )
        if not 0.0 < self.default_threshold < 1.0:
            raise ValueError(f"default_threshold must be in (0, 1), got {self.default_threshold}")

    def schedule(self) -> RankSchedule:
        return rank_schedule(
            self.d_in,
            self.d_sae,
            self.min_rank_fraction,
            self.initial_rank_fraction,
            self.max_rank_fraction,
            self.rank_grow_fraction,
            self.rank_shrink_fraction,
        )


def max_rank(cfg: QuCLArchitectureFields | Any) -> int:
    """Rows of ``W_r``: ``max(1, floor(max_rank_fraction * min(d_in, d_sae)))``."""
    return max(1, math.floor(cfg.max_rank_fraction * min(cfg.d_in, cfg.d_sae)))


class QuCLEncoder(VariantModule):
    """The quantized-projection encoder, shared by the inference and the training SAE.

    Mixed in before SAELens's ``SAE``/``TrainingSAE`` so its ``initialize_weights`` and folds
    replace the linear-encoder ones (there is no trainable ``W_enc``; see :attr:`W_enc`).
    """

    W_r: nn.Parameter
    b_enc: nn.Parameter
    projection: Tensor
    rank: Tensor

    def initialize_weights(self) -> None:
        assert isinstance(self, nn.Module)
        d_in, d_sae, width = self.cfg.d_in, self.cfg.d_sae, max_rank(self.cfg)
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=self.dtype, device=self.device))
        decoder = torch.empty(d_sae, d_in, dtype=self.dtype, device=self.device)
        nn.init.kaiming_uniform_(decoder)
        self.W_dec = nn.Parameter(decoder)
        projection = jl_projection(d_in, width, self.cfg.projection_seed, self.dtype).to(
            self.device
        )
        self.register_buffer("projection", projection)
        self.register_buffer("rank", torch.tensor(width, dtype=torch.long, device=self.device))
        # Start the encoder as the decoder's transpose seen through the projection:
        # P P^T ~ (r / d_in) I, so (d_in / r) P^T W_dec^T maps u back to about x W_dec^T.
        self.W_r = nn.Parameter(projection.T @ decoder.detach().T * (d_in / width))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))

    @property
    def current_rank(self) -> int:
        return int(self.rank)

    def quantized_projection(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> Float[Tensor, "*batch rank"]:
        """``Q4((x - b_dec) P[:, :r])``; ``sae_in`` has already had ``b_dec`` removed."""
        return fake_quantize(
            sae_in @ self.projection[:, : self.current_rank], self.cfg.quantization_bits
        )

    def preactivation(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], None]:
        pre = pyramid_pre_activations(
            self.quantized_projection(sae_in), self.W_r, self.b_enc, self.cfg.multiscale
        )
        return pre, None

    @property
    def W_enc(self) -> Float[Tensor, "d_in d_sae"]:
        """The linear encoder the pyramid amounts to without quantization (derived, read-only).

        For weight-based analyses (encoder/decoder cosines, SAEBench's ``W_enc``); ``encode`` always
        takes the quantized path.
        """
        return effective_encoder(self.projection, self.W_r, self.current_rank, self.cfg.multiscale)

    @torch.no_grad()
    def fold_and_get_W_dec_norm(self) -> Tensor:
        # ReLU is positively homogeneous, so scaling a feature's encoder column and bias by its
        # decoder norm (and the row by the inverse) leaves the SAE's function unchanged.
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec.data.div_(norms.unsqueeze(1))
        self.W_r.data.mul_(norms)
        self.b_enc.data.mul_(norms)
        return norms

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        # Min-max quantization is scale-equivariant, Q(u / s) = Q(u) / s, so the input scale folds
        # into W_r exactly as it folds into a linear encoder.
        self.W_r.data.mul_(scaling_factor)
        self.W_dec.data.div_(scaling_factor)
        self.b_dec.data.div_(scaling_factor)
        self.cfg.normalize_activations = "none"


class QuCLSAE(QuCLEncoder, VariantSAE[QuCLSAEConfig]):
    """A trained QuCL SAE: quantized-projection encoder at the rank training ended with."""


@dataclass
class RankEvent:
    """One curriculum decision, kept in ``QuCLTrainingSAE.rank_trajectory`` for reports."""

    step: int
    rank_before: int
    rank_after: int
    windowed_fvu: float
    threshold: float


CURRICULUM_LOG_FILENAME = "qucl_curriculum.json"
"""Written next to the saved SAE: the rank trajectory of the run that trained it."""


def weighted_squared_error(
    preds: Float[Tensor, "batch d_in"],
    target: Float[Tensor, "batch d_in"],
    replicas: Replicas = SINGLE,
) -> Float[Tensor, "batch d_in"]:
    """Eq. 5's reconstruction error: ``(x^ - x)^2`` weighted per input dim by the batch's
    feature importance (SAELens's ``mse_loss_fn`` slot: summed over d_in, averaged over rows);
    among data-parallel ``replicas``, the global batch's importance."""
    if replicas.world_size == 1:
        weights = feature_importance_weights(target)
    else:
        sums = replicas.sum_(importance_sums(target))
        weights = importance_weights_from_sums(sums).to(target.dtype)
    return (preds - target).pow(2) * weights


class QuCLTrainingSAE(QuCLEncoder, VariantTrainingSAE[QuCLTrainingSAEConfig]):
    """QuCL-SAE with its rank curriculum, adaptive sparsity and InfoNCE term."""

    training_buffers: ClassVar[tuple[str, ...]] = (
        "curriculum_threshold",
        "diversity_sum",
        "diversity_count",
        "fvu_window",
        "fvu_count",
        "curriculum_step",
    )
    training_log_filename: ClassVar[str | None] = CURRICULUM_LOG_FILENAME

    curriculum_threshold: Tensor
    diversity_sum: Tensor
    diversity_count: Tensor
    fvu_window: Tensor
    fvu_count: Tensor
    curriculum_step: Tensor

    def __init__(self, cfg: QuCLTrainingSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        self.rank.fill_(cfg.schedule().initial)

        def buffer(value: float | int, dtype: torch.dtype, size: int | None = None) -> Tensor:
            shape = () if size is None else (size,)
            return torch.full(shape, value, dtype=dtype, device=self.device)

        # 0 means "not measured yet": valid thresholds are >= threshold_min > 0.
        self.register_buffer(
            "curriculum_threshold",
            buffer(0.0 if cfg.diversity_init else cfg.default_threshold, torch.float32),
        )
        self.register_buffer("diversity_sum", buffer(0.0, torch.float64))
        self.register_buffer("diversity_count", buffer(0, torch.long))
        self.register_buffer("fvu_window", buffer(0.0, torch.float32, cfg.curriculum_window))
        self.register_buffer("fvu_count", buffer(0, torch.long))
        self.register_buffer("curriculum_step", buffer(0, torch.long))
        self.rank_trajectory: list[RankEvent] = []
        """Every curriculum decision of this process (a log for reports, not resumable state)."""
        if cfg.feature_weight:
            self.mse_loss_fn = self._weighted_squared_error

    def _weighted_squared_error(
        self, preds: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_in"]
    ) -> Float[Tensor, "batch d_in"]:
        return weighted_squared_error(preds, target, replicas_of(self))

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        with torch.no_grad():
            # SAELens's heuristic start (decoder_init_norm): a small encoder, unit decoder rows.
            if self.cfg.decoder_init_norm is not None:
                self.W_r.mul_(self.cfg.decoder_init_norm / self.W_dec.norm(dim=-1))
            self.W_dec.copy_(unit_norm_rows(self.W_dec))

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            **super().get_coefficients(),
            "contrastive": TrainCoefficientConfig(
                self.cfg.contrastive_coefficient, self.cfg.contrastive_warm_up_steps
            ),
        }

    @property
    def threshold_ready(self) -> bool:
        return float(self.curriculum_threshold) > 0.0

    def windowed_fvu(self) -> float | None:
        """Mean FVU over the last ``curriculum_window`` steps, or None before the window fills."""
        if int(self.fvu_count) < self.cfg.curriculum_window:
            return None
        return float(self.fvu_window.mean())

    def sparsity_scale(self) -> float:
        """sigmoid(slope * windowed FVU) (eq. 6); 1 before the window fills or when disabled."""
        fvu = self.windowed_fvu()
        if not self.cfg.adaptive_sparsity or fvu is None:
            return 1.0
        return 1.0 / (1.0 + math.exp(-self.cfg.sparsity_slope * fvu))

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        if self.training:
            # The curriculum needs this step's FVU whether or not the step is logged.
            x = step_input.sae_in.detach()
            self._advance_curriculum(x, self._global_fvu(x, output.sae_out.detach()))
        return output

    def _global_fvu(self, x: Float[Tensor, "batch d_in"], x_hat: Tensor) -> Tensor:
        """This step's FVU; in data-parallel training, that of the global batch (the curriculum's
        decisions read it, so every replica must see the same)."""
        replicas = replicas_of(self)
        if replicas.world_size == 1:
            return fraction_of_variance_unexplained(x, x_hat)
        return fvu_from_sums(replicas.sum_(variance_sums(x, x_hat)))

    def _global_diversity(self, x: Float[Tensor, "batch d_in"]) -> Tensor:
        """This batch's diversity; in data-parallel training, the global batch's."""
        replicas = replicas_of(self)
        if replicas.world_size == 1:
            return batch_diversity(x)
        return diversity_from_sums(replicas.sum_(diversity_sums(x)))

    @override
    def step_metrics(self, output: TrainStepOutput) -> dict[str, Any]:
        return {
            **super().step_metrics(output),
            "qucl/rank": self.current_rank,
            "qucl/threshold": self.curriculum_threshold.clone(),
            "qucl/sparsity_scale": self.sparsity_scale(),
        }

    @override
    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        """The adaptive L1 term (decoder rows are unit, so no norm weighting) and the InfoNCE term."""
        losses = {
            "l1_loss": step_input.coefficients["l1"]
            * self.sparsity_scale()
            * feature_acts.sum(dim=-1).mean()
        }
        weight = step_input.coefficients.get("contrastive", 0.0)
        replicas = replicas_of(self)
        n_rows = feature_acts.shape[0] * replicas.world_size
        if self.cfg.contrastive and weight > 0 and n_rows > 1:
            # Anchors and keys come from the global batch, as in one process.
            global_acts = replicas.gather_for_shared_term(feature_acts)
            anchors = torch.randperm(n_rows, device=global_acts.device)[
                : self.cfg.contrastive_anchors
            ]
            infonce = code_uniformity_infonce(
                global_acts, anchors, self.cfg.contrastive_temperature
            )
            losses["contrastive_loss"] = weight * infonce
        return losses

    @torch.no_grad()
    def _advance_curriculum(self, x: Float[Tensor, "batch d_in"], fvu: Tensor) -> None:
        cfg = self.cfg
        self.curriculum_step.add_(1)
        if not self.threshold_ready and x.shape[0] * replicas_of(self).world_size > 1:
            self.diversity_sum.add_(self._global_diversity(x).double())
            self.diversity_count.add_(1)
            if int(self.diversity_count) >= cfg.diversity_batches:
                mean_diversity = float(self.diversity_sum) / int(self.diversity_count)
                threshold = min(max(1.0 - mean_diversity, cfg.threshold_min), cfg.threshold_max)
                self.curriculum_threshold.fill_(threshold)
        self.fvu_window[int(self.fvu_count) % cfg.curriculum_window] = fvu
        self.fvu_count.add_(1)
        step = int(self.curriculum_step)
        windowed = self.windowed_fvu()
        if (
            not cfg.dynamic_rank
            or windowed is None
            or not self.threshold_ready
            or step % cfg.curriculum_interval != 0
        ):
            return
        threshold = float(self.curriculum_threshold)
        before = self.current_rank
        after = next_rank(before, windowed, threshold, cfg.shrink_ratio, cfg.schedule())
        self.rank.fill_(after)
        self.rank_trajectory.append(RankEvent(step, before, after, windowed, threshold))

    @override
    @override
    def resumable_state(self) -> dict[str, Any]:
        """The rank decisions so far (the curriculum's numbers are buffers)."""
        return {"decisions": [list(dataclasses.astuple(e)) for e in self.rank_trajectory]}

    @override
    def load_resumable_state(self, state: dict[str, Any]) -> None:
        self.rank_trajectory = [RankEvent(*values) for values in state.get("decisions", [])]

    def training_log(self) -> dict[str, Any]:
        """The curriculum's final state and every rank decision of the run, as plain data."""
        return {
            "final_rank": self.current_rank,
            "rank_bounds": dataclasses.asdict(self.cfg.schedule()),
            "threshold": float(self.curriculum_threshold),
            "steps": int(self.curriculum_step),
            "decisions": [dataclasses.asdict(event) for event in self.rank_trajectory],
        }


__all__ = [
    "QuCLArchitectureFields",
    "QuCLSAE",
    "QuCLSAEConfig",
    "QuCLTrainingSAE",
    "QuCLTrainingSAEConfig",
    "RankEvent",
    "max_rank",
    "pyramid_blocks",
    "scale_ranks",
]

"""CubicOrtho SAE: progressive feature separation by cubic-scaling orthogonality (seed 002).

Paper: seed 002; the algorithm with its resolutions is ``docs/spec.md`` §4, and the measurements
are in ``docs/variants/cubic_ortho.md``.

    f = ReLU((x - b_dec) W_enc + b_enc),   x^ = f W_dec + b_dec,   ||w_i|| = 1
    L = ||x - x^||^2 + lambda * sum_i f_i + gamma(t) * alpha * Omega / N
    Omega = sum_{i != j} |c_ij|^3 * |<w_i, w_j>|                                     (eq. 2)

``c_ij`` is the uncentered cosine of the activation columns of features i and j over the batch,
``gamma(t) = min(1, t / T_warm)`` follows the learning-rate warm-up (eq. 4), and ``N = d_sae``
("per_feature", the default, width-portable) or 1 ("sum", the paper's literal form; both agree at
the paper's d_sae = 2304 with alpha' = 2304 * 0.001). Decoder *rows* (the paper's code used
columns), the diagonal excluded, and above ``dense_max_d_sae`` Omega is estimated without ever
forming a d_sae x d_sae matrix (``cubic_ortho_penalty.py``).

Eq. 3's activation-aware tolerance and the code's later weightings are options (``act_mode``),
off by default. At inference this is exactly SAELens's ``standard`` SAE, so it is saved as one:
tools that never import ``sae_variants`` load it unchanged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from jaxtyping import Float
from sae_lens.saes.sae import (
    SAEConfig,
    TrainCoefficientConfig,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from torch import Tensor, nn
from typing_extensions import override

from sae_variants.architectures.base import (
    ArchitectureFields,
    RunInfo,
    VariantTrainingSAE,
    VariantTrainingSAEConfig,
    run_value,
)
from sae_variants.architectures.cubic_ortho_penalty import (
    PairTerms,
    cubic_ortho_penalty_blocks,
    cubic_ortho_penalty_dense,
)
from sae_variants.functional import unit_norm_rows
from sae_variants.replicas import Replicas, mean_over_replicas, replicas_of
from sae_variants.validation import require_fields

PAPER_ORTHO_WARM_UP_STEPS = 1000
"""gamma's ramp when no run is bound: the paper's, which equals its learning-rate warm-up."""


@dataclass
class CubicOrthoTrainingSAEConfig(VariantTrainingSAEConfig, ArchitectureFields):
    """Training configuration of the cubic-scaling orthogonality SAE (saved as SAELens standard)."""

    architecture_name: ClassVar[str] = "cubic_ortho"
    inference_config_class: ClassVar[type[SAEConfig]] = StandardSAEConfig

    ortho_coefficient: float = 2.304
    """alpha, the weight of Omega (>= 0). With ``ortho_normalization="per_feature"`` this is
    alpha' = 0.001 * 2304, the paper's alpha at its width; with "sum" use the paper's 0.001."""
    ortho_normalization: Literal["per_feature", "sum"] = "per_feature"
    """Divide Omega by d_sae ("per_feature", width-portable) or not ("sum", paper-literal)."""
    ortho_warm_up_steps: int | None = None
    """gamma(t) = min(1, t / this), in steps (>= 0). None: the run's learning-rate warm-up, as the
    paper ties them (bound by ``bind_run``; unbound, the paper's 1000 with a warning)."""
    exponent: float = 3.0
    """p in |c_ij|^p: 3 is the paper's cubic scaling (run 7), 2 its quadratic ablation (>= 1)."""
    # Field annotations spell their Literal out (no module-level alias): SAELens's own CLI reads
    # them with simple_parsing, which resolves names only in the modules declaring d_in etc.
    act_mode: Literal["none", "eps_hinge", "sigmoid", "log1p_norm", "ratio_rank"] = "none"
    """Activation-aware pair weighting (off by default): "eps_hinge" is eq. 3 as a hinge margin
    max(0, |<w_i,w_j>| - eps_ij) with eps_ij = eps0 (1 + a_i a_j)^-beta; "sigmoid" (run 9) and
    "log1p_norm" (run 10) multiply the pair term by sigmoid(a_i a_j) or log1p(a_i a_j) / max;
    "ratio_rank" reproduces the paper's "ratio-based ranking" as its code ran it (runs 1-4): each
    feature's ratio of mean activation in the first half of the batch to the second half is ranked,
    and a pair is weighted by the product of the two normalized ranks. On shuffled batches those
    ratios are noise (docs/spec.md §4 d5); the mode exists to reproduce the paper, not to be used."""
    eps0: float = 0.1
    """eps_0 of eq. 3 (unspecified by the paper; >= 0)."""
    beta: float = 1.0
    """beta of eq. 3 (unspecified by the paper; >= 0)."""
    activation_ema_decay: float = 0.99
    """Decay of the EMA of each feature's mean activation a_i used by ``act_mode`` (in [0, 1))."""
    penalty_mode: Literal["auto", "dense", "blocks"] = "auto"
    """How Omega is computed: "dense" (d_sae x d_sae matrices, exact), "blocks" (unbiased
    estimate from random blocks of the active features, exact when one block holds them all), or
    "auto": dense up to ``dense_max_d_sae``, blocks above."""
    dense_max_d_sae: int = 1024
    """Largest width at which "auto" uses the dense form (>= 1)."""
    block_size: int = 128
    """Features per random block in the "blocks" form (>= 2); cost grows linearly with it."""

    @override
    def bind_run(self, run: RunInfo) -> CubicOrthoTrainingSAEConfig:
        return replace(
            self, ortho_warm_up_steps=run_value(self.ortho_warm_up_steps, run.lr_warm_up_steps)
        )

    def ortho_warm_up(self) -> int:
        """gamma's ramp in steps: the bound value, or the paper's when no run was bound."""
        if self.ortho_warm_up_steps is not None:
            return self.ortho_warm_up_steps
        warnings.warn(
            "cubic_ortho: ortho_warm_up_steps is None and no run was bound (cfg.bind_run), so the "
            f"orthogonality weight ramps over the paper's {PAPER_ORTHO_WARM_UP_STEPS} steps whatever "
            "the run's length; set it, or train through sae_variants' runner, which aligns it with "
            "the learning-rate warm-up",
            stacklevel=2,
        )
        return PAPER_ORTHO_WARM_UP_STEPS

    @override
    def validate_training(self) -> None:
        require_fields(self, ("ortho_coefficient", "eps0", "beta"), lambda v: v >= 0, ">= 0")
        if self.ortho_warm_up_steps is not None and self.ortho_warm_up_steps < 0:
            raise ValueError(
                f"ortho_warm_up_steps must be >= 0 steps (or None), got {self.ortho_warm_up_steps}"
            )
        if self.exponent < 1:
            # Below 1 the gradient of c^p is infinite at c = 0, i.e. at every pair that never co-fires.
            raise ValueError(f"exponent must be >= 1, got {self.exponent}")
        if not 0.0 <= self.activation_ema_decay < 1.0:
            raise ValueError(
                f"activation_ema_decay must be in [0, 1), got {self.activation_ema_decay}"
            )
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}")
        if self.dense_max_d_sae < 1:
            raise ValueError(f"dense_max_d_sae must be >= 1, got {self.dense_max_d_sae}")
        if self.act_mode not in ("none", "eps_hinge", "sigmoid", "log1p_norm", "ratio_rank"):
            raise ValueError(
                "act_mode must be one of none, eps_hinge, sigmoid, log1p_norm, ratio_rank; "
                f"got {self.act_mode!r}"
            )
        if self.penalty_mode not in ("auto", "dense", "blocks"):
            raise ValueError(
                f"penalty_mode must be auto, dense or blocks; got {self.penalty_mode!r}"
            )
        if self.ortho_normalization not in ("per_feature", "sum"):
            raise ValueError(
                f"ortho_normalization must be per_feature or sum; got {self.ortho_normalization!r}"
            )


def half_batch_ratio_ranks(
    acts: Float[Tensor, "batch d_sae"], eps: float = 1e-6, replicas: Replicas | None = None
) -> Float[Tensor, " d_sae"]:
    """Rank of each feature's (first-half mean + eps) / (second-half mean + eps), scaled to (0, 1].
    With ``replicas`` (each holding its slice of the global batch, in rank order) the halves are
    the global batch's."""
    if replicas is None or replicas.world_size == 1:
        half = acts.shape[0] // 2
        ratio = (acts[:half].mean(0) + eps) / (acts[half:].mean(0) + eps)
    else:
        rows = acts.shape[0]
        total, half = rows * replicas.world_size, rows * replicas.world_size // 2
        split = min(max(half - replicas.rank * rows, 0), rows)  # where the global halves meet
        sums = replicas.sum_(torch.stack([acts[:split].sum(0), acts[split:].sum(0)]))
        ratio = (sums[0] / half + eps) / (sums[1] / (total - half) + eps)
    ranks = torch.empty_like(ratio)
    ranks[ratio.argsort()] = torch.arange(
        1, ratio.shape[0] + 1, dtype=ratio.dtype, device=ratio.device
    )
    return ranks / ratio.shape[0]


def pair_terms(
    mean_acts: Float[Tensor, " d_sae"],
    acts: Float[Tensor, "batch d_sae"],
    act_mode: str,
    eps0: float,
    beta: float,
    replicas: Replicas | None = None,
) -> PairTerms | None:
    """``(i, j) -> (weight_ij, margin_ij)`` for ``act_mode``: from the features' mean activations,
    or, for "ratio_rank", from this batch's half-batch ratio ranks (the global batch's, with
    ``replicas``)."""
    if act_mode == "none":
        return None
    if act_mode == "ratio_rank":
        ranks = half_batch_ratio_ranks(acts.detach(), replicas=replicas)

        def rank_terms(i: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
            weight = ranks[i] * ranks[j]
            return weight, torch.zeros_like(weight)

        return rank_terms
    # The largest product over distinct pairs, for log1p_norm's normalization.
    top = mean_acts.topk(min(2, mean_acts.shape[0])).values
    max_product = (top[0] * top[-1]).clamp_min(1e-12)

    def terms(i: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
        product = mean_acts[i] * mean_acts[j]
        ones, zeros = torch.ones_like(product), torch.zeros_like(product)
        if act_mode == "eps_hinge":
            return ones, eps0 * (1.0 + product).pow(-beta)
        if act_mode == "sigmoid":
            return torch.sigmoid(product), zeros
        return torch.log1p(product) / torch.log1p(max_product), zeros

    return terms


def cubic_ortho_penalty(
    acts: Float[Tensor, "batch d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    mean_acts: Float[Tensor, " d_sae"],
    cfg: CubicOrthoTrainingSAEConfig,
    replicas: Replicas | None = None,
) -> Float[Tensor, ""]:
    """Omega for ``cfg`` (normalized as configured), in the form ``cfg.penalty_mode`` selects;
    with ``replicas``, over their batches together (see the two forms)."""
    d_sae = W_dec.shape[0]
    mode = cfg.penalty_mode
    if mode == "auto":
        mode = "dense" if d_sae <= cfg.dense_max_d_sae else "blocks"
    terms = pair_terms(mean_acts, acts, cfg.act_mode, cfg.eps0, cfg.beta, replicas)
    if mode == "dense":
        weight = margin = None
        if terms is not None:
            index = torch.arange(d_sae, device=W_dec.device)
            i, j = torch.meshgrid(index, index, indexing="ij")
            weight, margin = terms(i, j)
        omega = cubic_ortho_penalty_dense(acts, W_dec, cfg.exponent, weight, margin, replicas)
    else:
        omega = cubic_ortho_penalty_blocks(
            acts, W_dec, cfg.exponent, cfg.block_size, terms, replicas=replicas
        )
    return omega / d_sae if cfg.ortho_normalization == "per_feature" else omega


class CubicOrthoTrainingSAE(VariantTrainingSAE[CubicOrthoTrainingSAEConfig]):
    """ReLU SAE with unit-norm decoder rows trained with the cubic orthogonality penalty."""

    b_enc: nn.Parameter
    feature_mean_activation: Tensor
    training_buffers: ClassVar[tuple[str, ...]] = ("feature_mean_activation",)

    def __init__(self, cfg: CubicOrthoTrainingSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        self.register_buffer(
            "feature_mean_activation",
            torch.zeros(cfg.d_sae, dtype=self.dtype, device=self.device),
        )

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        with torch.no_grad():
            self.W_dec.copy_(unit_norm_rows(self.W_dec))

    @override
    def preactivation(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], None]:
        return self.affine_preactivation(sae_in), None

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            **super().get_coefficients(),
            # SAELens ramps a coefficient linearly from 0: exactly gamma(t) * alpha.
            "ortho": TrainCoefficientConfig(self.cfg.ortho_coefficient, self.cfg.ortho_warm_up()),
        }

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        # The mean-activation EMA only feeds the activation-aware modes; skip the pass otherwise.
        if self.training and self.cfg.act_mode != "none":
            with torch.no_grad():
                # A mean over the batch's rows: across data-parallel replicas, of the global batch.
                batch_mean = mean_over_replicas(self, output.feature_acts.detach().mean(dim=0))
                decay = self.cfg.activation_ema_decay
                self.feature_mean_activation.mul_(decay).add_(batch_mean, alpha=1.0 - decay)
        return output

    @override
    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        # SAELens's standard L1 weights each code by its decoder row's norm; here every row has
        # unit norm in a step (prepare_step) and that factor's gradient is radial, which the
        # tangent projection removes, so the plain sum is the same term without a d_sae x d_in
        # backward pass.
        l1 = feature_acts.sum(dim=-1).mean()
        omega = cubic_ortho_penalty(
            feature_acts.reshape(-1, self.cfg.d_sae),
            self.W_dec,
            self.feature_mean_activation,
            self.cfg,
            replicas_of(self),
        )
        return {
            "l1_loss": step_input.coefficients["l1"] * l1,
            "ortho_loss": step_input.coefficients["ortho"] * omega,
        }


CubicOrthoSAE = StandardSAE
"""At inference a CubicOrtho SAE *is* SAELens's ``StandardSAE``; it is saved and loaded as one."""
CubicOrthoSAEConfig = StandardSAEConfig

"""SeqContrastiveSAE: contrastive sparse coding with sequence-aware positive pairs (seed 003).

Paper: seed 003; the algorithm with its resolutions is ``docs/spec.md`` §5, and the measurements
are in ``docs/variants/seq_contrastive.md``.

    x_n = gamma * (x' - mu) / sigma + beta,  sigma = sqrt(var(x') + eps),  x' = x - b_dec    S1
    f   = sigma * ReLU(x_n W_enc + b_enc)                       (scale-restored, so decoding is linear)
    x^  = f W_dec + b_dec                                       S2, unit decoder rows
    L   = mean ||x - x^||^2 + lambda mean sum_i f_i + gamma_t L_c                          S6
    L_c = symmetric masked InfoNCE over codes: the positive of a row is another row of the same
          sequence at most w positions away; negatives are all rows of other sequences.   S4, S5

The contrastive weight ramps linearly from 0 (SAELens coefficient warm-up, bound to the
learning-rate warm-up by ``bind_run``, as the paper ties them). Decoder rows stay unit:
their gradient is projected onto the sphere's tangent space and the rows are renormalized before
every step. The contrastive cost is bounded by sampling ``contrastive_pairs`` pairs per step.

Training needs each row's sequence and position, which SAELens's shuffling store loses, so the
training config declares a :class:`~sae_variants.token_context.SequenceLayout` and the SAE reads
a :class:`~sae_variants.token_context.TokenContext` per step; without the sequence-aware pipeline
the step refuses to run. At inference the SAE is a per-token function saved as architecture
``"seq_contrastive"`` (the layer normalization makes it more than SAELens's ``standard``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
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
    RunInfo,
    VariantSAE,
    VariantSAEConfig,
    VariantTrainingSAE,
    VariantTrainingSAEConfig,
    run_value,
)
from sae_variants.architectures.input_scale_fold import (
    TokenNormalizingEncoder,
    fold_input_scale,
    require_foldable_input_normalization,
)
from sae_variants.architectures.seq_contrastive_functional import (
    masked_info_nce,
    sample_anchor_pairs,
    soft_support,
    window_partners,
)
from sae_variants.encoder_gradient import layer_normalized_scaled_preactivation
from sae_variants.functional import layer_normalized_preactivation, unit_norm_rows
from sae_variants.replicas import replicas_of
from sae_variants.token_context import (
    NeedsTokenContext,
    SequenceLayout,
    SequenceStepInput,
    TokenContext,
)
from sae_variants.validation import require_fields

CONTRASTIVE_SIMILARITIES = ("codes", "support")

PAPER_CONTRASTIVE_WARM_UP_STEPS = 1000
"""gamma's ramp when no run is bound: the paper's, which equals its learning-rate warm-up."""


@dataclass(kw_only=True)
class SeqContrastiveArchitectureFields(ArchitectureFields):
    """Fields the inference SAE needs (shared by the inference and training configs)."""

    architecture_name: ClassVar[str] = "seq_contrastive"

    layer_norm: bool = True
    """Layer-normalize the encoder's input with a learnable gain and bias (S1); False: a plain
    ReLU SAE (the paper's code, which never had the normalization its text describes)."""
    restore_scale: bool = True
    """Multiply the codes by the token scale sigma the normalization removed, so the linear
    decoder reconstructs raw activations (docs/spec.md §5 d9); False is the paper-literal behaviour."""
    ln_eps: float = 1e-5
    """epsilon of the layer normalization (> 0). Folding an input scale c into the SAE divides it
    by c^2, which keeps the function exact."""

    @override
    def validate_architecture(self) -> None:
        require_fields(self, ("ln_eps",), lambda v: v > 0, "> 0")
        require_foldable_input_normalization(self)


@dataclass
class SeqContrastiveSAEConfig(VariantSAEConfig, SeqContrastiveArchitectureFields):
    """Inference configuration of a trained sequence-contrastive SAE."""


@dataclass
class SeqContrastiveTrainingSAEConfig(VariantTrainingSAEConfig, SeqContrastiveArchitectureFields):
    """Training configuration; every default is the spec's resolution of the paper (docs/spec.md §5 c)."""

    inference_config_class: ClassVar[type[SAEConfig]] = SeqContrastiveSAEConfig

    contrastive_coefficient: float = 0.1
    """gamma, the final weight of the InfoNCE term (paper: 0.1; 0 switches it off)."""
    contrastive_warm_up_steps: int | None = None
    """gamma ramps linearly from 0 over this many steps (>= 0). None: the run's learning-rate
    warm-up, as the paper ties them (bound by ``bind_run``; unbound, the paper's 1000 with a
    warning)."""
    temperature: float = 1.0
    """tau of the InfoNCE similarities (paper: 1.0; > 0)."""
    positive_window: int = 8
    """w: a row's positive is another row of its sequence at most this many positions away (>= 1)."""
    contrastive_pairs: int = 64
    """Pairs sampled per step, each used in both directions: the InfoNCE costs
    2 x pairs x batch similarities whatever the batch size (>= 1). 64 keeps the training step
    within 1.3x SAELens standard's at d_sae 4096 and batch 4096 (``sae-variants benchmark``)."""
    contrastive_similarity: str = "codes"
    """What the InfoNCE compares: ``"codes"``, the cosine of the codes (paper, S5), or
    ``"support"``, the cosine of their soft supports ``1 - exp(-f_i / kappa_i)`` (kappa_i: feature
    i's mean non-zero code in the batch), which counts every active feature about equally, as the contextual
    consistency metric (a Jaccard of active sets) does; the cosine of codes is dominated by a
    token's few largest features."""
    hard_negatives: int | None = None
    """k: keep only each anchor's k most similar rows of other sequences in the InfoNCE
    denominator (``docs/spec.md`` §5 d10, "targeted negative sampling"); None (paper) keeps them
    all (>= 1)."""
    positions_per_context: int | None = 8
    """P: rows per context in a training batch (paper: 8, so batch/P contexts per batch); None
    serves whole contexts."""
    position_sampling: str = "pairs"
    """How the pipeline picks a context's P positions: ``"pairs"`` (P/2 pairs at most
    ``positive_window`` apart, spec S3), ``"span"`` or ``"uniform"``."""

    def sequence_layout(self) -> SequenceLayout:
        """The sequence-structured batches this SAE trains on (read by the pipeline)."""
        return SequenceLayout(
            self.positions_per_context, self.position_sampling, self.positive_window
        )

    @override
    def bind_run(self, run: RunInfo) -> SeqContrastiveTrainingSAEConfig:
        warm_up = run_value(self.contrastive_warm_up_steps, run.lr_warm_up_steps)
        return replace(self, contrastive_warm_up_steps=warm_up)

    def contrastive_warm_up(self) -> int:
        """gamma's ramp in steps: the bound value, or the paper's when no run was bound."""
        if self.contrastive_warm_up_steps is not None:
            return self.contrastive_warm_up_steps
        warnings.warn(
            "seq_contrastive: contrastive_warm_up_steps is None and no run was bound "
            f"(cfg.bind_run), so the contrastive weight ramps over the paper's "
            f"{PAPER_CONTRASTIVE_WARM_UP_STEPS} steps whatever the run's length; set it, or train "
            "through sae_variants' runner, which aligns it with the learning-rate warm-up",
            stacklevel=2,
        )
        return PAPER_CONTRASTIVE_WARM_UP_STEPS

    @override
    def validate_training(self) -> None:
        require_fields(self, ("contrastive_coefficient",), lambda v: v >= 0, ">= 0")
        if self.contrastive_warm_up_steps is not None and self.contrastive_warm_up_steps < 0:
            raise ValueError(
                f"contrastive_warm_up_steps must be >= 0 steps (or None), got {self.contrastive_warm_up_steps}"
            )
        require_fields(self, ("temperature",), lambda v: v > 0, "> 0")
        if self.contrastive_similarity not in CONTRASTIVE_SIMILARITIES:
            raise ValueError(
                f"contrastive_similarity must be one of {', '.join(CONTRASTIVE_SIMILARITIES)}; "
                f"got {self.contrastive_similarity!r}"
            )
        require_fields(self, ("positive_window", "contrastive_pairs"), lambda v: v >= 1, ">= 1")
        if self.hard_negatives is not None:
            require_fields(self, ("hard_negatives",), lambda v: v >= 1, ">= 1 (or None for all)")
        self.sequence_layout()  # validates positions_per_context and position_sampling


class SeqContrastiveEncoder(TokenNormalizingEncoder):
    """The layer-normalizing encoder shared by the inference and the training SAE."""

    def initialize_weights(self) -> None:
        assert isinstance(self, nn.Module)
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        # SAELens's standard start (W_enc = W_dec^T, zero biases) with unit decoder rows, so the
        # comparison with `standard` differs mainly in what the paper adds.
        W_dec = unit_norm_rows(
            torch.empty(d_sae, d_in, dtype=self.dtype, device=self.device).uniform_(-1, 1)
        )
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=self.dtype, device=self.device))
        if self.cfg.layer_norm:
            self.ln_gain = nn.Parameter(torch.ones(d_in, dtype=self.dtype, device=self.device))
            self.ln_bias = nn.Parameter(torch.zeros(d_in, dtype=self.dtype, device=self.device))

    def preactivation(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], None]:
        """The pre-activation of ``x' = x - b_dec`` (subtracted by ``process_sae_in``) whose ReLU
        are the codes (S1, with the token scale restored when ``restore_scale``)."""
        if not self.cfg.layer_norm:
            return self.affine_preactivation(sae_in), None
        # In a training step b_dec's gradient skips the input-side product (encoder_gradient).
        centred = self.centred_input(sae_in)
        if centred is not None and self.cfg.restore_scale:
            pre, _ = layer_normalized_scaled_preactivation(
                centred, self.W_enc, self.b_enc, self.ln_gain, self.ln_bias, self.cfg.ln_eps
            )
            return pre, None
        # The restored scale rides inside the product (codes ReLU(s n) = s ReLU(n)): no
        # [rows, d_sae] scaling pass.
        pre, _ = layer_normalized_preactivation(
            sae_in,
            self.W_enc,
            self.b_enc,
            self.ln_gain,
            self.ln_bias,
            self.cfg.ln_eps,
            self.cfg.restore_scale,
        )
        return pre, None

    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Make the SAE read raw activations when it trained on ``scaling_factor * x``, exactly."""
        fold_input_scale(
            self,
            scaling_factor,
            normalizes_input=self.cfg.layer_norm,
            eps_field="ln_eps",
            restores_scale=self.cfg.restore_scale,
            reads_input=(self.W_enc,),
        )


class SeqContrastiveSAE(SeqContrastiveEncoder, VariantSAE[SeqContrastiveSAEConfig]):
    """A trained sequence-contrastive SAE (inference: every token encoded on its own)."""


class SeqContrastiveTrainingSAE(
    NeedsTokenContext, SeqContrastiveEncoder, VariantTrainingSAE[SeqContrastiveTrainingSAEConfig]
):
    """The sequence-contrastive SAE with its training step (needs a TokenContext per step)."""

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            **super().get_coefficients(),
            "contrastive": TrainCoefficientConfig(
                self.cfg.contrastive_coefficient, self.cfg.contrastive_warm_up()
            ),
        }

    _positive_retrieval: Tensor = torch.zeros(())
    """Top-1 retrieval accuracy of the positives in this step (0 without a contrastive term)."""

    @override
    def prepare_step(self, step_input: TrainStepInput) -> SequenceStepInput:
        self._positive_retrieval = torch.zeros(())
        return self.with_token_context(super().prepare_step(step_input))

    @override
    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        """lambda mean sum_i f_i, and the contrastive term once its weight is above 0 (S6)."""
        losses = {"l1_loss": step_input.coefficients["l1"] * feature_acts.sum(dim=-1).mean()}
        weight = step_input.coefficients["contrastive"]
        if weight > 0:
            assert isinstance(step_input, SequenceStepInput)  # training_forward_pass builds it
            contrastive, self._positive_retrieval = self.contrastive_loss(
                feature_acts, step_input.token_context
            )
            losses["contrastive_loss"] = weight * contrastive
        return losses

    @override
    def step_metrics(self, output: TrainStepOutput) -> dict[str, Any]:
        return {
            **super().step_metrics(output),
            "seq_contrastive/positive_retrieval": self._positive_retrieval,
        }

    def contrastive_loss(
        self, feature_acts: Float[Tensor, "rows d_sae"], context: TokenContext
    ) -> tuple[Float[Tensor, ""], Float[Tensor, ""]]:
        """S4-S5 on this batch: sampled window pairs, symmetric masked InfoNCE, and the top-1
        retrieval accuracy of the positives. In data-parallel training the batch is the global
        one: every replica gathers the rows and their contexts and computes the term one process
        would (see ``Replicas.gather_for_shared_term``)."""
        replicas = replicas_of(self)
        if replicas.world_size > 1:
            feature_acts = replicas.gather_for_shared_term(feature_acts)
            context = TokenContext(
                *(
                    replicas.gather(t)
                    for t in (context.positions, context.sequence_ids, context.token_ids)
                )
            )
        partners = window_partners(
            context.positions, context.sequence_ids, self.cfg.positive_window
        )
        has_code = (feature_acts.detach() > 0).any(dim=-1)
        anchors, mates = sample_anchor_pairs(partners, has_code, self.cfg.contrastive_pairs)
        compared = (
            feature_acts
            if self.cfg.contrastive_similarity == "codes"
            else soft_support(feature_acts)
        )
        return masked_info_nce(
            compared,
            anchors,
            mates,
            context.sequence_ids,
            self.cfg.temperature,
            self.cfg.hard_negatives,
        )


__all__ = [
    "SeqContrastiveSAE",
    "SeqContrastiveSAEConfig",
    "SeqContrastiveTrainingSAE",
    "SeqContrastiveTrainingSAEConfig",
]

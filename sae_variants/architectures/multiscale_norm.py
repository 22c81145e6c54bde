"""MultiScaleNormSAE: multi-scale normalization, EMA z-gating, slot attention, SVD reactivation
(seed 001).

Paper: seed 001; the algorithm with its resolutions is ``docs/spec.md`` §3, and the measurements
are in ``docs/variants/multiscale_norm.md``.

    x_c = x - b_dec                                   (centring; off with apply_b_dec_to_input=False)
    x_n = sigmoid(a) sum_s pi_s (gamma_s (x_c - mu) / sqrt(s v + eps) + beta_s)   C1, eqs. 2-3
    x_a = x_n + softmax(x_n W_Q K^T / sqrt(d_k) * sigmoid(alpha)) V                C2, learned slots
    pre = x_a W_enc + b_enc                                                        C3
    f   = sigma_b * pre * 1[pre > max(EMA mean + z EMA std, 0)]                    C4, sigma_b = sqrt(v + eps), z = 1
    x^  = f W_dec + b_dec                                                          C5, unit decoder rows
    L   = ||x - x^||^2 + lambda1 sum_i u_i f_i + lambda2 ||W_dec W_dec^T - I||_F    C6-C8

Training (C9, C10): each step is split into ``grad_accumulation`` micro-batches whose gradients
add up to the step's (the gate statistics and importance weights move per micro-batch);
per-feature gradients are scaled by the importance ``u``; the learning rate carries an adaptive
factor driven by pre-clip gradient-norm spikes; AdamW-style weight decay applies to ``W_enc``
and the attention matrices only; every 100 steps features that have not fired for a window are
revived from a rank-32 randomized SVD of the residual, and their Adam moments are zeroed. The
optimizer-side parts act through the hooks of the optimizer the SAE is bound to
(``VariantTrainingSAE.bind_optimizer``). All running state is in buffers, so it is checkpointed
and resumed.

At inference the SAE is a per-token function (eval mode never moves a statistic) saved as
architecture ``"multiscale_norm"``; load it with ``SAE.load_from_disk`` after
``import sae_variants``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from sae_lens.saes.sae import (
    SAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from sae_variants.architectures.base import (
    ArchitectureFields,
    VariantSAE,
    VariantSAEConfig,
    VariantTrainingSAE,
    VariantTrainingSAEConfig,
)
from sae_variants.architectures.input_scale_fold import (
    TokenNormalizingEncoder,
    fold_input_scale,
    require_foldable_input_normalization,
)
from sae_variants.architectures.multiscale_norm_functional import (
    batch_moments,
    dead_features,
    frame_orthogonality,
    gate_thresholds,
    gated_codes,
    importance_from_mean_codes,
    interleave_rows,
    moment_sums,
    moments_from_sums,
    multiscale_normalize,
    next_lr_factor,
    reactivation_directions,
    slot_attention,
)
from sae_variants.architectures.optimizer_policy import decoupled_weight_decay, zero_adam_moments
from sae_variants.functional import token_moments, token_scale, unit_norm_rows
from sae_variants.replicas import mean_over_replicas, replicas_of
from sae_variants.validation import require_fields

NORMALIZATIONS = ("multiscale", "layernorm", "none")

_GATE_EPS = 1e-5


@dataclass(kw_only=True)
class MultiScaleNormArchitectureFields(ArchitectureFields):
    """Fields the inference SAE needs (shared by the inference and training configs).

    SAELens's own ``apply_b_dec_to_input`` (default True, kept) centres each token on ``b_dec``
    before the normalization. The spec drops it (docs/spec.md §3 d3: LayerNorm centres each token over its
    dimensions), but that leaves the data's mean direction, which dominates the residual stream,
    in every normalized token, and encoder columns pointing against it never fire (the
    dead-feature diagnosis in ``docs/variants/multiscale_norm.md``). ``b_dec`` starts at the data
    mean, so this centres the data across tokens; it is per token, so codes never depend on the
    batch.
    """

    architecture_name: ClassVar[str] = "multiscale_norm"

    normalization: str = "multiscale"
    """``"multiscale"``: C1 over ``scales``; ``"layernorm"``: one scale {1} (the paper's run 6);
    ``"none"``: the encoder reads the raw activations (the paper's base model)."""
    scales: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0, 2.0])
    """Variance scales s of eq. 2 (paper: {0.1, 0.5, 1.0, 2.0}; each > 0)."""
    adaptive_gate: bool = True
    """Multiply the normalized input by sigmoid(a), a learnable scalar initialized to 1 (run 7)."""
    restore_scale: bool = True
    """Multiply the codes by the token scale sigma_b the normalization removed (docs/spec.md §3 d2), so the
    linear decoder reconstructs raw activations; False is the paper-literal behaviour."""
    norm_eps: float = 1e-5
    """epsilon of the normalization (code: 1e-5; > 0). Folding an input scale c into the SAE divides
    it by c^2, which keeps the function exact."""
    attention: bool = True
    """Per-token attention over learned slots before the encoder (C2; the paper's run 8)."""
    attention_slots: int = 64
    """m, the number of learned key/value slots (>= 1)."""
    attention_key_dim: int | None = None
    """d_k of the queries and keys; None means d_in / 4 (paper), at least 1."""
    z_gating: bool = True
    """Fire only where the pre-activation's running z-score exceeds ``z_threshold`` (C4);
    False: a plain ReLU."""
    z_threshold: float = 1.0
    """z of the one-sided gate (the paper's trainer: "mu + 2 sigma", i.e. 2.0; >= 0 is not
    required). Default 1.0, where the paper's 2.0 left features dead on the embedded model
    (``docs/variants/multiscale_norm.md``)."""

    def normalization_scales(self) -> list[float]:
        """The scales C1 uses under ``normalization`` (empty when it is off)."""
        return {"multiscale": list(self.scales), "layernorm": [1.0], "none": []}[self.normalization]

    def key_dim(self) -> int:
        return self.attention_key_dim or max(1, self.d_in // 4)  # type: ignore[attr-defined]

    @override
    def validate_architecture(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {self.normalization!r}"
            )
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of values > 0, got {self.scales}")
        require_fields(self, ("norm_eps",), lambda v: v > 0, "> 0")
        require_fields(self, ("attention_slots",), lambda v: v >= 1, ">= 1")
        if self.attention_key_dim is not None and self.attention_key_dim < 1:
            raise ValueError(
                f"attention_key_dim must be >= 1 or None, got {self.attention_key_dim}"
            )
        require_foldable_input_normalization(self)


@dataclass
class MultiScaleNormSAEConfig(VariantSAEConfig, MultiScaleNormArchitectureFields):
    """Inference configuration of a trained multi-scale normalization SAE."""


@dataclass
class MultiScaleNormTrainingSAEConfig(VariantTrainingSAEConfig, MultiScaleNormArchitectureFields):
    """Training configuration; every default is the spec's resolution of the paper (docs/spec.md §3 c), except
    the input centring and the gate's z (both measured; see the fields' docs)."""

    inference_config_class: ClassVar[type[SAEConfig]] = MultiScaleNormSAEConfig

    orthogonality_coefficient: float = 0.01
    """lambda2 on ||W_dec W_dec^T - I||_F (code: 0.01; 0 switches C6 off)."""
    gate_ema_decay: float = 0.99
    """beta of the gate's running mean and variance (paper: 0.99; in [0, 1))."""
    importance_weighting: bool = True
    """Weight the L1 by u and scale per-feature gradients by u (C7); False: plain L1."""
    grad_accumulation: int = 4
    """Micro-batches per step (paper: 4). Gradients sum to the full batch's, so tokens per step
    stay those of the baseline; the gate statistics and u move per micro-batch (docs/spec.md §3 d13)."""
    adaptive_lr: bool = True
    """Scale the learning rate by the spike-driven factor rho (C9, docs/spec.md §3 d11)."""
    lr_floor: float = 1e-5
    """The adaptive factor never takes the learning rate below this (paper: 1e-5)."""
    lr_spike_ratio: float = 2.0
    """A pre-clip gradient norm above this times its running average is a spike (> 1)."""
    lr_decay: float = 0.9
    """rho is multiplied by this on a spike (in (0, 1))."""
    lr_recovery: float = 1.1
    """rho is multiplied by this every ``lr_recovery_interval`` steps without a spike (>= 1)."""
    lr_recovery_interval: int = 100
    """Steps between recoveries of rho (>= 1)."""
    grad_norm_ema_decay: float = 0.99
    """Decay of the running average of the pre-clip gradient norm (in [0, 1))."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay on W_enc, W_Q, K and V only (paper: unspecified; >= 0)."""
    reactivation: bool = True
    """Revive dead features from the residual's rank-``reactivation_rank`` subspace (C10)."""
    reactivation_interval: int = 100
    """Steps between reactivation passes (paper: 100; >= 1)."""
    dead_window_steps: int = 1000
    """A feature is dead when it has not fired for this many steps (docs/spec.md §3: 1000; >= 1). Keep it
    below the run length or reactivation never triggers."""
    reactivation_rank: int = 32
    """Rank of the randomized SVD of the residual (paper: 32; >= 1)."""
    reactivation_encoder_scale: float = 0.2
    """A revived encoder column is this times the mean norm of the live columns (> 0)."""

    @override
    def needs_optimizer(self) -> bool:
        # The adaptive learning rate, the decay and the revived features' moment resets act on it.
        return self.adaptive_lr or self.weight_decay > 0 or self.reactivation

    @override
    def validate_training(self) -> None:
        require_fields(
            self, ("orthogonality_coefficient", "weight_decay"), lambda v: v >= 0, ">= 0"
        )
        require_fields(
            self,
            (
                "grad_accumulation",
                "lr_recovery_interval",
                "reactivation_interval",
                "dead_window_steps",
                "reactivation_rank",
            ),
            lambda v: v >= 1,
            ">= 1",
        )
        require_fields(
            self, ("gate_ema_decay", "grad_norm_ema_decay"), lambda v: 0 <= v < 1, "in [0, 1)"
        )
        require_fields(self, ("lr_floor", "reactivation_encoder_scale"), lambda v: v > 0, "> 0")
        require_fields(self, ("lr_spike_ratio",), lambda v: v > 1, "> 1")
        require_fields(self, ("lr_decay",), lambda v: 0 < v < 1, "in (0, 1)")
        require_fields(self, ("lr_recovery",), lambda v: v >= 1, ">= 1")

    @override
    def check_replica_rows(self, rows: int) -> None:
        # Micro-batch j is rows j, j + M, ...: the replicas' j-th micro-batches make one
        # process's j-th only when each replica's rows split into whole rounds of M.
        if rows % self.grad_accumulation:
            raise ValueError(
                f"each data-parallel rank steps on {rows} tokens, which do not split into the "
                f"grad_accumulation={self.grad_accumulation} micro-batches evenly; make the "
                f"per-rank batch a multiple of {self.grad_accumulation}"
            )


class MultiScaleNormEncoder(TokenNormalizingEncoder):
    """Parameters and encoder path shared by the inference and the training SAE.

    Mixed in before SAELens's ``SAE``/``TrainingSAE`` so its ``initialize_weights`` and folds
    replace the linear-encoder ones.
    """

    gate_mean: Tensor
    gate_var: Tensor

    def initialize_weights(self) -> None:
        assert isinstance(self, nn.Module)
        cfg, d_in, d_sae = self.cfg, self.cfg.d_in, self.cfg.d_sae

        def tensor(*shape: int, std: float | None = None, fill: float = 0.0) -> Tensor:
            if std is None:
                return torch.full(shape, fill, dtype=self.dtype, device=self.device)
            return torch.randn(*shape, dtype=self.dtype, device=self.device) * std

        # C11: W_enc ~ N(0, 1/d_in); W_dec ~ N(0, 1/d_sae) with unit rows; zero biases.
        self.W_enc = nn.Parameter(tensor(d_in, d_sae, std=d_in**-0.5))
        self.b_enc = nn.Parameter(tensor(d_sae))
        self.W_dec = nn.Parameter(unit_norm_rows(tensor(d_sae, d_in, std=d_sae**-0.5)))
        self.b_dec = nn.Parameter(tensor(d_in))
        scales = cfg.normalization_scales()
        if scales:
            self.scale_gains = nn.Parameter(tensor(len(scales), d_in, fill=1.0))
            self.scale_biases = nn.Parameter(tensor(len(scales), d_in))
            self.scale_logits = nn.Parameter(tensor(len(scales)))  # equal mixture at init
            if cfg.adaptive_gate:
                self.gate_logit = nn.Parameter(tensor(fill=1.0))  # the code's a = 1
        if cfg.attention:
            d_k = cfg.key_dim()
            self.attention_query = nn.Parameter(tensor(d_in, d_k, std=d_in**-0.5))
            self.attention_keys = nn.Parameter(tensor(cfg.attention_slots, d_k, std=1.0))
            # V = 0: the attention starts as the identity and learns what to add.
            self.attention_values = nn.Parameter(tensor(cfg.attention_slots, d_in))
            self.attention_temperature_logit = nn.Parameter(tensor())
        # The gate's running statistics are part of the inference function (a JumpReLU whose
        # thresholds are these), so they are saved with the weights.
        self.register_buffer("gate_mean", tensor(d_sae))
        self.register_buffer("gate_var", tensor(d_sae, fill=1.0))

    def encoder_input(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_in"], Float[Tensor, "*batch 1"] | None]:
        """What ``W_enc`` reads (C1, C2) and the token scale the codes restore (None: keep raw)."""
        cfg = self.cfg
        x, scale = sae_in, None
        if cfg.normalization != "none":
            # The scales are configuration, not state (a buffer would be left on the meta device by
            # SAE.load_from_disk, which only materializes what the weights file holds).
            scales = torch.tensor(
                cfg.normalization_scales(), dtype=sae_in.dtype, device=sae_in.device
            )
            moments = token_moments(sae_in)
            x = multiscale_normalize(
                sae_in,
                moments,
                self.scale_gains,
                self.scale_biases,
                self.scale_logits,
                scales,
                cfg.norm_eps,
            )
            if cfg.adaptive_gate:
                x = torch.sigmoid(self.gate_logit) * x
            if cfg.restore_scale:
                scale = token_scale(moments, cfg.norm_eps)
        if cfg.attention:
            x = slot_attention(
                x,
                self.attention_query,
                self.attention_keys,
                self.attention_values,
                self.attention_temperature_logit,
            )
        return x, scale

    def firing_thresholds(self) -> Float[Tensor, " d_sae"]:
        if not self.cfg.z_gating:
            return torch.zeros_like(self.gate_mean)
        return gate_thresholds(self.gate_mean, self.gate_var, self.cfg.z_threshold, _GATE_EPS)

    def preactivation(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch 1"] | None]:
        """``x_a W_enc + b_enc`` (C3) and the token scale the codes restore."""
        encoder_input, scale = self.encoder_input(sae_in)
        return encoder_input @ self.W_enc + self.b_enc, scale

    def activation(
        self, pre: Float[Tensor, "*batch d_sae"], scale: Float[Tensor, "*batch 1"] | None
    ) -> Float[Tensor, "*batch d_sae"]:
        """The z-gated, scale-restored codes (C4)."""
        return gated_codes(pre, self.firing_thresholds(), scale)

    @torch.no_grad()
    def fold_and_get_W_dec_norm(self) -> Tensor:
        # Codes are positively homogeneous in (W_enc[:, i], b_enc[i]); the gate's statistics of
        # pre_i scale with it (mean by n, variance by n^2), so thresholds follow.
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec.data.div_(norms.unsqueeze(1))
        self.W_enc.data.mul_(norms)
        self.b_enc.data.mul_(norms)
        self.gate_mean.mul_(norms)
        self.gate_var.mul_(norms.pow(2))
        return norms

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Make the SAE read raw activations when it trained on ``scaling_factor * x``, exactly."""
        attention = (self.attention_query,) if self.cfg.attention else ()
        fold_input_scale(
            self,
            scaling_factor,
            normalizes_input=self.cfg.normalization != "none",
            eps_field="norm_eps",
            restores_scale=self.cfg.restore_scale,
            reads_input=(self.W_enc, *attention),
            writes_input=(self.attention_values,) if self.cfg.attention else (),
        )


class MultiScaleNormSAE(MultiScaleNormEncoder, VariantSAE[MultiScaleNormSAEConfig]):
    """A trained multi-scale normalization SAE (inference; every token encoded on its own)."""


TRAINING_LOG_FILENAME = "multiscale_norm_training.json"
"""Written next to the saved SAE: reactivations and the learning-rate factor of its run."""


@dataclass
class MicroBatch:
    """One micro-batch's forward pass and its two data terms (before averaging over the step)."""

    feature_acts: Tensor
    hidden_pre: Tensor
    sae_out: Tensor
    mse_loss: Tensor
    l1_loss: Tensor


class MultiScaleNormTrainingSAE(
    MultiScaleNormEncoder, VariantTrainingSAE[MultiScaleNormTrainingSAEConfig]
):
    """The multi-scale normalization SAE with its training step and optimizer policy."""

    # Unit rows are restored before each step; the paper projects no gradient (C5).
    tangent_decoder_gradient: ClassVar[bool] = False
    training_buffers: ClassVar[tuple[str, ...]] = (
        "gate_initialized",
        "steps_since_fired",
        "training_step",
        "lr_factor",
        "grad_norm_ema",
        "pending_moment_reset",
        "features_revived",
    )
    training_log_filename: ClassVar[str | None] = TRAINING_LOG_FILENAME

    gate_initialized: Tensor
    steps_since_fired: Tensor
    training_step: Tensor
    lr_factor: Tensor
    grad_norm_ema: Tensor
    pending_moment_reset: Tensor
    features_revived: Tensor

    def __init__(self, cfg: MultiScaleNormTrainingSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        device = self.device
        self.register_buffer("gate_initialized", torch.tensor(False, device=device))
        self.register_buffer(
            "steps_since_fired", torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        )
        self.register_buffer("training_step", torch.tensor(0, dtype=torch.long, device=device))
        self.register_buffer("lr_factor", torch.tensor(1.0, dtype=torch.float64, device=device))
        # A negative average means "no gradient norm seen yet".
        self.register_buffer(
            "grad_norm_ema", torch.tensor(-1.0, dtype=torch.float64, device=device)
        )
        self.register_buffer(
            "pending_moment_reset", torch.zeros(cfg.d_sae, dtype=torch.bool, device=device)
        )
        self.register_buffer("features_revived", torch.tensor(0, dtype=torch.long, device=device))
        self._grad_square_norms: dict[str, Tensor] = {}
        # id -> weak reference: a parameter is watched once; a replaced or copied one anew.
        self._watched_parameters: dict[int, weakref.ref[Tensor]] = {}
        self._lr_before_step: list[float] = []
        self.lr_spikes = 0
        """Steps whose gradient norm shrank the learning-rate factor, in this process (a log)."""

    # ------------------------------------------------------------------ SAELens training hooks

    @override
    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        """lambda2 ||W_dec W_dec^T - I||_F, its decoder gradient scaled by the step's importance."""
        if self.cfg.orthogonality_coefficient == 0:
            return {}
        W_dec = self.W_dec.view_as(self.W_dec)
        if self.cfg.importance_weighting and W_dec.requires_grad:
            importance = self._importance(feature_acts)
            W_dec.register_hook(lambda grad: grad * importance.unsqueeze(1))
        return {
            "orthogonality_loss": self.cfg.orthogonality_coefficient * frame_orthogonality(W_dec)
        }

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """Micro-batches (C9) with their own gate updates and importance scales, then C6."""
        self.prepare_step(step_input)
        x = step_input.sae_in
        if self.training:
            self._watch_gradient_norms()
            if self._reactivation_due():
                self.revive_dead_features(x)
        n_micro = min(self.cfg.grad_accumulation if self.training else 1, x.shape[0])
        # Micro-batch j is rows j, j + M, j + 2M, ...: among data-parallel replicas each holding
        # its slice of the global batch (rows in rank order), the replicas' j-th micro-batches
        # together are one process's j-th, whose statistics they reduce.
        parts = [
            self._micro_batch(x[j::n_micro], step_input.coefficients["l1"]) for j in range(n_micro)
        ]
        # The micro-batch means, weighted by rows, make the batch mean.
        weights = [part.feature_acts.shape[0] / x.shape[0] for part in parts]
        losses = {
            "mse_loss": sum(w * p.mse_loss for w, p in zip(weights, parts, strict=False)),
            "l1_loss": sum(w * p.l1_loss for w, p in zip(weights, parts, strict=False)),
        }
        feature_acts = interleave_rows([p.feature_acts for p in parts])
        sae_out = interleave_rows([p.sae_out for p in parts])
        hidden_pre = interleave_rows([p.hidden_pre for p in parts])
        losses.update(self.calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out))
        if self.training:
            self._count_firing(feature_acts)
        return self.step_output(step_input, sae_out, feature_acts, hidden_pre, losses)

    @override
    def step_metrics(self, output: TrainStepOutput) -> dict[str, Any]:
        return {
            **super().step_metrics(output),
            "multiscale_norm/lr_factor": self.lr_factor.clone(),
            "multiscale_norm/features_revived": self.features_revived.clone(),
        }

    def _micro_batch(self, x: Float[Tensor, "rows d_in"], l1_coefficient: float) -> MicroBatch:
        # Views of the per-feature parameters: their gradients get this micro-batch's importance
        # scale once the codes (and so the importance) exist.
        W_enc, b_enc, W_dec = (p.view_as(p) for p in (self.W_enc, self.b_enc, self.W_dec))
        encoder_input, scale = self.encoder_input(self.process_sae_in(x))
        pre = self.hook_sae_acts_pre(encoder_input @ W_enc + b_enc)
        if self.training:
            self._update_gate_statistics(pre.detach())
        feature_acts = self.hook_sae_acts_post(self.activation(pre, scale))
        sae_out = self.decode_with(feature_acts, W_dec)
        mse_loss = (sae_out - x).pow(2).sum(dim=-1).mean()
        if self.cfg.importance_weighting:
            importance = self._importance(feature_acts)
            l1 = (feature_acts * importance).sum(dim=-1).mean()
            if W_enc.requires_grad:
                W_enc.register_hook(lambda grad: grad * importance)
                b_enc.register_hook(lambda grad: grad * importance)
                W_dec.register_hook(lambda grad: grad * importance.unsqueeze(1))
        else:
            l1 = feature_acts.sum(dim=-1).mean()
        return MicroBatch(feature_acts, pre, sae_out, mse_loss, l1_coefficient * l1)

    # --------------------------------------------------------------------- running statistics

    def _importance(self, feature_acts: Float[Tensor, "rows d_sae"]) -> Tensor:
        """C7's importance ``u`` of these rows (in data-parallel training, of the global
        micro-batch: each replica's mean codes are averaged)."""
        mean_codes = mean_over_replicas(self, feature_acts.detach().mean(dim=0))
        return importance_from_mean_codes(mean_codes, self.W_dec.detach().norm(dim=-1))

    def _moments(self, pre: Float[Tensor, "rows d_sae"]) -> tuple[Tensor, Tensor]:
        """Mean and variance of each pre-activation over these rows (in data-parallel training,
        over the global micro-batch's)."""
        replicas = replicas_of(self)
        if replicas.world_size == 1:
            return batch_moments(pre)
        return moments_from_sums(replicas.sum_(moment_sums(pre)), pre.dtype)

    @torch.no_grad()
    def _update_gate_statistics(self, pre: Float[Tensor, "rows d_sae"]) -> None:
        mean, variance = self._moments(pre)
        if not bool(self.gate_initialized):
            self.gate_mean.copy_(mean)
            self.gate_var.copy_(variance)
            self.gate_initialized.fill_(True)
            return
        weight = 1.0 - self.cfg.gate_ema_decay
        self.gate_mean.lerp_(mean, weight)
        self.gate_var.lerp_(variance, weight)

    @torch.no_grad()
    def _count_firing(self, feature_acts: Float[Tensor, "batch d_sae"]) -> None:
        fired = (feature_acts > 0).any(dim=0)
        # Fired on any replica's share of the batch (a maximum over replicas).
        fired = replicas_of(self).max_(fired.to(torch.int32)).bool()
        self.steps_since_fired.add_(1).masked_fill_(fired, 0)
        self.training_step.add_(1)

    # --------------------------------------------------------------------------- reactivation

    def _reactivation_due(self) -> bool:
        step = int(self.training_step)
        return self.cfg.reactivation and step > 0 and step % self.cfg.reactivation_interval == 0

    @torch.no_grad()
    def revive_dead_features(self, x: Float[Tensor, "batch d_in"]) -> int:
        """C10: re-initialize features silent for ``dead_window_steps`` steps; returns how many.

        Their decoder rows become residual directions from the rank-``reactivation_rank``
        subspace of this batch's residual, their encoder columns the same directions at a fifth of
        the live columns' mean norm, their gate statistics this batch's, and their Adam moments are
        zeroed at the next optimizer step (``pending_moment_reset``).
        """
        dead = dead_features(self.steps_since_fired, self.cfg.dead_window_steps)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        sae_in = self.process_sae_in(x)
        encoder_input, scale = self.encoder_input(sae_in)
        pre = encoder_input @ self.W_enc + self.b_enc
        # The residual lives in input space: undo the centring process_sae_in may have applied.
        target = sae_in + self.b_dec if self.cfg.apply_b_dec_to_input else sae_in
        residual = target - (self.activation(pre, scale) @ self.W_dec + self.b_dec)
        # From the global batch's residual: every replica draws the same sketch (their
        # generators are in step), so each computes the directions one process would.
        residual = replicas_of(self).gather(residual)
        directions = reactivation_directions(residual.float(), n_dead, self.cfg.reactivation_rank)
        directions = directions.to(self.dtype)
        index = dead.nonzero().squeeze(1)
        column_norms = self.W_enc.norm(dim=0)
        live_norm = column_norms[~dead].mean() if n_dead < self.cfg.d_sae else column_norms.mean()
        self.W_dec[index] = directions
        self.W_enc[:, index] = self.cfg.reactivation_encoder_scale * live_norm * directions.T
        self.b_enc[index] = 0.0
        # Every replica takes rank 0's revived rows (the same up to the order of float sums)
        # before their moments are taken over every replica's rows.
        replicas = replicas_of(self)
        for tensor in (self.W_dec, self.W_enc, self.b_enc):
            replicas.broadcast_(tensor.data)
        mean, variance = self._moments(encoder_input @ self.W_enc[:, index])
        self.gate_mean[index] = mean
        self.gate_var[index] = variance
        self.steps_since_fired[index] = 0
        self.pending_moment_reset[index] = True
        self.features_revived.add_(n_dead)
        return n_dead

    # ----------------------------------------------------------- optimizer policy (C9, C10)

    def _watch_gradient_norms(self) -> None:
        """Record each parameter's squared gradient norm as backward finishes accumulating it,
        before SAELens clips; hooks are re-added if parameters were replaced (e.g. on load)."""
        this = weakref.ref(self)
        for name, parameter in self.named_parameters():
            watched = self._watched_parameters.get(id(parameter))
            if watched is not None and watched() is parameter:
                continue

            def record(p: Tensor, name: str = name) -> None:
                owner = this()
                if owner is not None and p.grad is not None:
                    owner._grad_square_norms[name] = p.grad.detach().pow(2).sum()

            parameter.register_post_accumulate_grad_hook(record)
            self._watched_parameters[id(parameter)] = weakref.ref(parameter)

    def decayed_parameters(self) -> list[nn.Parameter]:
        """The matrices AdamW's weight decay applies to (C9): W_enc and the attention's W_Q, K, V."""
        decayed = [self.W_enc]
        if self.cfg.attention:
            decayed += [self.attention_query, self.attention_keys, self.attention_values]
        return decayed

    @override
    @torch.no_grad()
    def before_optimizer_step(self, optimizer: Optimizer) -> None:
        cfg = self.cfg
        grad_norm = self._consume_gradient_norm()
        if cfg.adaptive_lr and grad_norm is not None:
            self._update_lr_factor(optimizer, grad_norm)
        factor = float(self.lr_factor) if cfg.adaptive_lr else 1.0
        self._lr_before_step = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        decoupled_weight_decay(optimizer, self.decayed_parameters(), cfg.weight_decay)
        if bool(self.pending_moment_reset.any()):
            index = self.pending_moment_reset.nonzero().squeeze(1)
            zero_adam_moments(optimizer, self.W_enc, index, dim=1)
            zero_adam_moments(optimizer, self.b_enc, index, dim=0)
            zero_adam_moments(optimizer, self.W_dec, index, dim=0)
            self.pending_moment_reset.zero_()

    @override
    @torch.no_grad()
    def after_optimizer_step(self, optimizer: Optimizer) -> None:
        # Give the scheduler back the learning rate it set: chainable schedulers (cosine) update
        # group["lr"] recursively and must not compound the factor.
        for group, lr in zip(optimizer.param_groups, self._lr_before_step, strict=False):
            group["lr"] = lr
        self._lr_before_step = []

    @override
    def after_gradients_reduced(self) -> None:
        """Data-parallel training averaged the gradients after the hooks above recorded this
        replica's: the controller reads the norm of the averaged ones."""
        self._grad_square_norms = {
            name: p.grad.detach().pow(2).sum()
            for name, p in self.named_parameters()
            if p.grad is not None
        }

    def _consume_gradient_norm(self) -> float | None:
        if not self._grad_square_norms:
            return None
        total = math.sqrt(float(sum(self._grad_square_norms.values())))
        self._grad_square_norms = {}
        return total

    def _update_lr_factor(self, optimizer: Optimizer, grad_norm: float) -> None:
        cfg = self.cfg
        group = optimizer.param_groups[0]
        base_lr = float(group.get("initial_lr", group["lr"])) or cfg.lr_floor
        average = float(self.grad_norm_ema)
        before = float(self.lr_factor)
        after = next_lr_factor(
            before,
            grad_norm,
            average if average >= 0 else None,
            int(self.training_step),
            spike_ratio=cfg.lr_spike_ratio,
            decay=cfg.lr_decay,
            recovery=cfg.lr_recovery,
            recovery_interval=cfg.lr_recovery_interval,
            minimum=min(1.0, cfg.lr_floor / base_lr),
        )
        self.lr_spikes += int(after < before)
        self.lr_factor.fill_(after)
        decay = cfg.grad_norm_ema_decay
        self.grad_norm_ema.fill_(
            grad_norm if average < 0 else decay * average + (1 - decay) * grad_norm
        )

    # ------------------------------------------------------------------------------- saving

    @override
    @override
    def resumable_state(self) -> dict[str, Any]:
        """The learning-rate spike count (everything else the policy keeps is a buffer)."""
        return {"lr_spikes": self.lr_spikes}

    @override
    def load_resumable_state(self, state: dict[str, Any]) -> None:
        self.lr_spikes = int(state.get("lr_spikes", 0))

    def training_log(self) -> dict[str, Any]:
        """The run's final optimizer-policy and reactivation state, as plain data for reports."""
        return {
            "steps": int(self.training_step),
            "features_revived": int(self.features_revived),
            "features_silent_for_dead_window": int(
                dead_features(self.steps_since_fired, self.cfg.dead_window_steps).sum()
            ),
            "lr_factor": float(self.lr_factor),
            "lr_spikes_this_process": self.lr_spikes,
            "grad_norm_average": float(self.grad_norm_ema),
        }


__all__ = [
    "NORMALIZATIONS",
    "TRAINING_LOG_FILENAME",
    "MultiScaleNormArchitectureFields",
    "MultiScaleNormSAE",
    "MultiScaleNormSAEConfig",
    "MultiScaleNormTrainingSAE",
    "MultiScaleNormTrainingSAEConfig",
]

"""PositionAwareSAE: four position-range adapters with a curriculum (seed 004).

Paper: seed 004; the algorithm with its resolutions is ``docs/spec.md`` §6, and the measurements
are in ``docs/variants/position_aware.md``.

    x'   = x - b_dec,  s = std of x' over its d_in entries
    h^_b = (gamma (x' - mean x') / s + beta) W_enc + b_enc            P1, base_norm="input_ln" (default)
         | gamma_b (pre - mean pre) / s_pre + beta_b, pre = x' W_enc + b_enc, s = s_pre
                                                                      P1, base_norm="preact_ln" (paper)
    h_b  = s ReLU(h^_b)                                               base, position-agnostic codes
    D_r  = LN_r(B_r Dropout_0.1(ReLU(A_r ReLU(h^_b))))                P3, low rank, r = r(position)
    h_r  = s ReLU(h^_b + alpha_t D_r)                                 adapted codes (the features)
    x^   = h_r W_dec + b_dec                                          P4, unit decoder rows
    L    = ||x - x^||^2 + lambda (||h_b||_1 + alpha_t ||h_r - h_b||_1)                   P5

``r(p) = min(floor(p R / L), R - 1)`` over the training context L (P2). ``alpha_t`` is 0 for the
first ``min(1000, 0.1 T)`` steps and ramps linearly to 1 at ``min(10000, 0.9 T)`` (P6); its final
value is a buffer used at inference. Adapters have rank ``round(0.0375 d_in)`` by default, which
gives the paper's stated ~15% parameter overhead at any width (docs/spec.md §6 d6). Both LayerNorms and
the scale restoration are evaluated inside matrix products (``position_aware_functional``), every
row's adapter shift enters through one block-sparse product, and the codes' penalties have a
hand-written backward, so the step costs little more than a plain SAE's.

**Positions at inference** are the index along the sequence axis of a ``[batch, pos, d_in]``
input (what ``HookedSAETransformer`` and SAELens's evals pass), plus ``position_offset`` when set
(a forward that does not start at position 0). A ``[batch, d_in]`` input needs
``encode(x, positions=...)``; a ``[batch, 1, d_in]`` input (a cached-generation step looks like
this) needs ``position_offset`` set; otherwise ``encode`` raises rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
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
from sae_variants.architectures.optimizer_policy import decoupled_weight_decay
from sae_variants.architectures.position_aware_functional import (
    codes_and_penalties,
    curriculum_alpha,
    position_ranges,
    preact_ln_codes_preactivation,
    range_adapter_shift,
)
from sae_variants.encoder_gradient import (
    affine_preactivation,
    layer_normalized_scaled_preactivation,
)
from sae_variants.functional import layer_normalized_preactivation, unit_norm_rows
from sae_variants.replicas import replicas_of
from sae_variants.token_context import NeedsTokenContext, SequenceLayout, SequenceStepInput
from sae_variants.validation import check_positions, require_fields

BASE_NORMS = ("preact_ln", "input_ln", "none")
ADAPTER_LNS = ("output", "none")


@dataclass(kw_only=True)
class PositionAwareArchitectureFields(ArchitectureFields):
    """Fields the inference SAE needs (shared by the inference and training configs)."""

    architecture_name: ClassVar[str] = "position_aware"

    position_context: int | None = None
    """L: the training context the ranges divide (paper: 128). None: the run's context size
    (bound by ``bind_run``; a saved SAE always records it). Positions at or beyond it use the
    last range."""
    n_ranges: int = 4
    """R: equal position ranges, one adapter each (paper: 4)."""
    adapters: bool = True
    """False: the base SAE alone (the ablation "no adapters")."""
    adapter_rank: int | None = None
    """rho, the adapters' hidden width; None means round(0.0375 d_in) (about 15% overhead)."""
    adapter_ln: str = "output"
    """LayerNorm on the adapter output (eq. 3; "required" per the paper) or "none"."""
    adapter_ln_gain_init: float = 0.1
    """Initial gain of the adapters' output LayerNorm (> 0; the paper's code used PyTorch's 1.0).
    The LN'd output has unit variance over the features, as large as the normalized base
    pre-activations, so at gain 1 each adapter shifts every feature by about its own typical
    pre-activation once the curriculum reaches it (the measured effect on dead features is in
    ``docs/variants/position_aware.md``). Loading a saved SAE reads the trained gain, so this only
    matters for training."""
    adapter_dropout: float = 0.1
    """Dropout in training (the training SAE in training mode; the inference SAE never drops) on the adapter's rank-rho hidden layer (paper: 0.1
    on its d_sae output; moved inside so that the adapter stays a rank-rho product and no
    [batch, d_sae] random mask is drawn, which alone cost a fifth of a standard step)."""
    base_norm: str = "input_ln"
    """"input_ln": LayerNorm over the input (the spec's fallback, the default); "preact_ln": over
    the d_sae pre-activations (paper, eq. 2), which reconstructed far worse on the embedded model
    (``docs/variants/position_aware.md``); "none": a plain ReLU base."""
    restore_scale: bool = True
    """Multiply codes by the scale the normalization removed, so decoding stays linear (docs/spec.md §6 d3)."""
    ln_eps: float = 1e-5
    """epsilon of the base normalization and the adapters' LayerNorm (> 0)."""
    tied_init: bool = True
    """Initialize W_enc as the transpose of the orthogonal, unit-row W_dec (each feature starts
    reading the direction it writes, as in SAELens's standard SAE); False draws W_enc as an
    independent orthogonal matrix (the paper's code)."""

    def rank(self) -> int:
        return self.adapter_rank or max(1, round(0.0375 * self.d_in))  # type: ignore[attr-defined]

    @override
    def validate_architecture(self) -> None:
        require_fields(self, ("n_ranges",), lambda v: v >= 1, ">= 1")
        if self.position_context is not None and self.position_context < 1:
            raise ValueError(
                f"position_context must be >= 1 (or None), got {self.position_context}"
            )
        require_fields(self, ("ln_eps", "adapter_ln_gain_init"), lambda v: v > 0, "> 0")
        require_fields(self, ("adapter_dropout",), lambda v: 0 <= v < 1, "in [0, 1)")
        if self.adapter_rank is not None and self.adapter_rank < 1:
            raise ValueError(f"adapter_rank must be >= 1 or None, got {self.adapter_rank}")
        if self.base_norm not in BASE_NORMS:
            raise ValueError(
                f"base_norm must be one of {', '.join(BASE_NORMS)}; got {self.base_norm!r}"
            )
        if self.adapter_ln not in ADAPTER_LNS:
            raise ValueError(
                f"adapter_ln must be one of {', '.join(ADAPTER_LNS)}; got {self.adapter_ln!r}"
            )
        if self.position_context is not None and self.n_ranges > self.position_context:
            raise ValueError(
                f"n_ranges={self.n_ranges} exceeds position_context={self.position_context}"
            )
        require_foldable_input_normalization(self)


@dataclass
class PositionAwareSAEConfig(VariantSAEConfig, PositionAwareArchitectureFields):
    """Inference configuration of a trained position-aware SAE."""

    @override
    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.position_context is None:
            raise ValueError(
                "a trained position_aware SAE needs position_context (the context its ranges divide)"
            )


@dataclass
class PositionAwareTrainingSAEConfig(VariantTrainingSAEConfig, PositionAwareArchitectureFields):
    """Training configuration; every default is the spec's resolution of the paper (docs/spec.md §6 c)."""

    inference_config_class: ClassVar[type[SAEConfig]] = PositionAwareSAEConfig

    total_training_steps: int | None = None
    """T, which the curriculum's fractions refer to. None: the run's length (bound by
    ``bind_run``; training refuses to start unbound)."""
    curriculum: bool = True
    """False: alpha = 1 from the first step (the ablation "no curriculum")."""
    curriculum_warm_up_fraction: float = 0.1
    """Base-only phase: alpha = 0 for the first min(1000, this x T) steps (in [0, 1))."""
    curriculum_end_fraction: float = 0.9
    """alpha reaches 1 at min(10000, this x T) steps (in (0, 1], above the warm-up fraction)."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay on W_enc and the adapters' A_r, B_r only (paper: 1e-2; >= 0)."""
    positions_per_context: int = 8
    """P: positions per context in a training batch (uniform over the context)."""

    def sequence_layout(self) -> SequenceLayout:
        """Training rows need their true positions: S contexts x P uniformly drawn positions."""
        return SequenceLayout(self.positions_per_context, "uniform")

    @override
    def bind_run(self, run: RunInfo) -> PositionAwareTrainingSAEConfig:
        return replace(
            self,
            total_training_steps=run_value(self.total_training_steps, run.total_steps),
            position_context=run_value(self.position_context, run.context_size),
        )

    @override
    def needs_optimizer(self) -> bool:
        return self.weight_decay > 0  # the decoupled decay acts on the optimizer's step

    @override
    def validate_training(self) -> None:
        require_fields(self, ("weight_decay",), lambda v: v >= 0, ">= 0")
        require_fields(self, ("positions_per_context",), lambda v: v >= 1, ">= 1")
        require_fields(self, ("curriculum_warm_up_fraction",), lambda v: 0 <= v < 1, "in [0, 1)")
        if not self.curriculum_warm_up_fraction < self.curriculum_end_fraction <= 1:
            raise ValueError(
                "curriculum_end_fraction must be in (curriculum_warm_up_fraction, 1], got "
                f"{self.curriculum_end_fraction}"
            )
        if self.total_training_steps is not None and self.total_training_steps < 1:
            raise ValueError(
                f"total_training_steps must be >= 1 or None, got {self.total_training_steps}"
            )


class PositionAwareEncoder(TokenNormalizingEncoder):
    """Parameters, encoder and folds shared by the inference and the training SAE."""

    alpha: Tensor
    position_offset: int | None = None
    """Added to sequence-axis indices of 3-D inputs: set it when a forward does not start at
    position 0 (e.g. the first new position of a cached-generation step)."""
    drops_adapter_units: ClassVar[bool] = False
    """Whether ``adapter_dropout`` applies (the training SAE's, in training mode)."""

    def initialize_weights(self) -> None:
        assert isinstance(self, nn.Module)
        cfg, d_in, d_sae = self.cfg, self.cfg.d_in, self.cfg.d_sae
        kw = {"dtype": self.dtype, "device": self.device}
        # P8: orthogonal W_enc and W_dec, decoder rows renormalized (orthogonal columns leave rows
        # of norm sqrt(d_in / d_sae), docs/spec.md §6 d13). Tied: each feature starts reading the
        # direction it writes (the measured comparison of the three starts is in
        # docs/variants/position_aware.md).
        self.W_dec = nn.Parameter(
            unit_norm_rows(nn.init.orthogonal_(torch.empty(d_sae, d_in, **kw)))
        )
        tied = self.W_dec.detach().T.contiguous()
        self.W_enc = nn.Parameter(
            tied if cfg.tied_init else nn.init.orthogonal_(torch.empty(d_in, d_sae, **kw))
        )
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        if cfg.base_norm == "preact_ln":
            self.base_ln_gain = nn.Parameter(torch.ones(d_sae, **kw))
            self.base_ln_bias = nn.Parameter(torch.zeros(d_sae, **kw))
        elif cfg.base_norm == "input_ln":
            self.input_ln_gain = nn.Parameter(torch.ones(d_in, **kw))
            self.input_ln_bias = nn.Parameter(torch.zeros(d_in, **kw))
        if cfg.adapters:
            ranges, rank = cfg.n_ranges, cfg.rank()

            def uniform(*shape: int, fan_in: int) -> nn.Parameter:  # nn.Linear's default range
                bound = fan_in**-0.5
                return nn.Parameter(torch.empty(*shape, **kw).uniform_(-bound, bound))

            self.adapter_down = uniform(ranges, d_sae, rank, fan_in=d_sae)
            self.adapter_down_bias = uniform(ranges, rank, fan_in=d_sae)
            self.adapter_up = uniform(ranges, rank, d_sae, fan_in=rank)
            self.adapter_up_bias = uniform(ranges, d_sae, fan_in=rank)
            if cfg.adapter_ln == "output":
                self.adapter_ln_gain = nn.Parameter(
                    torch.full((ranges, d_sae), cfg.adapter_ln_gain_init, **kw)
                )
                self.adapter_ln_bias = nn.Parameter(torch.zeros(ranges, d_sae, **kw))
            # Only the training SAE ever drops: the inference SAE computes the same function in
            # either mode (SAE.load_from_disk leaves modules in training mode, as nn.Module does).
            self.adapter_dropout = (
                nn.Dropout(cfg.adapter_dropout) if self.drops_adapter_units else None
            )
        # The curriculum coefficient reached in training; inference uses it (0 until trained).
        self.register_buffer("alpha", torch.zeros((), **kw))

    # --------------------------------------------------------------------------- positions

    def resolve_positions(self, x: Tensor, positions: Tensor | None) -> Int[Tensor, ...]:
        """Each row's position: given, or the sequence-axis index (+ ``position_offset``) of a
        3-D input; ambiguous cases raise with the way out."""
        d_in = self.cfg.d_in
        if positions is not None:
            checked = check_positions(
                positions, tuple(x.shape[:-1]), where=f"{self.cfg.architecture()} encode"
            )
            return checked.to(x.device)
        if x.ndim == 2:
            raise ValueError(
                f"position_aware encode: each row's position is needed; got [batch, d_in={d_in}] input "
                f"{tuple(x.shape)} without positions. Pass sae.encode(x, positions=...) (a "
                "[batch] tensor of positions in the context), or a [batch, pos, d_in] input whose "
                "sequence axis starts at position 0 (or at sae.position_offset)."
            )
        if x.ndim < 3:
            raise ValueError(
                "position_aware encode: expected [batch, d_in] or [batch, pos, d_in] input, got "
                f"{tuple(x.shape)}"
            )
        length = x.shape[-2]
        if length == 1 and self.position_offset is None:
            raise ValueError(
                "position_aware encode: a single-position input [batch, 1, d_in], which is what a "
                "cached-generation step passes, so its true position is unknown. Set "
                "sae.position_offset to the position of that token (0 for a one-token prompt), or "
                "generate with use_past_kv_cache=False."
            )
        index = torch.arange(length, device=x.device) + (self.position_offset or 0)
        return index.expand(x.shape[:-1])

    # ----------------------------------------------------------------------------- encoder

    def codes_preactivation(
        self, sae_in: Float[Tensor, "rows d_in"]
    ) -> tuple[Float[Tensor, "rows d_sae"], Float[Tensor, "rows 1"] | None]:
        """The base pre-activation whose ReLU are the base codes h_b (P1, with the restored scale
        folded in), and that scale s (None: codes are not rescaled)."""
        cfg = self.cfg
        if cfg.base_norm == "preact_ln":
            return preact_ln_codes_preactivation(
                sae_in,
                self.W_enc,
                self.b_enc,
                self.base_ln_gain,
                self.base_ln_bias,
                cfg.ln_eps,
                cfg.restore_scale,
            )
        # In a training step b_dec's gradient skips the input-side product (encoder_gradient).
        centred = self.centred_input(sae_in)
        if cfg.base_norm == "input_ln" and cfg.restore_scale and centred is not None:
            return layer_normalized_scaled_preactivation(
                centred, self.W_enc, self.b_enc, self.input_ln_gain, self.input_ln_bias, cfg.ln_eps
            )
        if cfg.base_norm != "input_ln" and centred is not None:
            return affine_preactivation(centred, self.W_enc, self.b_enc), None
        if cfg.base_norm == "input_ln":
            return layer_normalized_preactivation(
                sae_in,
                self.W_enc,
                self.b_enc,
                self.input_ln_gain,
                self.input_ln_bias,
                cfg.ln_eps,
                cfg.restore_scale,
            )
        return torch.addmm(self.b_enc, sae_in, self.W_enc), None

    def context_length(self) -> int:
        """L, the context the position ranges divide (a training config must be bound first)."""
        if self.cfg.position_context is None:
            raise ValueError(
                "position_aware: position_context is None; bind the config to its run first "
                "(cfg.bind_run(RunInfo(...)), which sae_variants' runner does) or set it"
            )
        return int(self.cfg.position_context)

    def encode(self, x: Tensor, positions: Tensor | None = None) -> Float[Tensor, "*batch d_sae"]:
        """Codes of ``x``; ``positions`` as the module docstring says (needed for 2-D input)."""
        return self.encode_with_hidden_pre(x, positions)[0]

    def encode_with_hidden_pre(
        self, x: Tensor, positions: Tensor | None = None
    ) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch d_sae"]]:
        """``(codes, adapted pre-activation)`` through SAELens's hooks, at each row's position."""
        positions = self.resolve_positions(self.checked_input(x), positions)
        adapted_pre = self.adapted_preactivation(
            self.process_sae_in(x), positions, float(self.alpha)
        )
        adapted_pre = self.hook_sae_acts_pre(adapted_pre)
        return self.hook_sae_acts_post(torch.relu(adapted_pre)), adapted_pre

    def code_preactivation(
        self, x: Tensor, positions: Tensor | None = None
    ) -> Float[Tensor, "*batch d_sae"]:
        """The adapted pre-activation (codes are its ReLU) at each row's position."""
        return self.encode_with_hidden_pre(x, positions)[1]

    def adapters_act(self, alpha: float) -> bool:
        """Whether the adapters change anything: off, or at alpha = 0, h_r is h_b."""
        return self.cfg.adapters and alpha != 0.0

    def base_and_adapted(
        self, sae_in: Float[Tensor, "rows d_in"], positions: Int[Tensor, " rows"], alpha: float
    ) -> tuple[Float[Tensor, "rows d_sae"], Float[Tensor, "rows d_sae"]]:
        """(h_b, adapted pre-activation): every row's ``s alpha D_r(p)`` (P3) added to its base
        pre-activation by one product; the adapted codes h_r are the ReLU of the second."""
        cfg = self.cfg
        base_pre, scale = self.codes_preactivation(sae_in)
        base_codes = torch.relu(base_pre)
        if not self.adapters_act(alpha):
            return base_codes, base_pre
        with_ln = cfg.adapter_ln == "output"
        factors, blocks = range_adapter_shift(
            base_codes,
            scale,
            position_ranges(positions, self.context_length(), cfg.n_ranges),
            self.adapter_down,
            self.adapter_down_bias,
            self.adapter_up,
            self.adapter_up_bias,
            self.adapter_ln_gain if with_ln else None,
            self.adapter_ln_bias if with_ln else None,
            cfg.ln_eps,
            alpha,
            self._drop_adapter_units if self._dropping_adapter_units() else None,
        )
        return base_codes, torch.addmm(base_pre, factors, blocks)

    def _dropping_adapter_units(self) -> bool:
        return self.adapter_dropout is not None and self.adapter_dropout.training

    def _drop_adapter_units(self, hidden: Float[Tensor, "rows rank"]) -> Float[Tensor, "rows rank"]:
        """``adapter_dropout`` on the adapters' hidden units; in data-parallel training the mask is
        this replica's rows of the one a single process would draw for the global batch."""
        assert self.adapter_dropout is not None
        return replicas_of(self).dropout(hidden, self.adapter_dropout.p)

    def adapted_preactivation(
        self, sae_in: Float[Tensor, "*batch d_in"], positions: Int[Tensor, "*batch"], alpha: float
    ) -> Float[Tensor, "*batch d_sae"]:
        """The adapted pre-activation (codes are its ReLU) for any leading shape."""
        _, adapted = self.base_and_adapted(
            sae_in.reshape(-1, self.cfg.d_in), positions.reshape(-1), alpha
        )
        return adapted.reshape(*sae_in.shape[:-1], self.cfg.d_sae)

    # ------------------------------------------------------------------------------- folds

    @torch.no_grad()
    def fold_and_get_W_dec_norm(self) -> Tensor:
        """Give decoder rows unit norm and scale each feature's code by the old norm, exactly:
        codes are positively homogeneous in h^ (and D), so feature i's normalization output,
        its adapter output and its pre-activation scale by n_i; the adapters read h^ / n."""
        cfg = self.cfg
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec.data.div_(norms.unsqueeze(1))
        if cfg.base_norm == "preact_ln":
            self.base_ln_gain.data.mul_(norms)
            self.base_ln_bias.data.mul_(norms)
        else:
            self.W_enc.data.mul_(norms)
            self.b_enc.data.mul_(norms)
        if cfg.adapters:
            self.adapter_down.data.div_(norms.view(1, -1, 1))
            if cfg.adapter_ln == "output":
                self.adapter_ln_gain.data.mul_(norms)
                self.adapter_ln_bias.data.mul_(norms)
            else:
                self.adapter_up.data.mul_(norms)
                self.adapter_up_bias.data.mul_(norms)
        return norms

    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Make the SAE read raw activations when it trained on ``scaling_factor * x``, exactly
        (the pre-activation LayerNorm sees unchanged pre-activations once ``W_enc`` absorbs it)."""
        fold_input_scale(
            self,
            scaling_factor,
            normalizes_input=self.cfg.base_norm == "input_ln",
            eps_field="ln_eps",
            restores_scale=self.cfg.restore_scale,
            reads_input=(self.W_enc,),
        )


class PositionAwareSAE(PositionAwareEncoder, VariantSAE[PositionAwareSAEConfig]):
    """A trained position-aware SAE (inference; positions from the sequence axis or the caller).
    No dropout in any mode: its output does not depend on ``.eval()``."""


class PositionAwareTrainingSAE(
    NeedsTokenContext, PositionAwareEncoder, VariantTrainingSAE[PositionAwareTrainingSAEConfig]
):
    """The position-aware SAE with its curriculum training step (positions from the pipeline)."""

    drops_adapter_units: ClassVar[bool] = True

    @override
    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        raise NotImplementedError(
            "position_aware's penalties (P5) read the base codes h_b, which SAELens's "
            "calculate_aux_loss(feature_acts, hidden_pre, ...) does not carry; its "
            "training_forward_pass computes them with the codes in one fused pass"
        )

    def curriculum_value(self, step: int) -> float:
        cfg = self.cfg
        if not (cfg.adapters and cfg.curriculum):
            return 1.0 if cfg.adapters else 0.0
        if cfg.total_training_steps is None:
            raise ValueError(
                "position_aware's curriculum is defined as fractions of the run: bind the config "
                "to its run (cfg.bind_run(RunInfo(...)), which sae_variants' runner does) or set "
                "total_training_steps"
            )
        return curriculum_alpha(
            step,
            cfg.total_training_steps,
            cfg.curriculum_warm_up_fraction,
            cfg.curriculum_end_fraction,
        )

    @override
    def prepare_step(self, step_input: TrainStepInput) -> SequenceStepInput:
        step_input = self.with_token_context(super().prepare_step(step_input))
        if self.training:
            with torch.no_grad():
                self.alpha.fill_(self.curriculum_value(step_input.n_training_steps))
        return step_input

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """P5 with the codes and both penalties from one fused pass (``codes_and_penalties``)."""
        step_input = self.prepare_step(step_input)
        x = step_input.sae_in
        alpha = float(self.alpha)
        h_b, adapted_pre = self.base_and_adapted(
            self.process_sae_in(x), step_input.token_context.positions, alpha
        )
        rows = x.shape[0]
        if self.adapters_act(alpha):
            h_r, l1_sum, deviation_sum = codes_and_penalties(h_b, adapted_pre)
        else:
            h_r, l1_sum, deviation_sum = h_b, h_b.sum(), None
        feature_acts = self.hook_sae_acts_post(h_r)
        sae_out = self.decode(feature_acts)
        l1 = step_input.coefficients["l1"]
        losses = {
            "mse_loss": (sae_out - x).pow(2).sum(dim=-1).mean(),
            "l1_loss": l1 * l1_sum / rows,
        }
        if deviation_sum is not None:
            losses["deviation_loss"] = l1 * alpha * deviation_sum / rows
        return self.step_output(step_input, sae_out, feature_acts, adapted_pre, losses)

    @override
    def step_metrics(self, output: TrainStepOutput) -> dict[str, Any]:
        return {**super().step_metrics(output), "position_aware/alpha": self.alpha.clone()}

    # ------------------------------------------------- optimizer policy (AdamW decay, P7)

    def decayed_parameters(self) -> list[nn.Parameter]:
        """W_enc and the adapters' A_r, B_r: the matrices the paper's AdamW decays."""
        return (
            [self.W_enc, self.adapter_down, self.adapter_up] if self.cfg.adapters else [self.W_enc]
        )

    @override
    def before_optimizer_step(self, optimizer: Optimizer) -> None:
        decoupled_weight_decay(optimizer, self.decayed_parameters(), self.cfg.weight_decay)

    def parameter_overhead(self) -> float:
        """Adapter parameters over the base SAE's (encoder, decoder, biases, base normalization),
        counted on this module."""
        adapter = sum(p.numel() for n, p in self.named_parameters() if n.startswith("adapter_"))
        base = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("adapter_"))
        return adapter / base


def parameter_overhead(cfg: PositionAwareArchitectureFields) -> float:
    """The adapters' parameter overhead a config implies, without building it (e.g. at Gemma-2-2B
    shapes): ``R (2 d_sae rho + rho + d_sae [+ 2 d_sae LN]) / (2 d_in d_sae + d_sae + d_in [+ base LN])``."""
    d_in, d_sae, rank, ranges = cfg.d_in, cfg.d_sae, cfg.rank(), cfg.n_ranges  # type: ignore[attr-defined]
    if not cfg.adapters:
        return 0.0
    adapter = ranges * (
        2 * d_sae * rank + rank + d_sae + (2 * d_sae if cfg.adapter_ln == "output" else 0)
    )
    base_norm = {"preact_ln": 2 * d_sae, "input_ln": 2 * d_in, "none": 0}[cfg.base_norm]
    return adapter / (2 * d_in * d_sae + d_sae + d_in + base_norm)


__all__ = [
    "PositionAwareSAE",
    "PositionAwareSAEConfig",
    "PositionAwareTrainingSAE",
    "PositionAwareTrainingSAEConfig",
    "parameter_overhead",
]

"""What every variant of this package shares: its configs' life cycle, its encode/decode path,
its decoder constraint, its training-step output and its saving.

A variant module defines four public classes, as SAELens's own architectures do, on these bases:

- :class:`VariantSAEConfig` / :class:`VariantTrainingSAEConfig`: the inference and training
  configs. The variant's *architecture fields* (those the inference SAE needs) sit in a
  :class:`ArchitectureFields` dataclass mixed into both, whose ``validate_architecture`` runs in
  both ``__post_init__``; the architecture name is stated once, on that mixin.
- :class:`VariantSAE` / :class:`VariantTrainingSAE`: the inference and training SAEs. The
  variant's encoder is a mixin with ``preactivation`` (and, if not ReLU, ``activation``); the
  bases run it through SAELens's hooks and decode through SAELens's decode chain.

The training contract is one-way: a training pipeline hands the config its run's facts once,
``cfg.bind_run(RunInfo(...))``, which returns a re-validated config; the SAE is built from that.
Everything the training SAE needs around the optimizer it gets from ``bind_optimizer``, called
by whoever owns the optimizer (never through process-global hooks).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from jaxtyping import Float
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    SAEMetadata,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from sae_variants.encoder_gradient import (
    CentredInput,
    affine_preactivation,
    split_centred_input,
)
from sae_variants.functional import (
    fraction_of_variance_unexplained,
    normalize_rows_,
    remove_parallel_component,
)
from sae_variants.replicas import Replicas
from sae_variants.sparse_decode import SPARSE_DECODE_CROSSOVER, decode_product
from sae_variants.validation import (
    check_activations,
    check_codes,
    check_decoded,
    require_fields,
)

C = TypeVar("C", bound=SAEConfig)
TC = TypeVar("TC", bound=TrainingSAEConfig)


@dataclass(frozen=True)
class RunInfo:
    """The facts of one training run that a variant's schedules are defined against."""

    total_steps: int
    """Optimizer steps in the run (training tokens // batch tokens)."""
    lr_warm_up_steps: int
    """Steps of the learning-rate warm-up (schedules the papers tie to it follow it)."""
    context_size: int
    """Tokens per context the activations were computed on."""

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.context_size < 1 or self.lr_warm_up_steps < 0:
            raise ValueError(
                "RunInfo needs total_steps >= 1, lr_warm_up_steps >= 0 and context_size >= 1; got "
                f"{self.total_steps}, {self.lr_warm_up_steps}, {self.context_size}"
            )


def run_value(value: int | None, from_run: int) -> int:
    """A run-bound field's value: what the user set, or else the run's."""
    return from_run if value is None else value


@dataclass(kw_only=True)
class ArchitectureFields:
    """Base of a variant's architecture fields (shared by its inference and training configs)."""

    architecture_name: ClassVar[str]
    """The SAELens architecture key both configs report."""

    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the first invalid architecture field (none by default)."""


def _check_finite_numbers(cfg: object) -> None:
    # A NaN or inf hyperparameter passes every ">= 0"-style range check and trains a NaN SAE.
    for f in fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")


def _check_input_normalization(cfg: Any) -> None:
    # SAELens's run-time LayerNorm of the input divides by the std over d_in features: with one
    # feature that is 0/0 (NaN codes), so refuse it here.
    if getattr(cfg, "normalize_activations", None) == "layer_norm" and cfg.d_in < 2:
        raise ValueError(
            f"normalize_activations='layer_norm' needs d_in >= 2 (a LayerNorm over one feature "
            f"divides by a zero spread), got d_in={cfg.d_in}"
        )


PACKAGE = "sae-variants"


def package_version() -> str:
    """The installed ``sae-variants`` version (``unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def loading_requirements(saved_architecture: str) -> dict[str, str]:
    """What ``cfg.json`` records for loading: this package's version, and how to load an SAE
    saved as ``saved_architecture`` (SAELens alone for its built-ins; otherwise
    ``import sae_variants`` first, which registers the architecture)."""
    registered = SAE_CLASS_REGISTRY.get(saved_architecture)
    stock = registered is not None and registered[0].__module__.startswith("sae_lens.")
    version = package_version()
    requirement = PACKAGE if version == "unknown" else f"{PACKAGE}>={version}"
    return {
        "sae_variants_version": version,
        "load_with": "sae_lens alone (a SAELens built-in architecture)"
        if stock
        else f"pip install '{requirement}', then `import sae_variants` before "
        "SAE.load_from_disk / SAE.from_pretrained",
    }


@dataclass
class VariantSAEConfig(SAEConfig):
    """Inference config of a variant: validates its architecture fields on construction.

    ``metadata`` also admits the plain dict ``SAEConfig.from_dict`` passes when SAELens loads a
    saved SAE (it builds ``cfg_class(**saved)`` and only then replaces it); it is converted to
    ``SAEMetadata`` at once, so run-time type checks hold.
    """

    metadata: SAEMetadata | dict[str, Any] = field(default_factory=SAEMetadata)  # type: ignore[assignment]

    @override
    @classmethod
    def architecture(cls) -> str:
        return cls.architecture_name  # type: ignore[attr-defined]

    @override
    def __post_init__(self) -> None:
        if isinstance(self.metadata, dict):
            self.metadata = SAEMetadata(**self.metadata)
        super().__post_init__()
        _check_finite_numbers(self)
        _check_input_normalization(self)
        self.validate_architecture()  # type: ignore[attr-defined]


@dataclass
class VariantTrainingSAEConfig(TrainingSAEConfig):
    """Training config of a variant: validates everything on construction and on ``bind_run``."""

    inference_config_class: ClassVar[type[SAEConfig]]
    """The config the trained SAE is saved with (its own, or a SAELens built-in's)."""

    l1_coefficient: float = 0.04
    """lambda, the weight of the variant's L1 sparsity term (the papers' 0.04; calibrate it for a
    target L0; >= 0). What it multiplies is the variant's own (see its loss)."""
    l1_warm_up_steps: int = 0
    """Linear warm-up of lambda from 0, in steps (>= 0)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return cls.architecture_name  # type: ignore[attr-defined]

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return self.inference_config_class

    @override
    def _metadata_with_training_info(self) -> dict[str, Any]:
        """SAELens's metadata (written into ``cfg.json``) plus what loading the SAE needs, so a
        tool that meets an unknown architecture can say which package to install."""
        return {
            **super()._metadata_with_training_info(),
            **loading_requirements(self.inference_config_class.architecture()),
        }

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _check_finite_numbers(self)
        _check_input_normalization(self)
        self.validate_architecture()  # type: ignore[attr-defined]
        require_fields(self, ("l1_coefficient",), lambda v: v >= 0, ">= 0")
        require_fields(self, ("l1_warm_up_steps",), lambda v: v >= 0, ">= 0 steps")
        self.validate_training()

    def validate_training(self) -> None:
        """Raise ``ValueError`` naming the first invalid training field (none by default)."""

    def bind_run(self, run: RunInfo) -> VariantTrainingSAEConfig:
        """This config with the fields defined by the run filled in (those the user left at
        ``None``), re-validated. Binding a bound config changes nothing."""
        del run
        return self

    def needs_optimizer(self) -> bool:
        """Whether training acts on the optimizer (the SAE must then be ``bind_optimizer``-ed)."""
        return False

    def check_replica_rows(self, rows: int) -> None:
        """Raise ``ValueError`` if data-parallel replicas stepping on ``rows`` rows each cannot
        train as one process on all their rows does (any count can, by default)."""


class OptimizerNotBoundError(RuntimeError):
    """A variant whose training acts on the optimizer trained without being bound to one."""


class VariantModule:
    """The encode/decode path shared by a variant's inference and training SAEs.

    A variant's encoder mixin provides :meth:`preactivation` (and :meth:`activation` when its
    codes are not the ReLU of the pre-activation); SAELens's hooks run around both exactly where
    they run in SAELens's standard SAE, so splicing and caching behave the same.
    """

    cfg: Any
    dtype: torch.dtype
    device: torch.device
    W_enc: torch.nn.Parameter
    b_enc: torch.nn.Parameter
    W_dec: torch.nn.Parameter
    b_dec: torch.nn.Parameter
    d_head: int | None
    process_sae_in: Callable[[Tensor], Tensor]
    hook_sae_acts_pre: Callable[[Tensor], Tensor]
    hook_sae_acts_post: Callable[[Tensor], Tensor]
    hook_sae_recons: Callable[[Tensor], Tensor]
    run_time_activation_norm_fn_out: Callable[[Tensor], Tensor]
    reshape_fn_out: Callable[[Tensor, int | None], Tensor]

    def preactivation(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch 1"] | None]:
        """The pre-activation of ``sae_in`` (``process_sae_in`` already applied) and the per-token
        scale the codes restore (``None``: they restore none)."""
        raise NotImplementedError

    def activation(
        self, pre: Float[Tensor, "*batch d_sae"], scale: Float[Tensor, "*batch 1"] | None
    ) -> Float[Tensor, "*batch d_sae"]:
        """The codes of a pre-activation: ReLU by default (a restored scale is inside ``pre``)."""
        del scale
        return torch.relu(pre)

    def code_preactivation(
        self, x: Tensor, positions: Tensor | None = None
    ) -> Float[Tensor, "*batch d_sae"]:
        """The pre-activation in code units: a continuous function of ``x`` equal to the codes
        wherever a feature fires (the restored token scale applied). What an export to a stock
        SAELens architecture fits (``sae_variants.saelens_export``). ``positions``: ignored by a
        per-token encoder."""
        del positions
        pre, scale = self.preactivation(self.process_sae_in(self.checked_input(x)))
        return pre if scale is None else pre * scale

    def centred_input(self, sae_in: Float[Tensor, "*batch d_in"]) -> CentredInput | None:
        """``process_sae_in``'s output split for the encoder forms whose backward skips the
        input-side product (``sae_variants.encoder_gradient``); ``None``: use the plain form."""
        return split_centred_input(sae_in, self.b_dec, bool(self.cfg.apply_b_dec_to_input))

    def affine_preactivation(
        self, sae_in: Float[Tensor, "*batch d_in"]
    ) -> Float[Tensor, "*batch d_sae"]:
        """``sae_in W_enc + b_enc``; in a training step by the split form, whose backward skips
        the input-side product."""
        centred = self.centred_input(sae_in)
        if centred is not None:
            return affine_preactivation(centred, self.W_enc, self.b_enc)
        return sae_in @ self.W_enc + self.b_enc

    def checked_input(self, x: Tensor) -> Float[Tensor, "*batch d_in"]:
        """``x`` once it is known to be finite floating ``[..., d_in]`` activations (the error
        names what arrived). One pass over ``[..., d_in]``: under 1% of an encode."""
        check_activations(x, self.cfg.d_in, where=f"{self.cfg.architecture()} encode")
        return x

    def encode_with_hidden_pre(
        self, x: Tensor
    ) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch d_sae"]]:
        """``(codes, pre-activation)`` through ``hook_sae_acts_pre`` and ``hook_sae_acts_post``.
        Refuses non-floating, non-finite, 0-D or wrongly sized input; an empty batch gives
        empty codes."""
        pre, scale = self.preactivation(self.process_sae_in(self.checked_input(x)))
        pre = self.hook_sae_acts_pre(pre)
        return self.hook_sae_acts_post(self.activation(pre, scale)), pre

    def decode(self, feature_acts: Tensor) -> Float[Tensor, "*batch d_in"]:
        """``f W_dec + b_dec`` through ``hook_sae_recons``, output normalization and the hook_z
        reshape: SAELens's own decode chain."""
        return self.decode_with(feature_acts, self.W_dec)

    def decode_with(
        self, feature_acts: Tensor, W_dec: Float[Tensor, "d_sae d_in"]
    ) -> Float[Tensor, "*batch d_in"]:
        """:meth:`decode` with another view of the decoder (one whose gradient a step rescales).
        Refuses non-floating, 0-D or wrongly sized codes; a NaN or inf in the output is refused
        with its cause (codes, weights or overflow) wherever :meth:`checks_decoded_output`."""
        where = f"{self.cfg.architecture()} decode"
        check_codes(feature_acts, self.cfg.d_sae, where=where)
        feature_acts = feature_acts.to(W_dec.dtype)  # as encode casts its input to the SAE's
        decoded = decode_product(feature_acts, W_dec, self.sparse_decode_density()) + self.b_dec
        if self.checks_decoded_output():
            check_decoded(feature_acts, decoded, (W_dec, self.b_dec), where=where)
        sae_out = self.hook_sae_recons(decoded)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)
        return self.reshape_fn_out(sae_out, self.d_head)

    def checks_decoded_output(self) -> bool:
        """Whether decode refuses a non-finite output (always, for an inference SAE)."""
        return True

    def sparse_decode_density(self) -> float:
        """The code density at or below which decode runs over the active codes only
        (``sae_variants.sparse_decode``); 0: always dense (an inference SAE)."""
        return 0.0


class VariantSAE(VariantModule, SAE[C]):
    """Inference SAE of a variant: a per-token function of its input (no mode dependence)."""

    @override
    def encode(self, x: Tensor) -> Float[Tensor, "*batch d_sae"]:
        return self.encode_with_hidden_pre(x)[0]


class VariantTrainingSAE(VariantModule, TrainingSAE[TC]):
    """Training SAE of a variant: the decoder constraint, the step's output, saving.

    Decoder rows have unit norm: they are restored before every training step and folded exactly
    into the encoder when the SAE is saved.

    Subclasses set the class attributes below, extend :meth:`training_forward_pass` through
    ``super()`` where SAELens's loss template fits (MSE + ``calculate_aux_loss``), and report
    their own figures in :meth:`step_metrics`, which runs on logging steps only.
    """

    tangent_decoder_gradient: ClassVar[bool] = True
    """The decoder's gradient loses its radial part, so a step rotates a row but does not grow
    it and the renormalization before the next step does not undo the optimizer's work."""
    training_buffers: ClassVar[tuple[str, ...]] = ()
    """Buffers that only training reads (left out of the saved inference SAE)."""
    training_log_filename: ClassVar[str | None] = None
    """File written beside the saved SAE with :meth:`training_log`, if any."""

    replicas: Replicas | None = None
    """The data-parallel replicas this SAE trains among (set by the trainer that runs them;
    ``None``: trained in one process). A variant reduces its running statistics across them
    through ``sae_variants.replicas``."""

    _optimizer_hooks: tuple[RemovableHandle, ...] = ()
    _tangent_hooked: Callable[[], Tensor | None] = staticmethod(lambda: None)

    sparse_decode_max_density: float = SPARSE_DECODE_CROSSOVER
    """In training mode, decode over the active codes only while at most this fraction of them
    is non-zero (0 turns it off); the default is the crossover measured by
    ``sae-variants benchmark --sparse-decode``."""

    @override
    def checks_decoded_output(self) -> bool:
        """Outside training mode only: a training step's non-finite output is the trainer's to
        report (with the step and the loss terms), not decode's."""
        return not self.training

    @override
    def sparse_decode_density(self) -> float:
        return self.sparse_decode_max_density if self.training else 0.0

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        """SAELens's scheduled coefficients: lambda (ramped over ``l1_warm_up_steps``); a variant
        adds its own terms' through ``super()``."""
        return {"l1": TrainCoefficientConfig(self.cfg.l1_coefficient, self.cfg.l1_warm_up_steps)}

    # ----------------------------------------------------------------------- the training step

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """SAELens's template (MSE + ``calculate_aux_loss``) behind :meth:`prepare_step`."""
        step_input = self.prepare_step(step_input)
        return self.finish_step(step_input, super().training_forward_pass(step_input))

    def prepare_step(self, step_input: TrainStepInput) -> TrainStepInput:
        """What runs before every training forward pass: the input check, the optimizer check
        and, in training mode, the decoder constraint. Returns the step input the pass uses
        (a subclass may return it enriched, e.g. with the rows' token context)."""
        x = step_input.sae_in
        if x.ndim != 2 or x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"{self.cfg.architecture()} trains on [batch, d_in={self.cfg.d_in}] activations, "
                f"got {tuple(x.shape)}"
            )
        if not self.training:
            return step_input
        if self.cfg.needs_optimizer() and not self._optimizer_hooks:
            raise OptimizerNotBoundError(
                f"the {self.cfg.architecture()!r} SAE acts on its optimizer during training (see "
                "its config's needs_optimizer()), and no optimizer is bound to it. SAELens's "
                "LanguageModelSAETrainingRunner does not expose its optimizer; train with "
                "sae_variants.integrations' variant runner (or `sae-variants train`), or call "
                "sae.bind_optimizer(optimizer) in your own loop."
            )
        with torch.no_grad():
            normalize_rows_(self.W_dec)
        if self.tangent_decoder_gradient:
            self._project_decoder_gradients()
        return step_input

    def finish_step(self, step_input: TrainStepInput, output: TrainStepOutput) -> TrainStepOutput:
        """Attach :meth:`step_metrics` on logging steps (nothing is synchronized otherwise)."""
        if step_input.is_logging_step:
            output.metrics.update(self.step_metrics(output))
        return output

    def step_output(
        self,
        step_input: TrainStepInput,
        sae_out: Tensor,
        feature_acts: Tensor,
        hidden_pre: Tensor,
        losses: dict[str, Tensor],
    ) -> TrainStepOutput:
        """A step's output for a variant that computes its own losses: their sum is the loss."""
        loss = sum(losses.values(), torch.zeros((), device=sae_out.device))
        output = TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=loss,
            losses=losses,  # type: ignore[arg-type]
        )
        return self.finish_step(step_input, output)

    def step_metrics(self, output: TrainStepOutput) -> dict[str, Any]:
        """Figures logged beside SAELens's own on logging steps, under ``<architecture>/``;
        values may be tensors or zero-argument callables (read only when logged)."""
        x, x_hat = output.sae_in.detach(), output.sae_out.detach()
        return {
            f"{self.cfg.architecture()}/fvu": lambda: fraction_of_variance_unexplained(x, x_hat)
        }

    def _project_decoder_gradients(self) -> None:
        # Installed once per Parameter object (a load that replaces the parameter, or a deepcopy
        # of the module, gets its own); a weak reference, so a copy never inherits the mark.
        weight = self.W_dec
        if self._tangent_hooked() is not weight:
            weight.register_hook(lambda grad: remove_parallel_component(grad, weight.detach()))
            self._tangent_hooked = weakref.ref(weight)

    # ------------------------------------------------------------------------- the optimizer

    def bind_optimizer(self, optimizer: Optimizer) -> None:
        """Have ``optimizer`` call :meth:`before_optimizer_step` / :meth:`after_optimizer_step`
        around each of its steps (once per optimizer; the owner of the optimizer calls this)."""
        if not any(p is self.W_dec for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("bind_optimizer: the optimizer does not hold this SAE's parameters")
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = (
            optimizer.register_step_pre_hook(lambda opt, *_: self.before_optimizer_step(opt)),
            optimizer.register_step_post_hook(lambda opt, *_: self.after_optimizer_step(opt)),
        )

    def before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Runs right before each step of the bound optimizer (nothing by default)."""

    def after_gradients_reduced(self) -> None:
        """Runs in data-parallel training once every parameter's gradient is the average over
        the replicas (end of backward, before the trainer clips; nothing by default)."""

    def after_optimizer_step(self, optimizer: Optimizer) -> None:
        """Runs right after each step of the bound optimizer (nothing by default)."""

    # ----------------------------------------------------------------------------- saving

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        """Save the inference SAE; unit decoder rows are first made exact by folding the last
        step's drift into the encoder (in place: the module computes the same function), and
        :meth:`training_log` is written beside it."""
        self.fold_W_dec_norm()
        saved = super().save_inference_model(path)
        if self.training_log_filename is not None:
            log = json.dumps(self.training_log(), indent=1)
            (Path(path) / self.training_log_filename).write_text(log)
        return saved

    def training_log(self) -> dict[str, Any]:
        """Plain data about the run, written beside the saved SAE (see ``training_log_filename``)."""
        return {}

    def resumable_state(self) -> dict[str, Any]:
        """What a resumed run needs beside the parameters and buffers (which SAELens's checkpoint
        holds): plain data (numbers, strings, lists, dicts, tensors) kept outside them, such as a
        log of decisions. Nothing by default."""
        return {}

    def load_resumable_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`resumable_state` returned."""
        del state

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        for name in self.training_buffers:
            state_dict.pop(name, None)

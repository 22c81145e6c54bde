"""What a training run is: :class:`TrainRequest` (the user's choices, with presets for the rest)
and the SAELens ``LanguageModelSAERunnerConfig`` it resolves to, for any model, without weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAEConfig
from transformer_lens import HookedTransformerConfig

import sae_variants  # noqa: F401  (registers this package's architectures with SAELens)
from sae_variants.integrations.models import model_config
from sae_variants.integrations.models.hooks import hook_name as site_hook_name
from sae_variants.integrations.models.hooks import hook_width
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.activation_cache import CacheInfo, open_cache
from sae_variants.integrations.training.config_arguments import read_field_value
from sae_variants.integrations.training.datasets import AUSTEN, is_local_dataset
from sae_variants.integrations.training.devices import AUTO, resolve_device
from sae_variants.integrations.training.finite_guard import refuse_non_finite_config
from sae_variants.integrations.training.presets import (
    OFFLINE_MODELS,
    TrainingPreset,
    default_preset,
    training_preset,
)

PAPER_DATASET = "monology/pile-uncopyrighted"
"""The dataset the seed papers streamed for Gemma-2-2B (needs the hub)."""


def default_dataset(model_name: str) -> str:
    """The bundled Austen text for the offline models, the papers' Pile otherwise."""
    return AUSTEN if model_name in OFFLINE_MODELS else PAPER_DATASET


MANAGED_SAE_FIELDS = frozenset({"d_in", "d_sae", "metadata", "device", "dtype"})
"""Fields of an SAE training config that the request sets itself (width from the hook and
``d_sae``, device and dtype from the run); they cannot be overridden by name."""

REQUEST_RUNNER_FIELDS = frozenset(
    {
        # the request's own fields (and their command-line flags) decide these:
        "sae",
        "model_name",
        "hook_name",
        "dataset_path",
        "context_size",
        "training_tokens",
        "train_batch_size_tokens",
        "lr",
        "lr_warm_up_steps",
        "n_checkpoints",
        "device",
        "autocast",
        "autocast_lm",
        "seed",
        "output_path",
        "checkpoint_path",
        "logger",
        "log_to_wandb",
        "wandb_project",
        "run_name",
        # derived from where the data comes from (a hub name streams; a cache is one):
        "is_dataset_tokenized",
        "streaming",
        "use_cached_activations",
        "cached_activations_path",
        # resuming is not a field override (SAELens's resume restores only part of a variant)
        "resume_from_checkpoint",
        # recorded by SAELens, not chosen
        "hook_eval",
        "sae_lens_version",
        "sae_lens_training_version",
    }
)
"""``LanguageModelSAERunnerConfig``/``LoggingConfig`` fields that ``runner_options`` may not set."""


@dataclass
class TrainRequest:
    """Everything a training run needs; defaults give the embedded-model demo."""

    architecture: str = "standard"
    """A registered SAELens training architecture (built-in or from ``sae_variants``)."""
    model_name: str = EMBEDDED_MODEL_NAME
    model_path: str | None = None
    """A local Hugging Face folder with ``model_name``'s weights (see ``models.load_model``)."""
    layer: int | None = None
    """Block index; ``None`` picks the middle of the model (``n_layers // 2 - 1``)."""
    site: str = "resid_post"
    hook_name: str | None = None
    """An explicit TransformerLens hook name; overrides ``layer`` and ``site``."""
    expansion_factor: int = 8
    """``d_sae = expansion_factor * d_in`` unless ``d_sae`` is given."""
    d_sae: int | None = None
    preset: str | None = None
    """A training preset name; ``None`` means :func:`default_preset` of the model."""
    training_tokens: int | None = None
    train_batch_size_tokens: int | None = None
    lr: float | None = None
    sae_options: dict[str, Any] = field(default_factory=dict)
    """Architecture hyperparameters, e.g. ``{"l1_coefficient": 5.0}``."""
    runner_options: dict[str, Any] = field(default_factory=dict)
    """Further ``LanguageModelSAERunnerConfig`` (and ``LoggingConfig``) fields by name, e.g.
    ``{"adam_beta2": 0.99, "n_batches_in_buffer": 32}``, applied over what the request and its
    preset resolve; the fields the request decides itself (:data:`REQUEST_RUNNER_FIELDS`) are
    refused here: they have their own request fields."""
    output_path: Path = Path("sae_runs/latest")
    overwrite: bool = False
    dataset_path: str | None = None
    """``"austen"``, a local text/JSONL/JSON/parquet file or saved dataset folder, or a hub dataset
    name; ``None`` means :func:`default_dataset` of the model."""
    n_checkpoints: int = 0
    """Checkpoints SAELens writes during the run, evenly spaced (0: none)."""
    checkpoint_every: int | None = None
    """A complete, resumable checkpoint every this many steps (the newest is kept; SIGINT and
    SIGTERM write one anyway); None: only on a signal."""
    context_size: int | None = None
    """Tokens per context; None: the preset's (from a cache: the cache's, which it must equal)."""
    lr_warm_up_steps: int | None = None
    """Learning-rate warm-up in steps (the variants' own warm-ups follow it); None: the preset's."""
    autocast: bool = False
    """Run the SAE's training step under bfloat16 autocast (SAELens's ``autocast``)."""
    autocast_lm: bool = False
    """Run the model's forward passes under bfloat16 autocast (SAELens's ``autocast_lm``)."""
    wandb_project: str | None = None
    """Log the run to this Weights & Biases project through SAELens's own logger (None: no W&B;
    ``WANDB_MODE=offline`` keeps the log on disk)."""
    wandb_run_name: str | None = None
    normalize_activations: str = "expected_average_only_in"
    init_b_dec_to_mean: bool = True
    """Start ``b_dec`` at the mean activation (docs/spec.md §1.3) instead of SAELens's zeros: the
    residual stream has a large mean, and an SAE that must first learn it wastes features on it."""
    seed: int = 42
    device: str = AUTO
    """``"auto"`` (CUDA when torch sees a GPU, else the CPU), or ``cpu``, ``mps``, ``cuda``,
    ``cuda:N``; a device that is not there is refused up front."""
    activations_path: str | None = None
    """An activation cache (``sae-variants cache``) to train from instead of running the model: its
    model and hook must be the request's (:func:`request_from_cache` takes them from the cache),
    and ``training_tokens`` defaults to one pass over it."""


def request_from_cache(activations_path: str | Path, **fields: Any) -> TrainRequest:
    """A request that trains on the cache at ``activations_path``, with its model, model folder
    and hook; ``fields`` set the rest (architecture, d_sae, ...)."""
    _, info = open_cache(activations_path)
    if info.model_name is None and fields.get("model_name") is None:
        raise ValueError(
            f"the activation cache at {activations_path} does not record its model (it was not "
            "written by `sae-variants cache`); name it with model_name=..."
        )
    defaults: dict[str, Any] = {"model_name": info.model_name, "model_path": info.model_path}
    if fields.get("layer") is None and fields.get("hook_name") is None:
        defaults["hook_name"] = info.hook_name
    # A field given as None keeps the cache's value (the command line passes unset flags so).
    given = {k: v for k, v in fields.items() if not (v is None and k in defaults)}
    return TrainRequest(**{**defaults, **given, "activations_path": str(activations_path)})


def middle_layer(cfg: HookedTransformerConfig) -> int:
    """The block whose output sits halfway through the model's depth."""
    return max(0, cfg.n_layers // 2 - 1)


def resolve_hook(
    request: TrainRequest, cfg: HookedTransformerConfig, cached: CacheInfo | None = None
) -> tuple[str, int]:
    """(hook name, d_in) for the request, validated against the model's config and, training from
    a cache, against the hook it holds (which is also the default then)."""
    if request.hook_name is not None:
        name = request.hook_name
    elif request.layer is None and cached is not None:
        name = cached.hook_name
    else:
        layer = middle_layer(cfg) if request.layer is None else request.layer
        name = site_hook_name(cfg, layer, request.site)
    d_in = hook_width(cfg, name)
    if cached is not None and (name, d_in) != (cached.hook_name, cached.d_in):
        raise ValueError(
            f"the activation cache at {request.activations_path} holds {cached.hook_name} "
            f"(d_in {cached.d_in}), but this run asks for {name} (d_in {d_in}); drop --layer/--hook "
            "to train on the cached hook"
        )
    return name, d_in


def _cache_of(request: TrainRequest) -> CacheInfo | None:
    """What the request's activation cache holds (None without one), checked against its model."""
    if request.activations_path is None:
        return None
    _, info = open_cache(request.activations_path)
    if info.model_name is not None and info.model_name != request.model_name:
        raise ValueError(
            f"the activation cache at {request.activations_path} was written with "
            f"{info.model_name!r}, but this run names {request.model_name!r}; pass --model "
            f"{info.model_name} (or leave --model out)"
        )
    return info


def training_config_class(architecture: str) -> type[TrainingSAEConfig]:
    """The training config class of a registered architecture, or an error listing them all."""
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise ValueError(
            f"unknown architecture {architecture!r}; registered training architectures: "
            f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}"
        )
    return SAE_TRAINING_CLASS_REGISTRY[architecture][1]


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` (the command line's ``--set``) as a dict of strings, which
    :func:`build_sae_config` reads with each field's type."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def build_sae_config(
    architecture: str, d_in: int, d_sae: int, options: Mapping[str, Any], normalize_activations: str
) -> TrainingSAEConfig:
    """Instantiate the architecture's training config; unknown or managed options are refused."""
    cfg_class = training_config_class(architecture)
    fields = {f.name: f for f in dataclasses.fields(cfg_class)}
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key in MANAGED_SAE_FIELDS:
            raise ValueError(
                f"option {key!r} is set by the training pipeline and cannot be overridden"
            )
        if key not in fields:
            settable = sorted(set(fields) - MANAGED_SAE_FIELDS)
            raise ValueError(
                f"{architecture!r} has no option {key!r}; its options are: {', '.join(settable)}"
            )
        kwargs[key] = read_field_value(cfg_class, key, value) if isinstance(value, str) else value
    kwargs.setdefault("normalize_activations", normalize_activations)
    return cfg_class(d_in=d_in, d_sae=d_sae, **kwargs)


def config_fields(cfg: TrainingSAEConfig) -> dict[str, Any]:
    """Every field of an SAE config but its metadata: what decides the SAE a run builds (used, on
    the bound config, as the key under which finished work is reused, so a changed default is
    never reused)."""
    return {k: v for k, v in vars(cfg).items() if k != "metadata"}


def one_pass_tokens(cached: CacheInfo | None, batch_tokens: int) -> int | None:
    """Whole batches in one pass over a cache's usable tokens (None without a cache, or for a cache
    that does not record its usable tokens)."""
    if cached is None or cached.usable_tokens is None:
        return None
    return max(batch_tokens, cached.usable_tokens // batch_tokens * batch_tokens)


def _buffer_batches(batch_tokens: int, context_size: int) -> int:
    # SAELens's mixing buffer holds n_batches_in_buffer * context_size tokens and refuses a batch
    # larger than that (saelens-host pitfall 1); twice the batch keeps shuffling meaningful.
    return max(16, 2 * math.ceil(batch_tokens / context_size))


AUSTEN_RECORD = "sae-variants:austen"
"""How a run on the bundled Austen text records its dataset (not a hub name: the text ships in
the package, ``integrations/training/datasets.py`` reads it)."""


def recorded_dataset(source: str, cached: CacheInfo | None) -> str:
    """What a run's ``dataset_path`` says it trained on: the hub name, the local file's absolute
    path, :data:`AUSTEN_RECORD`, or, from a cache, the dataset the cache records it was written
    from (as recorded; ``""`` for a cache that does not say)."""
    if cached is not None:
        if cached.dataset is None:
            return ""
        return AUSTEN_RECORD if cached.dataset == AUSTEN else cached.dataset
    if source == AUSTEN:
        return AUSTEN_RECORD
    if is_local_dataset(source):
        return str(Path(source).expanduser().resolve())
    return source


def _context_size(
    request: TrainRequest, cached: CacheInfo | None, preset: TrainingPreset, n_ctx: int
) -> int:
    if cached is not None:
        if request.context_size not in (None, cached.context_size):
            raise ValueError(
                f"the activation cache at {request.activations_path} holds contexts of "
                f"{cached.context_size} tokens, but this run asks for context_size "
                f"{request.context_size}; drop --context-size to train on the cached contexts"
            )
        return cached.context_size
    size = preset.context_size if request.context_size is None else request.context_size
    if size < 1:
        raise ValueError(f"context_size must be at least 1 token, got {size}")
    if size > n_ctx:
        raise ValueError(
            f"context_size {size} is longer than {request.model_name}'s context window ({n_ctx} "
            "tokens)"
        )
    return size


_LOGGING_FIELDS = frozenset(f.name for f in dataclasses.fields(LoggingConfig))
_RUNNER_FIELDS = frozenset(f.name for f in dataclasses.fields(LanguageModelSAERunnerConfig))


def split_runner_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``runner_options`` as (runner fields, logging fields); an unknown field, or one the
    request decides itself, is refused naming the request field (flag) that sets it."""
    runner: dict[str, Any] = {}
    logging: dict[str, Any] = {}
    for key, value in options.items():
        if key in REQUEST_RUNNER_FIELDS:
            raise ValueError(
                f"runner field {key!r} is decided by the training request itself (see "
                "`sae-variants train --help` for its own flag), not by a runner option"
            )
        if key in _LOGGING_FIELDS:
            logging[key] = value
        elif key in _RUNNER_FIELDS:
            runner[key] = value
        else:
            raise ValueError(
                f"LanguageModelSAERunnerConfig has no field {key!r}; its settable fields are: "
                f"{', '.join(sorted((_RUNNER_FIELDS | _LOGGING_FIELDS) - REQUEST_RUNNER_FIELDS))}"
            )
    return runner, logging


def _logging_config(request: TrainRequest, options: Mapping[str, Any]) -> LoggingConfig:
    if request.wandb_project is None:
        if request.wandb_run_name is not None:
            raise ValueError("wandb_run_name needs wandb_project (W&B logging is off without it)")
        if options:
            raise ValueError(
                f"{', '.join(sorted(options))} configure W&B logging, which is off; pass "
                "--wandb [PROJECT] (TrainRequest.wandb_project) to turn it on"
            )
        return LoggingConfig(log_to_wandb=False)
    return LoggingConfig(
        log_to_wandb=True,
        wandb_project=request.wandb_project,
        run_name=request.wandb_run_name,
        **options,
    )


def build_runner_config(
    request: TrainRequest,
) -> tuple[LanguageModelSAERunnerConfig[Any], TrainingPreset]:
    """The SAELens runner config for ``request`` (needs no weights, so it works offline for any
    model). Its SAE config is not yet bound to the run: :func:`~.runner.bind_run` does that, once,
    when the runner is built (``bind_run(cfg)`` shows the result)."""
    cfg = model_config(request.model_name)
    cached = _cache_of(request)
    if cached is not None and request.dataset_path is not None:
        raise ValueError(
            f"a run from the activation cache at {request.activations_path} trains on the cached "
            f"contexts, so dataset {request.dataset_path!r} would not be read; drop --dataset "
            "(the cache records the dataset it was written from)"
        )
    name, d_in = resolve_hook(request, cfg, cached)
    embedded = request.model_name == EMBEDDED_MODEL_NAME
    preset = training_preset(request.preset or default_preset(request.model_name))
    context_size = _context_size(request, cached, preset, cfg.n_ctx)
    source = request.dataset_path or default_dataset(request.model_name)
    # Austen and local data reach SAELens's store as override_dataset (train_sae loads them);
    # only a hub name goes into the config, where SAELens streams it.
    # Trained from a cache, the store is handed the cached contexts' tokens
    # (train_from_runner_config).
    from_hub = cached is None and source != AUSTEN and not is_local_dataset(source)
    d_sae = request.d_sae if request.d_sae is not None else request.expansion_factor * d_in
    if d_sae <= 0:
        raise ValueError(f"d_sae must be positive, got {d_sae}")
    sae_cfg = build_sae_config(
        request.architecture, d_in, d_sae, request.sae_options, request.normalize_activations
    )
    # An explicit 0 is refused below, never replaced by a default.
    batch_tokens = (
        preset.train_batch_size_tokens
        if request.train_batch_size_tokens is None
        else request.train_batch_size_tokens
    )
    if batch_tokens <= 0:
        raise ValueError(f"train_batch_size_tokens must be positive, got {batch_tokens}")
    training_tokens = request.training_tokens
    if training_tokens is None:
        training_tokens = one_pass_tokens(cached, batch_tokens) or preset.training_tokens
    if training_tokens <= 0:
        raise ValueError(f"training_tokens must be positive, got {training_tokens}")
    if training_tokens < batch_tokens:
        raise ValueError(
            f"training_tokens={training_tokens} is smaller than one batch ({batch_tokens} tokens)"
        )
    lr_warm_up_steps = (
        preset.lr_warm_up_steps if request.lr_warm_up_steps is None else request.lr_warm_up_steps
    )
    total_steps = training_tokens // batch_tokens
    if lr_warm_up_steps < 0:
        raise ValueError(f"lr_warm_up_steps must be >= 0, got {lr_warm_up_steps}")
    if lr_warm_up_steps > total_steps:
        origin = (
            f"the {preset.name!r} preset warms"
            if request.lr_warm_up_steps is None
            else "lr_warm_up_steps asks to warm"
        )
        raise ValueError(
            f"{origin} the learning rate up over {lr_warm_up_steps} steps, longer than the whole "
            f"run ({total_steps} steps); train for more tokens, set a shorter warm-up or pick "
            "another preset"
        )
    if request.n_checkpoints < 0:
        raise ValueError(f"n_checkpoints must be >= 0, got {request.n_checkpoints}")
    lr = preset.lr if request.lr is None else request.lr
    if not lr > 0:  # also NaN
        raise ValueError(f"lr must be a positive number, got {lr}")
    output = Path(request.output_path)
    runner_options, logging_options = split_runner_options(request.runner_options)
    resolved: dict[str, Any] = dict(
        sae=sae_cfg,
        model_name=request.model_name,
        model_class_name="HookedTransformer",
        hook_name=name,
        # Recorded as it was read (SAELens copies it into the SAE's metadata, where Neuronpedia-
        # style tools look): a hub name is streamed by SAELens; anything else reaches the store
        # as override_dataset, which SAELens then uses instead.
        dataset_path=recorded_dataset(source, cached),
        is_dataset_tokenized=not from_hub,
        streaming=from_hub,
        context_size=context_size,
        use_cached_activations=cached is not None,
        cached_activations_path=request.activations_path,
        training_tokens=training_tokens,
        train_batch_size_tokens=batch_tokens,
        store_batch_size_prompts=max(1, min(32, batch_tokens // context_size)),
        n_batches_in_buffer=_buffer_batches(batch_tokens, context_size),
        lr=lr,
        lr_warm_up_steps=lr_warm_up_steps,
        lr_decay_steps=int(preset.lr_decay_fraction * total_steps),
        # SAELens's decay phase starts at lr_end (default lr / 10); start it at the full lr.
        lr_end=lr,
        # BOS activations are extreme outliers that dominate a squared loss (docs/spec.md §1.3).
        exclude_special_tokens=True,
        n_checkpoints=request.n_checkpoints,
        checkpoint_path=str(output / "checkpoints"),
        output_path=str(output),
        logger=_logging_config(request, logging_options),
        device=resolve_device(request.device),
        autocast=request.autocast,
        autocast_lm=request.autocast_lm,
        seed=request.seed,
        n_batches_for_norm_estimate=max(1, min(100, training_tokens // batch_tokens // 10)),
        verbose=False,
        # The embedded model is built in code, not from_pretrained, so no loading kwargs apply;
        # SAELens's default ({"center_writing_weights": False}) would make every load warn.
        model_from_pretrained_kwargs={} if embedded else None,
    )
    runner_cfg = LanguageModelSAERunnerConfig(**{**resolved, **runner_options})
    refuse_non_finite_config(runner_cfg)
    return runner_cfg, preset

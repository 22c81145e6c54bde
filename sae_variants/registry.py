"""Registration of this package's SAE variants with SAELens's architecture registry.

SAELens has no entry-point discovery and raises on a second registration, which breaks
``importlib.reload`` and notebooks. :func:`register_variant` is idempotent for the same classes
(identified by module and qualified name, so a reloaded module re-registers cleanly) and refuses
to shadow an architecture that belongs to someone else, SAELens's built-ins included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import SAE, SAEConfig, TrainingSAE, TrainingSAEConfig


@dataclass(frozen=True)
class Variant:
    """One registered architecture of this package."""

    name: str
    """The SAELens architecture string (``cfg.architecture()``)."""
    training_sae: type[TrainingSAE[Any]]
    training_cfg: type[TrainingSAEConfig]
    sae: type[SAE[Any]] | None
    """The inference class; ``None`` when the variant saves as a SAELens built-in."""
    sae_cfg: type[SAEConfig] | None


_VARIANTS: dict[str, Variant] = {}


def _identity(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _register(
    registry: dict[str, tuple[type, type]], name: str, classes: tuple[type, type], kind: str
) -> None:
    existing = registry.get(name)
    if existing is not None and tuple(map(_identity, existing)) != tuple(map(_identity, classes)):
        raise ValueError(
            f"cannot register {kind} architecture {name!r} as {_identity(classes[0])}: "
            f"it is already registered as {_identity(existing[0])}"
        )
    # Replacing an entry with the same identity keeps a reloaded module's fresh classes live.
    registry[name] = classes


def register_variant(
    name: str,
    training_sae: type[TrainingSAE[Any]],
    training_cfg: type[TrainingSAEConfig],
    sae: type[SAE[Any]] | None = None,
    sae_cfg: type[SAEConfig] | None = None,
) -> Variant:
    """Register a variant's training (and, unless it saves as a built-in, inference) classes."""
    if training_cfg.architecture() != name:
        raise ValueError(
            f"{_identity(training_cfg)}.architecture() is {training_cfg.architecture()!r}, "
            f"not {name!r}"
        )
    if (sae is None) != (sae_cfg is None):
        raise ValueError("pass both the inference SAE class and its config class, or neither")
    if sae_cfg is not None and sae_cfg.architecture() != name:
        raise ValueError(
            f"{_identity(sae_cfg)}.architecture() is {sae_cfg.architecture()!r}, not {name!r}"
        )
    if sae is not None and sae_cfg is not None:
        _register(SAE_CLASS_REGISTRY, name, (sae, sae_cfg), "inference")
    _register(SAE_TRAINING_CLASS_REGISTRY, name, (training_sae, training_cfg), "training")
    variant = Variant(name, training_sae, training_cfg, sae, sae_cfg)
    _VARIANTS[name] = variant
    return variant


def registered_variants() -> tuple[Variant, ...]:
    """This package's variants, in registration order."""
    return tuple(_VARIANTS.values())


def training_architectures() -> tuple[str, ...]:
    """Every architecture SAELens can train right now: its built-ins plus registered plugins."""
    return tuple(SAE_TRAINING_CLASS_REGISTRY)

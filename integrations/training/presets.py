"""Named training recipes: the settings a run fixes apart from the SAE's own hyperparameters.

``paper`` is the seed papers' Gemma-2-2B recipe: 128-token contexts, Adam at lr 3e-4 with 1000
warm-up steps, batches of 2048 tokens, 10 M training tokens (4882 steps). ``demo`` is sized for
the embedded tiny Gemma-2 on 2 CPU cores, ``gemma3-cpu`` for gemma-3-270m on a CPU (where the
model's forward pass, about 1,000 tokens/s to a middle layer, bounds the run).
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_variants.integrations.models.gemma3 import GEMMA3_270M
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME


@dataclass(frozen=True)
class TrainingPreset:
    """The training settings a named recipe fixes (the SAE's own hyperparameters are separate)."""

    name: str
    context_size: int
    lr: float
    lr_warm_up_steps: int
    train_batch_size_tokens: int
    training_tokens: int
    description: str
    lr_decay_fraction: float = 0.0
    """Final fraction of the steps over which the learning rate decays linearly to 0."""


TRAINING_PRESETS: dict[str, TrainingPreset] = {
    preset.name: preset
    for preset in (
        TrainingPreset(
            name="paper",
            context_size=128,
            lr=3e-4,
            lr_warm_up_steps=1000,
            train_batch_size_tokens=2048,
            training_tokens=10_000_000,
            description="the seed papers' Gemma-2-2B recipe: ctx 128, lr 3e-4, 1000 warm-up steps, "
            "2048-token batches, 10 M tokens (4882 steps)",
        ),
        TrainingPreset(
            name="paper-16k",
            context_size=128,
            lr=3e-4,
            lr_warm_up_steps=1000,
            train_batch_size_tokens=2048,
            training_tokens=5_000_000,
            description="the later 16k-width templates: as 'paper' with 5 M tokens (2441 steps)",
        ),
        TrainingPreset(
            name="demo",
            context_size=128,
            lr=2e-3,
            lr_warm_up_steps=50,
            train_batch_size_tokens=4096,
            training_tokens=2_000_000,
            lr_decay_fraction=0.2,
            description="the embedded tiny Gemma-2 demo: 2 M tokens in 4096-token batches, "
            "lr 2e-3 decaying to 0 over the last 20% of steps; about 5 minutes on 2 CPU cores",
        ),
        TrainingPreset(
            name="gemma3-cpu",
            context_size=128,
            lr=1e-3,
            lr_warm_up_steps=20,
            train_batch_size_tokens=2048,
            training_tokens=1_000_000,
            lr_decay_fraction=0.2,
            description="gemma-3-270m on a CPU: 1 M tokens in 2048-token batches (488 steps), "
            "lr 1e-3 after 20 warm-up steps, decaying to 0 over the last 20%",
        ),
    )
}


def training_preset(name: str) -> TrainingPreset:
    """The preset called ``name``; a clear error lists the valid names otherwise."""
    if name not in TRAINING_PRESETS:
        raise ValueError(
            f"unknown training preset {name!r}; valid presets: {', '.join(TRAINING_PRESETS)}"
        )
    return TRAINING_PRESETS[name]


OFFLINE_MODELS = {EMBEDDED_MODEL_NAME: "demo", GEMMA3_270M: "gemma3-cpu"}
"""Models that run without the hub, with their default training preset; they train on the bundled
Austen text unless a dataset is named."""


def default_preset(model_name: str) -> str:
    """``demo`` for the embedded model, ``gemma3-cpu`` for gemma-3-270m, ``paper`` otherwise."""
    return OFFLINE_MODELS.get(model_name, "paper")


DEMO_SAE_OPTIONS: dict[str, float | int] = {"l1_coefficient": 1.0, "l1_warm_up_steps": 100}
"""The standard SAE's sparsity in ``sae-variants demo``, calibrated to L0 <= 64 on the embedded
model (the README gives the figures it produced)."""

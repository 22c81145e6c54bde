"""The comparison's synthetic part trains with SAELens's own trainer, built so a variant can be
bound to its optimizer; for SAELens's built-ins it must be exactly ``train_toy_sae``."""

from __future__ import annotations

import torch
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.synthetic import train_toy_sae

from sae_variants import MultiScaleNormTrainingSAE
from sae_variants.integrations.comparison.settings import SyntheticSettings
from sae_variants.integrations.comparison.synthetic import (
    ground_truth,
    synthetic_config,
    train_on_synthetic,
)

SETTINGS = SyntheticSettings(
    num_features=32, hidden_dim=16, training_samples=40 * 256, batch_size=256
)


def _trained(train) -> StandardTrainingSAE:
    features, generator = ground_truth(SETTINGS)
    torch.manual_seed(1)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=32, l1_coefficient=1.0))
    train(sae, features, generator)
    return sae


def test_training_on_synthetic_data_is_sae_lens_train_toy_sae() -> None:
    ours = _trained(lambda sae, f, g: train_on_synthetic(sae, f, g, SETTINGS))
    theirs = _trained(
        lambda sae, f, g: train_toy_sae(
            sae,
            f,
            g,
            training_samples=SETTINGS.training_samples,
            batch_size=SETTINGS.batch_size,
            lr=SETTINGS.lr,
        )
    )
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name


def test_a_variant_that_acts_on_its_optimizer_trains_on_synthetic_data() -> None:
    features, generator = ground_truth(SETTINGS)
    cfg = synthetic_config(
        "multiscale_norm", {"l1_coefficient": 1.0, "dead_window_steps": 5}, SETTINGS
    )
    sae = MultiScaleNormTrainingSAE(cfg)
    train_on_synthetic(
        sae, features, generator, SETTINGS
    )  # refuses unless bound to the trainer's Adam
    assert int(sae.training_step) == 40
    assert float(sae.grad_norm_ema) > 0  # the optimizer policy saw every step's gradient norm

"""The comparison's synthetic part trains with SAELens's own trainer, built so a variant can be
bound to its optimizer; for SAELens's built-ins it must be exactly ``train_toy_sae``."""

from __future__ import annotations

import torch
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.synthetic import HierarchyConfig, generate_hierarchy, train_toy_sae

from sae_variants import MultiScaleNormTrainingSAE
from sae_variants.integrations.comparison.settings import SyntheticSettings
from sae_variants.integrations.comparison.synthetic import (
    ground_truth,
    synthetic_config,
    train_on_synthetic,
    true_l0,
)

SETTINGS = SyntheticSettings(
    num_features=32, hidden_dim=16, training_samples=40 * 256, batch_size=256, hierarchy_roots=4
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


def test_a_structured_ground_truth_has_hierarchy_and_correlation() -> None:
    settings = SyntheticSettings(num_features=64, hidden_dim=16, hierarchy_roots=6)
    _, generator = ground_truth(settings)
    hierarchy = generate_hierarchy(
        64,
        HierarchyConfig(
            total_root_nodes=6,
            branching_factor=settings.hierarchy_branching,
            max_depth=settings.hierarchy_depth,
            mutually_exclusive_portion=settings.mutually_exclusive_portion,
            compensate_probabilities=True,
        ),
        seed=settings.seed + 3,
    )
    torch.manual_seed(0)
    fired = generator.sample(20_000) != 0
    pairs = 0
    for root in hierarchy.roots:
        stack = [root]
        while stack:
            node = stack.pop()
            for child in node.children:
                stack.append(child)
                if node.feature_index is None or child.feature_index is None:
                    continue
                # A child fires only in samples where its parent fires.
                assert not (fired[:, child.feature_index] & ~fired[:, node.feature_index]).any()
                pairs += 1
    assert pairs > 0
    assert generator.low_rank_correlation is not None
    # The true L0 is measured on samples, not the flat sum of probabilities.
    assert abs(true_l0(settings) - float(fired.sum(1).double().mean())) < 0.05 * true_l0(settings)
    flat = SyntheticSettings(num_features=64, hidden_dim=16, hierarchy_roots=0, correlation_rank=0)
    assert not flat.structured
    assert ground_truth(flat)[1].low_rank_correlation is None

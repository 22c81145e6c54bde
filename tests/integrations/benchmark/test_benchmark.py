"""The step-time benchmark runs sequence-aware variants on pipeline-shaped token contexts."""

from __future__ import annotations

import torch

from sae_variants import SeqContrastiveTrainingSAE, SeqContrastiveTrainingSAEConfig
from sae_variants.integrations.benchmark.step_time import (
    synthetic_token_context,
    time_training_step,
)


def test_synthetic_contexts_have_the_pipelines_shape() -> None:
    sae = SeqContrastiveTrainingSAE(SeqContrastiveTrainingSAEConfig(d_in=16, d_sae=64))
    context = synthetic_token_context(sae, 512, context_size=32, seed=0)
    per_sequence = context.sequence_ids.reshape(-1, 8)  # 64 contexts x 8 positions (4 pairs)
    assert (per_sequence == per_sequence[:, :1]).all()
    assert per_sequence[:, 0].unique().numel() == 64
    assert ((context.positions >= 1) & (context.positions < 32)).all()  # BOS never served


def test_step_timing_runs_a_sequence_aware_variant() -> None:
    timing = time_training_step(
        "seq_contrastive", d_in=16, d_sae=64, batch_size=256, target_l0=8, steps=1, repeats=1
    )
    assert timing.ratio > 0
    assert 0 < timing.variant_l0 <= 64
    assert torch.isfinite(torch.tensor(timing.variant_seconds))

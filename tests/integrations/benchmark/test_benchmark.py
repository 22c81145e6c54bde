"""The step-time benchmark runs sequence-aware variants on pipeline-shaped token contexts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_variants import SeqContrastiveTrainingSAE, SeqContrastiveTrainingSAEConfig
from sae_variants.architectures.base import VariantModule
from sae_variants.integrations.benchmark.cache_throughput import (
    format_cache_throughput,
    time_cache_against_live,
)
from sae_variants.integrations.benchmark.sparse_decode import (
    DecodeTiming,
    crossover,
    format_decode_timings,
    time_decode,
)
from sae_variants.integrations.benchmark.step_time import (
    synthetic_token_context,
    time_training_step,
)
from sae_variants.integrations.benchmark.validation_cost import (
    format_validation_costs,
    measure_validation_cost,
)
from sae_variants.integrations.cli import main
from sae_variants.integrations.training.request import TrainRequest


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
    # The same variant with its sparse-aware decode off, timed in the same repeats.
    assert timing.dense_decode_ratio is not None
    assert timing.dense_decode_ratio > 0
    assert timing.dense_flop_fraction == pytest.approx(0.4 + 0.6 * timing.variant_l0 / 64)
    builtin = time_training_step(
        "standard", d_in=16, d_sae=64, batch_size=256, target_l0=8, steps=1, repeats=1
    )
    assert builtin.dense_decode_ratio is None


def test_cache_against_live_trains_both_ways_on_one_pass_of_a_cache(tmp_path: Path) -> None:
    result = time_cache_against_live(
        TrainRequest(
            architecture="seq_contrastive",
            d_sae=128,
            training_tokens=50 * 1024,
            train_batch_size_tokens=1024,
        ),
        repeats=1,
        work_dir=tmp_path,
    )
    assert len(result.live_seconds) == len(result.cached_seconds) == 1
    # One pass (127 usable tokens a context) plus 10%, in whole model batches of 16 contexts.
    contexts = -(-(50 * 1024 * 11 // 10) // 127)
    assert result.cache_tokens == -(-contexts // 16) * 16 * 128
    assert result.training_tokens == 50 * 1024
    assert not any(tmp_path.iterdir()), "the benchmark's scratch folder was left behind"
    text = format_cache_throughput(result)
    assert "from the cache" in text
    assert "speed-up" in text


def test_validation_cost_times_the_same_encode_with_and_without_the_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bypassed timing really skips ``checked_input`` (it is counted on the module) and the
    checked one runs it once per encode; the module is restored afterwards."""
    calls = {"checked": 0}
    original = VariantModule.checked_input

    def counting(self: VariantModule, x: torch.Tensor) -> torch.Tensor:
        calls["checked"] += 1
        return original(self, x)

    monkeypatch.setattr(VariantModule, "checked_input", counting)
    cost = measure_validation_cost(
        "position_aware", d_in=16, d_sae=32, batch_size=64, repeats=2, calls=3
    )
    assert calls["checked"] == 1 + 2 * 3  # warm-up + repeats x calls, none from the bypass
    assert cost.seconds_checked > 0
    assert cost.seconds_bypassed > 0
    assert "| `position_aware` |" in format_validation_costs([cost])


def test_validation_cost_refuses_an_architecture_it_does_not_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["benchmark", "--architecture", "standard", "--validation-cost"]
    assert main(argv) == 2
    assert "--validation-cost measures this package's variants" in capsys.readouterr().err


def test_the_sparse_decode_sweep_measures_the_densities_it_reports() -> None:
    timing = time_decode(d_in=8, d_sae=400, batch_size=64, density=0.05, repeats=2)
    assert 0.03 < timing.density < 0.08  # the codes really were about 5% active
    assert timing.seconds_dense > 0
    assert timing.seconds_sparse > 0
    fast = DecodeTiming(8, 400, 64, 0.02, 1.0, 0.5, 0.5)
    slow = DecodeTiming(8, 400, 64, 0.10, 1.0, 2.0, 2.0)
    assert crossover([fast, slow]) == 0.02
    assert crossover([slow]) == 0.0
    assert "sparse is faster up to density 0.020" in format_decode_timings([fast, slow])

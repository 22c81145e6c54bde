"""Part 3 of the comparison: one table of every performance ratio the architecture issues ask for.

For each architecture but ``standard``: training-step time and peak training memory over SAELens
``standard``'s at the same shapes, measured side by side in one run
(:func:`~sae_variants.integrations.benchmark.time_training_step`), and for architectures that
train on sequence-structured batches the throughput of the sequence-aware pipeline over SAELens's
store. A finished table is reused when the comparison is re-run with the same settings
(``--rebenchmark`` measures again).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_variants.integrations.benchmark.pipeline import time_activation_pipelines
from sae_variants.integrations.benchmark.step_time import time_training_step, with_peak_memory
from sae_variants.integrations.comparison.result_cache import load_result, store_result
from sae_variants.integrations.comparison.settings import ARCHITECTURE_PLANS, BenchmarkSettings
from sae_variants.integrations.training.request import (
    build_sae_config,
    config_fields,
    training_config_class,
)
from sae_variants.token_context import needs_sequence_pipeline

BENCHMARK_FILENAME = "benchmark.json"
BENCHMARK_L0 = 64
"""Each SAE's encoder bias is shifted so it fires this many features per row while timed."""


@dataclass
class PerformanceRow:
    architecture: str
    d_in: int
    d_sae: int
    batch_size: int
    standard_seconds: float
    variant_seconds: float
    step_time_ratio: float
    standard_peak_mib: float | None
    variant_peak_mib: float | None
    memory_ratio: float | None
    pipeline_throughput_ratio: float | None
    """Sequence-aware pipeline tokens/s over SAELens's store (None if it does not use it)."""


def _measure(architecture: str, settings: BenchmarkSettings) -> PerformanceRow:
    options = _options(architecture, settings)
    timing = time_training_step(
        architecture,
        d_in=settings.d_in,
        d_sae=settings.d_sae,
        batch_size=settings.batch_size,
        options=options,
        target_l0=BENCHMARK_L0,
        steps=settings.steps,
        repeats=settings.repeats,
    )
    if settings.memory:
        timing = with_peak_memory(timing, options, BENCHMARK_L0)
    pipeline = None
    if settings.pipeline and needs_sequence_pipeline(training_config_class(architecture)):
        pipeline = time_activation_pipelines(architecture).ratio
    return PerformanceRow(
        architecture=architecture,
        d_in=timing.d_in,
        d_sae=timing.d_sae,
        batch_size=timing.batch_size,
        standard_seconds=timing.baseline_seconds,
        variant_seconds=timing.variant_seconds,
        step_time_ratio=timing.ratio,
        standard_peak_mib=timing.baseline_peak_mib,
        variant_peak_mib=timing.variant_peak_mib,
        memory_ratio=timing.memory_ratio,
        pipeline_throughput_ratio=pipeline,
    )


def _options(architecture: str, settings: BenchmarkSettings) -> dict[str, Any]:
    plan = ARCHITECTURE_PLANS[architecture]
    options: dict[str, Any] = plan.run_options(settings.d_sae, total_steps=settings.steps)
    if plan.integer_knob:
        options[plan.knob] = BENCHMARK_L0
    return options


def _resolved_config(architecture: str, settings: BenchmarkSettings) -> dict[str, Any]:
    """The config the benchmark builds, as a cache key: a changed default must not reuse a timing."""
    return config_fields(
        build_sae_config(
            architecture, settings.d_in, settings.d_sae, _options(architecture, settings), "none"
        )
    )


def measure_performance(
    architectures: tuple[str, ...], settings: BenchmarkSettings
) -> list[PerformanceRow]:
    """The performance table for every architecture but ``standard``, measured now."""
    return [_measure(a, settings) for a in architectures if a != "standard"]


def run_performance(
    architectures: tuple[str, ...],
    settings: BenchmarkSettings,
    work_dir: Path,
    remeasure: bool = False,
) -> list[PerformanceRow]:
    """:func:`measure_performance`, reused from ``work_dir`` unless ``remeasure`` or the settings changed."""
    measured = [a for a in architectures if a != "standard"]
    key = {
        "architectures": measured,
        "settings": dataclasses.asdict(settings),
        "configs": {a: _resolved_config(a, settings) for a in ["standard", *measured]},
    }
    stored = None if remeasure else load_result(work_dir / BENCHMARK_FILENAME, key)
    if stored is not None:
        return [PerformanceRow(**row) for row in stored]
    rows = measure_performance(architectures, settings)
    store_result(work_dir / BENCHMARK_FILENAME, key, [dataclasses.asdict(r) for r in rows])
    return rows

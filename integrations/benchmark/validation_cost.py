"""What the input checks cost an encode, measured side by side.

Every variant's ``encode`` checks its input (floating dtype, trailing size, finite values) before
the work; the normalizing variants also compute overflow-free token moments. This times
``encode`` of each variant's inference SAE (CubicOrtho's training SAE, whose inference class is
SAELens's own) with the checks and with ``checked_input`` bypassed on the same module, on the
same batch, interleaved (checked, bypassed, checked, ...) so machine noise hits both; the
reported overhead is the median of the per-repeat ratios minus one.

    sae-variants benchmark --architecture all --validation-cost
"""

from __future__ import annotations

import inspect
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import SAE
from tqdm.auto import tqdm

import sae_variants
from sae_variants.architectures.base import RunInfo

VALIDATION_CONTEXT = 128


@dataclass(frozen=True)
class ValidationCost:
    """One architecture's encode time with and without the input checks."""

    architecture: str
    d_in: int
    d_sae: int
    batch_size: int
    seconds_checked: float
    """Median seconds per encode with the checks."""
    seconds_bypassed: float
    """Median seconds per encode with ``checked_input`` bypassed."""
    overhead: float
    """Median over repeats of checked / bypassed, minus 1."""


def _encoder(architecture: str, d_in: int, d_sae: int) -> Any:
    variant = {v.name: v for v in sae_variants.registered_variants()}[architecture]
    cfg = variant.training_cfg(d_in=d_in, d_sae=d_sae)
    run = RunInfo(total_steps=1000, lr_warm_up_steps=0, context_size=VALIDATION_CONTEXT)
    training = variant.training_sae(cfg.bind_run(run))
    if hasattr(training, "alpha"):
        training.alpha.fill_(0.5)  # the adapters act, as in a trained SAE
    if variant.sae is None:
        return training.eval()
    with tempfile.TemporaryDirectory() as folder:  # the inference SAE, as a user loads it
        training.save_inference_model(folder)
        return SAE.load_from_disk(folder)


def _encode_call(sae: Any, x: torch.Tensor) -> Any:
    positions = torch.arange(x.shape[0]) % VALIDATION_CONTEXT
    if "positions" in inspect.signature(sae.encode).parameters:
        return lambda: sae.encode(x, positions=positions)
    return lambda: sae.encode(x)


def _seconds(call: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def measure_validation_cost(
    architecture: str,
    *,
    d_in: int = 256,
    d_sae: int = 4096,
    batch_size: int = 4096,
    repeats: int = 7,
    calls: int = 3,
) -> ValidationCost:
    """Time ``encode`` of ``architecture`` with and without its input checks (see the module
    docstring); ``calls`` encodes per timed repeat, one warm-up call each way first."""
    if repeats < 1 or calls < 1:
        raise ValueError(f"repeats and calls must be >= 1, got {repeats} and {calls}")
    sae = _encoder(architecture, d_in, d_sae)
    x = torch.randn(batch_size, d_in, generator=torch.Generator().manual_seed(0))
    checked = _encode_call(sae, x)
    original = sae.checked_input

    def bypassed() -> Any:
        sae.checked_input = lambda value: value
        try:
            return checked()
        finally:
            sae.checked_input = original

    checked(), bypassed()
    with_checks, without, ratios = [], [], []
    for _ in range(repeats):
        a, b = _seconds(checked, calls), _seconds(bypassed, calls)
        with_checks.append(a)
        without.append(b)
        ratios.append(a / b)
    return ValidationCost(
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        batch_size=batch_size,
        seconds_checked=statistics.median(with_checks),
        seconds_bypassed=statistics.median(without),
        overhead=statistics.median(ratios) - 1.0,
    )


def measure_all(architectures: list[str], **kwargs: Any) -> list[ValidationCost]:
    """:func:`measure_validation_cost` for each architecture, with a progress bar."""
    return [
        measure_validation_cost(name, **kwargs)
        for name in tqdm(architectures, desc="validation cost", unit="architecture")
    ]


def format_validation_costs(costs: list[ValidationCost]) -> str:
    """A markdown table of :func:`measure_validation_cost` results."""
    if not costs:
        return "(no architectures)"
    first = costs[0]
    lines = [
        f"encode of a [{first.batch_size}, {first.d_in}] batch, d_sae {first.d_sae}, "
        f"{torch.get_num_threads()} threads: the input checks' cost (median of interleaved "
        "repeats)",
        "",
        "| architecture | encode with checks (ms) | checks bypassed (ms) | overhead |",
        "|---|---|---|---|",
    ]
    for cost in costs:
        lines.append(
            f"| `{cost.architecture}` | {1000 * cost.seconds_checked:.1f} | "
            f"{1000 * cost.seconds_bypassed:.1f} | {100 * cost.overhead:+.2f}% |"
        )
    return "\n".join(lines)

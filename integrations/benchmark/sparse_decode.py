"""The decoder product with its two gradients, dense against over the active codes only, side by
side at a range of code densities: where :func:`~sae_variants.sparse_decode.sparse_decode` pays.

Each measurement is one forward and backward of ``relu(pre) @ W_dec`` against a fixed upstream
gradient, ``pre`` shifted so that the given fraction of codes is active; repeats are interleaved
(dense, sparse, dense, ...) and the median of the per-repeat ratios is reported, with the
fraction of the dense FLOPs the sparse product does (``nnz / (B d_sae)``).

    sae-variants benchmark --architecture all --sparse-decode
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sae_variants.sparse_decode import sparse_decode

DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class DecodeTiming:
    d_in: int
    d_sae: int
    batch_size: int
    density: float
    seconds_dense: float
    seconds_sparse: float
    ratio: float
    """Median over repeats of sparse / dense time."""


def _step(
    product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pre: torch.Tensor,
    W: torch.Tensor,
    upstream: torch.Tensor,
) -> float:
    p, w = pre.detach().requires_grad_(), W.detach().requires_grad_()
    start = time.perf_counter()
    out = product(torch.relu(p), w)
    out.backward(upstream)
    return time.perf_counter() - start


def time_decode(
    d_in: int, d_sae: int, batch_size: int, density: float, repeats: int = 5
) -> DecodeTiming:
    """Dense and sparse decode (forward + both gradients) at one code density."""
    generator = torch.Generator().manual_seed(0)
    pre = torch.randn(batch_size, d_sae, generator=generator)
    pre -= torch.quantile(pre[:64].flatten(), 1.0 - density)  # about `density` active
    W = torch.randn(d_sae, d_in, generator=generator) / d_in**0.5
    upstream = torch.randn(batch_size, d_in, generator=generator)
    dense = lambda f, w: f @ w  # noqa: E731
    _step(dense, pre, W, upstream), _step(sparse_decode, pre, W, upstream)
    dense_times, sparse_times, ratios = [], [], []
    for _ in range(repeats):
        a, b = _step(dense, pre, W, upstream), _step(sparse_decode, pre, W, upstream)
        dense_times.append(a)
        sparse_times.append(b)
        ratios.append(b / a)
    measured = float((pre > 0).float().mean())
    return DecodeTiming(
        d_in,
        d_sae,
        batch_size,
        measured,
        statistics.median(dense_times),
        statistics.median(sparse_times),
        statistics.median(ratios),
    )


def crossover(timings: list[DecodeTiming]) -> float:
    """The highest measured density at which the sparse product was faster (0: none)."""
    faster = [t.density for t in timings if t.ratio < 1.0]
    return max(faster, default=0.0)


def sweep(d_in: int, d_sae: int, batch_size: int, repeats: int = 5) -> list[DecodeTiming]:
    return [
        time_decode(d_in, d_sae, batch_size, density, repeats)
        for density in tqdm(DENSITIES, desc=f"decode d_sae {d_sae}", unit="density")
    ]


def format_decode_timings(timings: list[DecodeTiming]) -> str:
    first = timings[0]
    lines = [
        f"decode forward + backward, batch {first.batch_size}, d_in {first.d_in}, d_sae "
        f"{first.d_sae}, {torch.get_num_threads()} threads (median of interleaved repeats); "
        f"sparse is faster up to density {crossover(timings):.3f}",
        "",
        "| code density | L0 | dense (ms) | sparse (ms) | sparse / dense time | share of dense FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for t in timings:
        lines.append(
            f"| {t.density:.3f} | {t.density * t.d_sae:.0f} | {1000 * t.seconds_dense:.1f} | "
            f"{1000 * t.seconds_sparse:.1f} | {t.ratio:.3f} | {t.density:.3f} |"
        )
    return "\n".join(lines)

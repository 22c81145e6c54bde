"""Training throughput from an activation cache against live training, measured side by side.

One cache is written first (its cost is reported: it is paid once and amortized over every run
that reads it). Then the same training request runs live (the model computes every batch) and
from the cache, alternately (live, cache, live, ...) so machine noise hits both; each run's wall
time is that of :func:`~sae_variants.integrations.training.pipeline.train_sae` with the model
already loaded, so it holds the runner's set-up, normalization estimate, training and saving.

    sae-variants benchmark --architecture standard --cache-vs-live --model gemma-3-270m --layer 6
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from sae_variants.integrations.models import load_model
from sae_variants.integrations.training.activation_cache import CacheRequest, cache_activations
from sae_variants.integrations.training.devices import resolve_device
from sae_variants.integrations.training.pipeline import train_sae
from sae_variants.integrations.training.request import (
    TrainRequest,
    build_runner_config,
    request_from_cache,
)


@dataclass
class CacheThroughput:
    architecture: str
    model_name: str
    hook_name: str
    training_tokens: int
    cache_tokens: int
    cache_seconds: float
    live_seconds: list[float]
    cached_seconds: list[float]

    @property
    def live_tokens_per_second(self) -> float:
        return self.training_tokens / statistics.median(self.live_seconds)

    @property
    def cached_tokens_per_second(self) -> float:
        return self.training_tokens / statistics.median(self.cached_seconds)

    @property
    def speed_up(self) -> float:
        """Median over repeats of live time / cached time."""
        return statistics.median(
            live / cached
            for live, cached in zip(self.live_seconds, self.cached_seconds, strict=True)
        )

    @property
    def caching_tokens_per_second(self) -> float:
        return self.cache_tokens / self.cache_seconds


def time_cache_against_live(
    request: TrainRequest, *, repeats: int = 2, work_dir: Path | None = None
) -> CacheThroughput:
    """Train ``request`` live and from a cache of the same hook and tokens, ``repeats`` times each."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        root = Path(scratch)
        device = resolve_device(request.device)
        model = load_model(request.model_name, device=device, model_path=request.model_path)
        tokens = request.training_tokens
        if tokens is None:
            raise ValueError("set training_tokens: the cache is written to hold exactly one run")
        live_request = dataclasses.replace(request, output_path=root / "live", overwrite=True)
        cfg, _ = build_runner_config(live_request)
        # One pass of the run needs its tokens plus the special tokens the run skips; the
        # sequence pipeline serves whole groups of positions only, hence a 10% margin.
        contexts = -(-tokens * 11 // 10 // (cfg.context_size - 1))
        start = time.perf_counter()
        cache = cache_activations(
            CacheRequest(
                output_path=root / "cache",
                training_tokens=contexts * cfg.context_size,
                model_name=request.model_name,
                model_path=request.model_path,
                hook_name=cfg.hook_name,
                context_size=cfg.context_size,
                dataset_path=request.dataset_path,
                device=device,
            ),
            model=model,
        )
        cache_seconds = time.perf_counter() - start
        cached_request = request_from_cache(
            cache.path,
            **{
                f.name: getattr(live_request, f.name)
                for f in dataclasses.fields(live_request)
                if f.name not in ("activations_path", "hook_name", "layer", "site")
            },
        )
        cached_request = dataclasses.replace(cached_request, output_path=root / "cached")
        live_seconds, cached_seconds = [], []
        for _ in tqdm(range(repeats), desc="cache vs live", unit="repeat"):
            for run, times in ((live_request, live_seconds), (cached_request, cached_seconds)):
                start = time.perf_counter()
                train_sae(run, model=model)
                times.append(time.perf_counter() - start)
    return CacheThroughput(
        architecture=request.architecture,
        model_name=request.model_name,
        hook_name=cfg.hook_name,
        training_tokens=cfg.training_tokens,
        cache_tokens=cache.info.tokens,
        cache_seconds=cache_seconds,
        live_seconds=live_seconds,
        cached_seconds=cached_seconds,
    )


def format_cache_throughput(result: CacheThroughput) -> str:
    saved = statistics.median(result.live_seconds) - statistics.median(result.cached_seconds)
    repaid = (
        f"repaid after {result.cache_seconds / saved:.1f} runs" if saved > 0 else "never repaid"
    )
    return "\n".join(
        [
            f"training from a cache vs live ({result.architecture} on {result.model_name} @ "
            f"{result.hook_name}, {result.training_tokens:,} tokens, {len(result.live_seconds)} "
            "interleaved repeats)",
            f"  live training        {result.live_tokens_per_second:>10,.0f} tokens/s",
            f"  from the cache       {result.cached_tokens_per_second:>10,.0f} tokens/s",
            f"  speed-up             {result.speed_up:>10.2f}x  (median of live / cached per repeat)",
            f"  writing the cache    {result.caching_tokens_per_second:>10,.0f} tokens/s  "
            f"({result.cache_tokens:,} tokens in {result.cache_seconds:.0f} s, paid once; {repaid})",
        ]
    )

"""Activation caches: ``sae-variants cache`` writes one with SAELens's own
``CacheActivationsRunner``; ``sae-variants train --activations DIR`` trains from it.

A cache is a saved Hugging Face dataset with one row per context, exactly as SAELens writes and
reads it (``use_cached_activations``): the hook's activations ``[context, d_in]`` in a column named
after the hook, and the context's ``token_ids``. Sequences survive, so the sequence-aware variants
train from a cache too (``sequence_batches.CachedContexts``), and per-token SAEs train from it
through SAELens's store unchanged. Beside the dataset, ``sae_variants_cache.json``
(:class:`CacheInfo`) records what the cache holds, so training needs no other flag; a cache that
SAELens wrote itself works as well once the model is named.

The contexts are the ones live training would see: the same SAELens store tokenizes the same
dataset (``[BOS] + text`` contexts, nothing excluded yet; special tokens are skipped when
training reads the cache, by their ``token_ids``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import datasets
import sae_lens
import sae_lens.cache_activations_runner as saelens_cache
import torch
from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig
from sae_lens.util import get_special_token_ids
from transformer_lens import HookedTransformerConfig
from transformer_lens.hook_points import HookedRootModule

from sae_variants.integrations.models import load_model, model_config
from sae_variants.integrations.models.hooks import hook_name as site_hook_name
from sae_variants.integrations.models.hooks import hook_width
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.output_folders import move_into_place
from sae_variants.integrations.training.datasets import (
    AUSTEN,
    austen_contexts,
    is_local_dataset,
    local_dataset,
)
from sae_variants.integrations.training.devices import AUTO, resolve_device
from sae_variants.integrations.training.presets import default_preset, training_preset

logger = logging.getLogger(__name__)

CACHE_INFO_FILENAME = "sae_variants_cache.json"
TOKEN_IDS_COLUMN = "token_ids"
_SHARD_BYTES = 256 * 2**20
"""Activations per shard SAELens writes (and holds in memory while writing it): small enough to
leave room beside a model on a laptop, and one progress step each."""


@dataclass(frozen=True)
class CacheInfo:
    """What an activation cache holds (``sae_variants_cache.json``)."""

    hook_name: str
    d_in: int
    context_size: int
    contexts: int
    model_name: str | None
    """None for a cache written by SAELens alone (the model must then be named when training)."""
    model_path: str | None = None
    dataset: str | None = None
    usable_tokens: int | None = None
    """Tokens that are not special tokens: what one pass over the cache trains on."""
    distinct_contexts: int | None = None
    """Contexts that are not repeats (fewer than ``contexts`` when the dataset ran out and SAELens
    started it over); None when the dataset's length was not known."""
    special_token_ids: list[int] | None = None
    """The model tokenizer's special ids (BOS, EOS, padding) that training skips; None for a cache
    that does not record them."""
    autocast_lm: bool = False
    seconds: float | None = None
    """Wall time of writing the cache (the model's forward passes and the disk writes)."""
    written_by: str = ""

    @property
    def tokens(self) -> int:
        return self.contexts * self.context_size


def _array_columns(dataset: datasets.Dataset) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(feature.shape)
        for name, feature in dataset.features.items()
        if isinstance(feature, datasets.Array2D)
    }


def open_cache(path: str | Path) -> tuple[datasets.Dataset, CacheInfo]:
    """The cache at ``path`` and what it holds; a clear error if ``path`` is not a cache."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no activation cache at {path} (expected a folder)")
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise ValueError(
            f"{path} is not an activation cache: it holds no saved dataset "
            "(`sae-variants cache` writes one)"
        ) from err
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{path} holds a dataset with splits, not an activation cache")
    columns = _array_columns(dataset)
    if len(columns) != 1:
        raise ValueError(
            f"{path} has activation columns {sorted(columns)}; a cache for training holds exactly "
            "one hook's activations"
        )
    ((hook, (context_size, d_in)),) = columns.items()
    info_file = path / CACHE_INFO_FILENAME
    if info_file.exists():
        recorded = json.loads(info_file.read_text())
        known = {f.name for f in fields(CacheInfo)}
        info = CacheInfo(**{k: v for k, v in recorded.items() if k in known})
        if (info.hook_name, info.context_size, info.d_in, info.contexts) != (
            hook,
            context_size,
            d_in,
            len(dataset),
        ):
            raise ValueError(
                f"{info_file} describes {info.contexts} contexts of {info.hook_name} "
                f"[{info.context_size}, {info.d_in}], but the dataset beside it holds "
                f"{len(dataset)} of {hook} [{context_size}, {d_in}]: the folder was changed "
                "after it was written"
            )
        return dataset, info
    return dataset, CacheInfo(
        hook_name=hook, d_in=d_in, context_size=context_size, contexts=len(dataset), model_name=None
    )


@dataclass
class CacheRequest:
    """An activation cache to write (``sae-variants cache``); defaults cache the embedded model."""

    output_path: Path
    training_tokens: int
    """Tokens to cache, rounded up so that every shard holds whole model batches of contexts (at
    most one model batch more per shard)."""
    model_name: str = EMBEDDED_MODEL_NAME
    model_path: str | None = None
    layer: int | None = None
    """Block index; ``None`` picks the middle of the model, as training does."""
    site: str = "resid_post"
    hook_name: str | None = None
    context_size: int | None = None
    """None: the context of the model's default training preset."""
    dataset_path: str | None = None
    """As for training: ``"austen"`` (the default for the offline models), a local file or saved
    dataset, or a hub name."""
    model_batch_size: int = 16
    """Contexts per forward pass."""
    autocast_lm: bool = False
    """Run the model in bfloat16 autocast (faster on GPUs and recent CPUs; activations are
    stored in float32 either way)."""
    seed: int = 42
    device: str = AUTO
    """As for training: ``"auto"`` (CUDA, else the CPU) or a device torch has."""
    overwrite: bool = False


def _resolve_hook(request: CacheRequest, cfg: HookedTransformerConfig) -> tuple[str, int]:
    if request.hook_name is not None:
        name = request.hook_name
    else:
        layer = max(0, cfg.n_layers // 2 - 1) if request.layer is None else request.layer
        name = site_hook_name(cfg, layer, request.site)
    return name, hook_width(cfg, name)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} is a file; an activation cache is written as a folder")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{output} is not empty; choose another --output or pass --overwrite to replace it"
            )
        if not (output / CACHE_INFO_FILENAME).exists():
            raise FileExistsError(
                f"{output} is not empty and holds no activation cache ({CACHE_INFO_FILENAME}); "
                "--overwrite replaces only a cache written by `sae-variants cache`"
            )
    parent = output.parent
    parent.mkdir(parents=True, exist_ok=True)


def cache_runner_config(
    request: CacheRequest, hook: str, d_in: int, write_to: Path
) -> CacheActivationsRunnerConfig:
    """SAELens's cache config for ``request``, with shards of equal size, each whole model batches,
    so the cache holds the requested tokens plus at most one model batch per shard (SAELens
    rounds up to whole shards, 2 GB by default)."""
    context = (
        request.context_size or training_preset(default_preset(request.model_name)).context_size
    )
    if request.training_tokens < context:
        raise ValueError(
            f"--tokens {request.training_tokens} is less than one context ({context} tokens)"
        )
    if request.model_batch_size <= 0:
        raise ValueError(f"model_batch_size must be positive, got {request.model_batch_size}")
    bytes_per_token = 4 * d_in
    batch_tokens = request.model_batch_size * context
    per_shard = max(1, _SHARD_BYTES // bytes_per_token // batch_tokens) * batch_tokens
    n_shards = math.ceil(request.training_tokens / per_shard)
    per_shard = math.ceil(request.training_tokens / n_shards / batch_tokens) * batch_tokens
    cfg = CacheActivationsRunnerConfig(
        dataset_path=request.dataset_path or AUSTEN,
        model_name=request.model_name,
        model_batch_size=request.model_batch_size,
        hook_name=hook,
        d_in=d_in,
        training_tokens=request.training_tokens,
        context_size=context,
        new_cached_activations_path=str(write_to),
        # SAELens's shuffle reorders only the dataset it returns (and pushes), not the one on
        # disk, and leaves an index file behind; contexts are stored in dataset order, as live
        # training reads them, and training shuffles (the mixing buffer, the sequence pool).
        shuffle=False,
        seed=request.seed,
        dtype="float32",
        device=resolve_device(request.device),
        # SAELens sizes shards in GB; half a token's bytes of slack survives the float round trip.
        buffer_size_gb=(per_shard + 0.5) * bytes_per_token / 1e9,
        autocast_lm=request.autocast_lm,
        streaming=not (request.dataset_path is None or is_local_dataset(request.dataset_path)),
    )
    assert cfg.n_tokens_in_buffer == per_shard, (cfg.n_tokens_in_buffer, per_shard)
    return cfg


@contextmanager
def _model_handed_over(model: Any):
    """Make SAELens's cache runner use ``model`` instead of loading ``cfg.model_name`` itself.

    ``CacheActivationsRunner.__init__`` (SAELens 6.54) has no ``override_model``, unlike the training
    runner, and loads the model through its module's ``load_model``; the offline models and local
    checkpoints cannot be loaded that way, so for the duration of the constructor that name
    returns the model already loaded.
    """
    original = saelens_cache.load_model

    def hand_over(*_args: Any, **_kwargs: Any) -> Any:
        return model

    saelens_cache.load_model = hand_over
    try:
        yield
    finally:
        saelens_cache.load_model = original


def cached_token_ids(dataset: datasets.Dataset) -> torch.Tensor:
    """``[contexts, context]`` int64 token ids of a cache, read without its activations (SAELens's
    store formats every column with the activation dtype, which would round ids above 256 in
    bfloat16)."""
    if TOKEN_IDS_COLUMN not in dataset.column_names:
        raise ValueError(
            f"the activation cache has columns {dataset.column_names} but no 'token_ids'; write it "
            "with `sae-variants cache` or a SAELens CacheActivationsRunner that records token_ids"
        )
    ids = dataset.with_format("torch", columns=[TOKEN_IDS_COLUMN])[:][TOKEN_IDS_COLUMN]
    return ids.long()


def _usable_tokens(dataset: datasets.Dataset, specials: list[int]) -> int:
    ids = cached_token_ids(dataset)
    return int((~torch.isin(ids, torch.tensor(specials, dtype=ids.dtype))).sum())


def _contexts_available(dataset: datasets.Dataset | None) -> int | None:
    """Contexts a pretokenized in-memory dataset yields before SAELens starts it over (one per
    row); None when that is not known without tokenizing (text, hub streams)."""
    if isinstance(dataset, datasets.Dataset) and (
        "tokens" in dataset.column_names or "input_ids" in dataset.column_names
    ):
        return len(dataset)
    return None


@dataclass
class CacheResult:
    path: Path
    info: CacheInfo


def cache_activations(
    request: CacheRequest,
    *,
    model: HookedRootModule | None = None,
    dataset: datasets.Dataset | None = None,
) -> CacheResult:
    """Write the activation cache ``request`` describes (see the module docstring).

    ``model`` and ``dataset``, when given, are used instead of loading ``request.model_name`` and
    ``request.dataset_path`` (whose names are still recorded). Everything that can be checked
    without the model (hook, sizes, output folder, a local dataset) is checked before it loads.
    The cache is written to a sibling folder and moved into place only when complete, so an
    interrupted run never leaves a folder that looks like a cache.
    """
    output = Path(request.output_path).expanduser()
    hook, d_in = _resolve_hook(
        request, model.cfg if model is not None else model_config(request.model_name)
    )
    _check_output(output, request.overwrite)
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cfg = cache_runner_config(request, hook, d_in, partial)
    source = request.dataset_path or AUSTEN
    if dataset is None and is_local_dataset(source):
        dataset = local_dataset(Path(source).expanduser())
    if model is None:
        model = load_model(request.model_name, device=cfg.device, model_path=request.model_path)
    if dataset is None and source == AUSTEN:
        dataset = austen_contexts("train", model.tokenizer, cfg.context_size)
    available = _contexts_available(dataset)
    requested = cfg.n_buffers * cfg.n_seq_in_buffer
    if available is not None and requested > available:
        logger.warning(
            "%s yields %d contexts of %d tokens but the cache asks for %d: SAELens starts the "
            "dataset over, so %d contexts are cached twice (recorded as distinct_contexts)",
            source,
            available,
            cfg.context_size,
            requested,
            requested - available,
        )
    start = time.perf_counter()
    with _model_handed_over(model):
        runner = CacheActivationsRunner(cfg, override_dataset=dataset)
    written = runner.run()
    seconds = time.perf_counter() - start
    specials = get_special_token_ids(model.tokenizer) if model.tokenizer is not None else []
    info = CacheInfo(
        hook_name=hook,
        d_in=d_in,
        context_size=cfg.context_size,
        contexts=len(written),
        distinct_contexts=min(len(written), available) if available is not None else None,
        model_name=request.model_name,
        model_path=request.model_path,
        dataset=str(Path(source).expanduser().resolve()) if is_local_dataset(source) else source,
        usable_tokens=_usable_tokens(written, specials),
        special_token_ids=sorted(specials),
        autocast_lm=request.autocast_lm,
        seconds=round(seconds, 1),
        written_by=f"sae-variants {version('sae-variants')}, sae-lens {sae_lens.__version__}",
    )
    (partial / CACHE_INFO_FILENAME).write_text(json.dumps(asdict(info), indent=2) + "\n")
    del written, runner
    move_into_place(partial, output)
    return CacheResult(output, info)

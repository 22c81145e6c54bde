"""Train any registered SAE architecture from a :class:`~.request.TrainRequest`, offline on the
embedded model or on any model TransformerLens loads: :func:`train_sae` builds the runner config,
trains with :class:`~.runner.VariantTrainingRunner` (on live activations or an activation cache,
``request.activations_path``) and saves the SAE in SAELens's format.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from datasets import Dataset
from sae_lens import HookedSAETransformer, LanguageModelSAERunnerConfig
from sae_lens.saes.sae import TrainingSAE

from sae_variants.integrations.models import load_model
from sae_variants.integrations.output_folders import (
    check_output_folder,
    move_into_place,
    staging_folder,
)
from sae_variants.integrations.training.activation_cache import (
    TOKEN_IDS_COLUMN,
    CacheInfo,
    cached_token_ids,
    open_cache,
)
from sae_variants.integrations.training.checkpoints import (
    checkpoint_world_size,
    latest_complete_checkpoint,
)
from sae_variants.integrations.training.datasets import (
    austen_contexts,
    is_local_dataset,
    local_dataset,
)
from sae_variants.integrations.training.devices import resolve_device
from sae_variants.integrations.training.distributed import (
    DataParallel,
    check_same_config,
    join_process_group,
    launched_data_parallel,
    on_main_first,
    per_rank_config,
    rank_device,
    shard_dataset,
)
from sae_variants.integrations.training.request import (
    AUSTEN_RECORD,
    TrainRequest,
    build_runner_config,
)
from sae_variants.integrations.training.runner import VariantTrainingRunner, bind_run
from sae_variants.validation import check_activations

logger = logging.getLogger(__name__)


def sample_contexts(store: Any, n_contexts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids ``[n, context]``, activations ``[n, context, d_in]``) of ``n_contexts`` contexts:
    the first rows of the store's activation cache, or the next contexts of its dataset stream run
    through the model (training then starts that many contexts later in the data; they come round
    again in later epochs)."""
    cached = getattr(store, "cached_activation_dataset", None)
    if cached is not None:
        rows = slice(0, min(n_contexts, len(cached)))
        acts = cached[rows][store.hook_name]
        if TOKEN_IDS_COLUMN not in cached.column_names:  # nothing to filter by
            return torch.full(acts.shape[:2], -1, dtype=torch.long), acts
        return cached_token_ids(cached.select(range(rows.stop))), acts
    tokens = store.get_batch_tokens(n_contexts)
    return tokens, store.get_activations(tokens)


@torch.no_grad()
def initialize_b_dec_to_mean(
    sae: TrainingSAE[Any],
    store: Any,
    normalize_activations: str,
    n_batches: int = 4,
    ranks: DataParallel | None = None,
) -> None:
    """Set ``b_dec`` to the mean of a few store batches, in the space the SAE trains in.

    With ``expected_average_only_in`` the trainer scales inputs by sqrt(d_in) / E||x||, so the
    mean is scaled the same way. Special tokens are left out, as in training. In data-parallel
    training (``ranks``) each rank reads its share of the contexts one process would, and the
    ranks' means are averaged.
    """
    n_contexts = n_batches * store.store_batch_size_prompts
    if ranks is not None:  # each rank reads its share of the same global contexts
        n_contexts = max(1, n_contexts // ranks.world_size)
    tokens, acts = sample_contexts(store, n_contexts)
    acts = acts.reshape(-1, sae.cfg.d_in)
    if store.exclude_special_tokens is not None:
        keep = ~torch.isin(tokens.reshape(-1), store.exclude_special_tokens.to(tokens.device))
        acts = acts[keep.to(acts.device)]
    check_activations(acts, sae.cfg.d_in, where="activations for the b_dec initialization")
    mean = acts.mean(dim=0)
    if normalize_activations == "expected_average_only_in":
        mean = mean * (sae.cfg.d_in**0.5 / acts.norm(dim=-1).mean())
    sae.b_dec.copy_(mean.to(sae.b_dec.dtype))
    if ranks is not None:  # equal shares: the mean of the means is the global mean
        ranks.replicas.mean_(sae.b_dec.data)


def has_checkpoints(staging: Path) -> bool:
    """Whether a run's staging folder holds a complete checkpoint it can be resumed from."""
    return latest_complete_checkpoint(staging / "checkpoints") is not None


def prepare_run_folders(
    runner_cfg: LanguageModelSAERunnerConfig[Any], overwrite: bool
) -> LanguageModelSAERunnerConfig[Any]:
    """Check the run's output before any work (see
    :func:`~sae_variants.integrations.output_folders.check_output_folder`) and return the config
    writing into its staging folder ``<output>.partial`` (checkpoints included);
    :func:`train_from_runner_config` moves the finished SAE into place."""
    output = Path(runner_cfg.output_path).expanduser()
    cache = runner_cfg.cached_activations_path if runner_cfg.use_cached_activations else None
    check_output_folder(
        output,
        overwrite=overwrite,
        marker="cfg.json",
        what="a trained SAE",
        source=None if cache is None else Path(cache),
    )
    staging = staging_folder(output)
    if staging.exists():
        if not overwrite and has_checkpoints(staging):
            raise FileExistsError(
                f"{staging} holds an interrupted run for {output}: continue it with "
                f"`sae-variants train --resume {staging}`, or pass --overwrite to start over"
            )
        shutil.rmtree(staging)
    return _staged_config(runner_cfg, staging)


def _staged_config(
    runner_cfg: LanguageModelSAERunnerConfig[Any], staging: Path
) -> LanguageModelSAERunnerConfig[Any]:
    """``runner_cfg`` writing into ``staging``, its checkpoints into ``staging/checkpoints``
    (where a resumed run looks for them, whatever ``checkpoint_path`` the config names)."""
    staged = copy.copy(runner_cfg)
    staged.output_path = str(staging)
    staged.checkpoint_path = str(staging / "checkpoints")
    return staged


def _warn_about_repeated_passes(info: CacheInfo, training_tokens: int) -> None:
    if info.usable_tokens is not None and training_tokens > info.usable_tokens:
        logger.warning(
            "training on %d tokens from an activation cache of %d usable tokens reads it %.1f "
            "times; cache more tokens for a run without repeats",
            training_tokens,
            info.usable_tokens,
            training_tokens / info.usable_tokens,
        )


@dataclass
class TrainResult:
    output_path: Path
    sae: TrainingSAE[Any]
    runner_config: LanguageModelSAERunnerConfig[Any]


def train_sae(request: TrainRequest, *, model: HookedSAETransformer | None = None) -> TrainResult:
    """Train as requested with :class:`VariantTrainingRunner`; the SAE is saved to
    ``request.output_path``. ``model``: ``request.model_name`` already loaded (saves loading it
    again for each of several runs)."""
    runner_cfg, _ = build_runner_config(request)
    return train_from_runner_config(
        runner_cfg,
        model_path=request.model_path,
        init_b_dec_to_mean=request.init_b_dec_to_mean,
        overwrite=request.overwrite,
        model=model,
        checkpoint_every=request.checkpoint_every,
    )


def _dataset_for(
    runner_cfg: LanguageModelSAERunnerConfig[Any], cache: Dataset | None
) -> Dataset | None:
    """The token dataset the store is handed, read from what the config records (the tokens of
    the run's activation ``cache``, a local file, or None for a hub name SAELens streams itself;
    the bundled Austen text needs the model's tokenizer and is read once the model is loaded)."""
    if cache is not None:
        # Training reads the cache; SAELens's store still wants a token dataset (for its own
        # evaluations): the cached contexts' tokens, so nothing is streamed from the hub.
        return Dataset.from_dict({"tokens": cached_token_ids(cache).tolist()})
    source = runner_cfg.dataset_path
    if source not in (AUSTEN_RECORD, "") and is_local_dataset(source):
        return local_dataset(Path(source).expanduser())
    return None


RUN_CONFIG_FILENAME = "sae_variants_run.json"
"""Written into a run's staging folder at its start: the requested runner config (SAELens's
``to_dict``) and the options a resumed run needs."""


def train_from_runner_config(
    runner_cfg: LanguageModelSAERunnerConfig[Any],
    *,
    model_path: str | None = None,
    init_b_dec_to_mean: bool = True,
    overwrite: bool = False,
    model: HookedSAETransformer | None = None,
    checkpoint_every: int | None = None,
) -> TrainResult:
    """Train a complete SAELens runner config (one :func:`build_runner_config` made, e.g. the
    JSON ``sae-variants train --dry-run --json`` prints, edited or not) with
    :class:`VariantTrainingRunner`, saving the SAE to its ``output_path``.

    The data is what the config records: an activation cache, the bundled Austen text
    (``dataset_path="sae-variants:austen"``), a local file by its path, or a hub name SAELens
    streams. ``model_path``: a local folder with ``model_name``'s weights; ``model``: the model
    already loaded; ``checkpoint_every``: a complete checkpoint every this many steps (SIGINT
    and SIGTERM write one anyway; :func:`resume_training` continues from it). Everything that
    can fail without the model (the output folder, a local dataset) is checked before it loads.
    """
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 step, got {checkpoint_every}")
    options = {
        "model_path": model_path,
        "init_b_dec_to_mean": init_b_dec_to_mean,
        "checkpoint_every": checkpoint_every,
        "overwrite": overwrite,
    }
    ranks = _join_launched_ranks(runner_cfg, options)

    def prepare() -> None:
        staging = Path(prepare_run_folders(runner_cfg, overwrite).output_path)
        staging.mkdir(parents=True)
        record = {
            "runner_config": runner_cfg.to_dict(),
            "model_path": model_path,
            "init_b_dec_to_mean": init_b_dec_to_mean,
            "checkpoint_every": checkpoint_every,
            "overwrite": overwrite,
        }
        (staging / RUN_CONFIG_FILENAME).write_text(json.dumps(record, indent=1, default=str))

    on_main_first(ranks, prepare)
    staged = _staged_config(runner_cfg, staging_folder(Path(runner_cfg.output_path).expanduser()))
    return _run(
        runner_cfg, staged, model_path, init_b_dec_to_mean, model, checkpoint_every, None, ranks
    )


def _join_launched_ranks(
    runner_cfg: LanguageModelSAERunnerConfig[Any], options: dict[str, Any]
) -> DataParallel | None:
    """Under torchrun, this process's rank, once the run is known to split over the ranks and
    every rank is known to run the same config and ``options`` (None: a single process)."""
    ranks = launched_data_parallel()
    if ranks is None:
        return None
    device = rank_device(runner_cfg.device, ranks)
    per_rank_config(runner_cfg, ranks, device)  # refuses a batch that does not split, early
    join_process_group(ranks, device)
    check_same_config(runner_cfg, ranks, options)
    return ranks


def resume_training(path: str | Path, *, model: HookedSAETransformer | None = None) -> TrainResult:
    """Continue an interrupted run from its newest complete checkpoint, exactly as it would have
    gone on, and save the SAE where the run was going to. ``path``: the run's ``--output``, its
    staging folder ``<output>.partial``, or a checkpoint folder inside it."""
    staging, checkpoint = _locate_resume(Path(path).expanduser())
    record = json.loads((staging / RUN_CONFIG_FILENAME).read_text())
    requested = LanguageModelSAERunnerConfig.from_dict(record["runner_config"])
    ranks = launched_data_parallel()
    written_by, now = checkpoint_world_size(checkpoint), 1 if ranks is None else ranks.world_size
    if written_by != now:
        raise ValueError(
            f"{checkpoint} was written by a run of {written_by} process(es); resume it with "
            f"{written_by} (torchrun --nproc-per-node {written_by}), not {now}: each one's share "
            "of the data stream is in it"
        )
    ranks = _join_launched_ranks(requested, {"resume": str(staging), "checkpoint": checkpoint.name})
    output = Path(requested.output_path).expanduser()
    if staging_folder(output) != staging:
        raise ValueError(
            f"{staging} records a run whose output is {output}; it cannot be resumed from a "
            "moved folder (move it back)"
        )
    overwrite = bool(record.get("overwrite", False))  # as the interrupted run was asked
    check_output_folder(output, overwrite=overwrite, marker="cfg.json", what="a trained SAE")
    staged = _staged_config(requested, staging)
    logger.info("resuming %s from %s", output, checkpoint)
    return _run(
        requested,
        staged,
        record["model_path"],
        False,  # b_dec comes from the checkpoint
        model,
        record["checkpoint_every"],
        checkpoint,
        ranks,
    )


def _locate_resume(path: Path) -> tuple[Path, Path]:
    """(staging folder, newest complete checkpoint) for ``path`` (see :func:`resume_training`)."""
    candidates = [path, staging_folder(path)]
    if path.parent.name == "checkpoints":
        candidates.insert(0, path.parent.parent)
    for staging in candidates:
        if (staging / RUN_CONFIG_FILENAME).is_file():
            checkpoint = latest_complete_checkpoint(staging / "checkpoints")
            if checkpoint is None:
                raise FileNotFoundError(
                    f"{staging} holds no complete checkpoint to resume from (the run stopped "
                    "before its first one); train it again with --overwrite"
                )
            return staging, checkpoint
    raise FileNotFoundError(
        f"{path} is not an interrupted run: expected the folder a run was training into "
        f"(<output>.partial, holding {RUN_CONFIG_FILENAME} and checkpoints/), its --output, or a "
        "checkpoint inside it"
    )


def _resume_hint(output: Path) -> Callable[[Path], str]:
    staging = staging_folder(output)
    return lambda _checkpoint: (
        f"Continue with `sae-variants train --resume {staging}` "
        f"(Python: resume_training('{staging}'))."
    )


def _run(
    requested: LanguageModelSAERunnerConfig[Any],
    runner_cfg: LanguageModelSAERunnerConfig[Any],
    model_path: str | None,
    init_b_dec_to_mean: bool,
    model: HookedSAETransformer | None,
    checkpoint_every: int | None,
    resume_from: Path | None,
    ranks: DataParallel | None = None,
) -> TrainResult:
    output = Path(requested.output_path).expanduser()
    staging = Path(runner_cfg.output_path)
    main = ranks is None or ranks.is_main
    recorded = runner_cfg  # the global figures, which the saved runner_cfg.json records
    if ranks is not None:
        runner_cfg = per_rank_config(runner_cfg, ranks, rank_device(runner_cfg.device, ranks))
    try:
        runner = _build_runner(
            runner_cfg, model_path, init_b_dec_to_mean, model, checkpoint_every, resume_from, ranks
        )
        if ranks is not None:
            runner.recorded_cfg = bind_run(recorded)
        sae = runner.run()
    except BaseException:
        if main and not has_checkpoints(staging):  # nothing to resume from: leave nothing behind
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if main:
        (staging / RUN_CONFIG_FILENAME).unlink(missing_ok=True)
        move_into_place(staging, output)
        logger.info("saved the trained SAE to %s", output)
    if ranks is not None:
        dist.barrier()  # every rank returns once the SAE is in place
    result_cfg = copy.copy(runner.cfg if ranks is None else bind_run(requested))
    result_cfg.output_path, result_cfg.checkpoint_path = (
        requested.output_path,
        requested.checkpoint_path,
    )
    return TrainResult(output, sae, result_cfg)


def _build_runner(
    runner_cfg: LanguageModelSAERunnerConfig[Any],
    model_path: str | None,
    init_b_dec_to_mean: bool,
    model: HookedSAETransformer | None,
    checkpoint_every: int | None,
    resume_from: Path | None,
    ranks: DataParallel | None = None,
) -> VariantTrainingRunner:
    for device in {runner_cfg.device, runner_cfg.llm_device, runner_cfg.act_store_device}:
        resolve_device(device)  # a config written on another machine may name a device not here
    cache = None
    if runner_cfg.use_cached_activations:
        cache, info = open_cache(runner_cfg.cached_activations_path)
        _warn_about_repeated_passes(info, runner_cfg.training_tokens)
        if model_path is None:  # the cache records the local folder its model came from
            model_path = info.model_path
    dataset = _dataset_for(runner_cfg, cache)
    torch.manual_seed(runner_cfg.seed)
    if model is None:
        model = load_model(runner_cfg.model_name, device=runner_cfg.device, model_path=model_path)
    if cache is None and runner_cfg.dataset_path == AUSTEN_RECORD:
        dataset = austen_contexts("train", model.tokenizer, runner_cfg.context_size)
    if ranks is not None:
        dataset = shard_dataset(_hub_dataset(runner_cfg) if dataset is None else dataset, ranks)
    output = Path(runner_cfg.output_path).with_name(
        Path(runner_cfg.output_path).name.removesuffix(".partial")
    )
    runner = VariantTrainingRunner(
        runner_cfg,
        override_dataset=dataset,
        override_model=model,
        checkpoint_every=checkpoint_every,
        resume_from=resume_from,
        resume_hint=_resume_hint(output),
        data_parallel=ranks,
    )
    if init_b_dec_to_mean:
        initialize_b_dec_to_mean(
            runner.sae,
            runner.activations_store,
            runner_cfg.sae.normalize_activations,
            ranks=ranks,
        )
    return runner


def _hub_dataset(runner_cfg: LanguageModelSAERunnerConfig[Any]) -> Any:
    """The hub dataset SAELens would stream for ``runner_cfg``, opened here so each rank can take
    its share of it."""
    from datasets import load_dataset

    return load_dataset(
        runner_cfg.dataset_path,
        split="train",
        streaming=runner_cfg.streaming,
        trust_remote_code=runner_cfg.dataset_trust_remote_code,
    )

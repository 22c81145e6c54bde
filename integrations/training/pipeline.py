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
    check_resumable_by,
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
    contexts_per_share,
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
from sae_variants.replicas import Replicas
from sae_variants.token_context import needs_sequence_pipeline
from sae_variants.validation import all_finite, check_activations

logger = logging.getLogger(__name__)


def sample_contexts(
    store: Any, n_contexts: int, slice_of: DataParallel | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids ``[n, context]``, activations ``[n, context, d_in]``) of ``n_contexts`` contexts:
    the first rows of the store's activation cache, or the next contexts of its dataset stream run
    through the model (training then starts that many contexts later in the data; they come round
    again in later epochs). ``slice_of``: every rank reads the whole cache (a sequence-aware pool
    in data-parallel training), and this one takes its rank's slice of the first
    ``N * n_contexts`` rows."""
    cached = getattr(store, "cached_activation_dataset", None)
    if cached is not None:
        rows = range(min(n_contexts, len(cached)))
        if slice_of is not None:
            total = min(slice_of.world_size * n_contexts, len(cached))
            rank, n = slice_of.rank, slice_of.world_size
            rows = range(rank * total // n, (rank + 1) * total // n)
        acts = cached[rows.start : rows.stop][store.hook_name]
        if TOKEN_IDS_COLUMN not in cached.column_names:  # nothing to filter by
            return torch.full(acts.shape[:2], -1, dtype=torch.long), acts
        return cached_token_ids(cached.select(rows)), acts
    tokens = store.get_batch_tokens(n_contexts)
    return tokens, store.get_activations(tokens)


@torch.no_grad()
def initialize_b_dec_to_mean(
    sae: TrainingSAE[Any],
    store: Any,
    normalize_activations: str,
    n_batches: int = 4,
    ranks: DataParallel | None = None,
    whole_cache: bool = False,
) -> None:
    """Set ``b_dec`` to the mean of a few store batches, in the space the SAE trains in.

    With ``expected_average_only_in`` the trainer scales inputs by sqrt(d_in) / E||x||, so the
    mean is scaled the same way. Special tokens are left out, as in training. In data-parallel
    training (``ranks``) each rank reads its share of the contexts one process would (with
    ``whole_cache``, every rank reading the whole activation cache, its slice of the first rows),
    and the mean and norm come from the ranks' summed rows.
    """
    n_contexts = n_batches * store.store_batch_size_prompts
    if ranks is not None:  # each rank reads its share of the same global contexts
        n_contexts = max(1, n_contexts // ranks.world_size)
    tokens, acts = sample_contexts(store, n_contexts, ranks if whole_cache else None)
    acts = acts.reshape(-1, sae.cfg.d_in)
    if store.exclude_special_tokens is not None:
        keep = ~torch.isin(tokens.reshape(-1), store.exclude_special_tokens.to(tokens.device))
        acts = acts[keep.to(acts.device)]
    where = "activations for the b_dec initialization"
    if ranks is None:
        check_activations(acts, sae.cfg.d_in, where=where)
        rows = acts.shape[0]
        mean, norm = acts.mean(dim=0), None
        if rows and normalize_activations == "expected_average_only_in":
            norm = acts.norm(dim=-1).mean()
    else:
        mean, norm, rows = _mean_over_ranks(acts, ranks.replicas, where)
    if rows == 0:
        raise ValueError(
            f"{where}: no usable token in the {n_contexts} context(s) read (every token is one "
            "of the excluded special tokens?)"
        )
    if normalize_activations == "expected_average_only_in":
        mean = mean * (sae.cfg.d_in**0.5 / norm)
    sae.b_dec.copy_(mean.to(sae.b_dec.dtype))


def _mean_over_ranks(
    acts: torch.Tensor, replicas: Replicas, where: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean row, mean row norm, rows) of every rank's ``acts`` together, from their summed
    float64 sums; refused on every rank at once when any rank's rows are not finite (the rank
    holding them names how many)."""
    d_in = acts.shape[-1]
    finite_here = all_finite(acts)
    flag = torch.tensor(int(finite_here), dtype=torch.int32, device=acts.device)
    if not bool(replicas.min_(flag)):
        check_activations(acts, d_in, where=where)  # raises on the rank holding them
        raise ValueError(f"{where}: another rank's activations are not finite (see its error)")
    x = acts.double()
    sums = torch.cat([x.sum(dim=0), x.norm(dim=-1).sum().reshape(1), x.new_tensor([len(x)])])
    replicas.sum_(sums)
    rows = int(sums[-1])
    return sums[:d_in] / max(rows, 1), sums[d_in] / max(rows, 1), rows


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
    ranks, share = _join_launched_ranks(runner_cfg, options)

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
    staging = staging_folder(Path(runner_cfg.output_path).expanduser())
    return _run(
        _Run(
            requested=runner_cfg,
            trained=_staged_config(share, staging),
            model_path=model_path,
            init_b_dec_to_mean=init_b_dec_to_mean,
            model=model,
            checkpoint_every=checkpoint_every,
            resume_from=None,
            ranks=ranks,
        )
    )


def _join_launched_ranks(
    runner_cfg: LanguageModelSAERunnerConfig[Any], options: dict[str, Any]
) -> tuple[DataParallel | None, LanguageModelSAERunnerConfig[Any]]:
    """(this process's rank under torchrun, or None for a single process; the config this
    process trains: ``runner_cfg`` itself, or this rank's share of each global batch on its own
    device). Under torchrun the group is joined once the run is known to split over the ranks
    and every rank is known to run the same config and ``options``."""
    ranks = launched_data_parallel()
    if ranks is None:
        return None, runner_cfg
    # per_rank_config refuses a batch that does not split before the group is joined
    share = per_rank_config(runner_cfg, ranks, rank_device(runner_cfg.device, ranks))
    join_process_group(ranks, share.device)
    check_same_config(runner_cfg, ranks, options)
    return ranks, share


def resume_training(path: str | Path, *, model: HookedSAETransformer | None = None) -> TrainResult:
    """Continue an interrupted run from its newest complete checkpoint, exactly as it would have
    gone on, and save the SAE where the run was going to. ``path``: the run's ``--output``, its
    staging folder ``<output>.partial``, or a checkpoint folder inside it."""
    staging, checkpoint = _locate_resume(Path(path).expanduser())
    record = json.loads((staging / RUN_CONFIG_FILENAME).read_text())
    requested = LanguageModelSAERunnerConfig.from_dict(record["runner_config"])
    launched = launched_data_parallel()
    check_resumable_by(checkpoint, 1 if launched is None else launched.world_size)
    options = {"resume": str(staging), "checkpoint": checkpoint.name}
    ranks, share = _join_launched_ranks(requested, options)
    output = Path(requested.output_path).expanduser()
    if staging_folder(output) != staging:
        raise ValueError(
            f"{staging} records a run whose output is {output}; it cannot be resumed from a "
            "moved folder (move it back)"
        )
    overwrite = bool(record.get("overwrite", False))  # as the interrupted run was asked
    check_output_folder(output, overwrite=overwrite, marker="cfg.json", what="a trained SAE")
    logger.info("resuming %s from %s", output, checkpoint)
    return _run(
        _Run(
            requested=requested,
            trained=_staged_config(share, staging),
            model_path=record["model_path"],
            init_b_dec_to_mean=False,  # b_dec comes from the checkpoint
            model=model,
            checkpoint_every=record["checkpoint_every"],
            resume_from=checkpoint,
            ranks=ranks,
        )
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


@dataclass(frozen=True)
class _Run:
    """One run as the entry points hand it to :func:`_run`."""

    requested: LanguageModelSAERunnerConfig[Any]
    """The config as asked: the global batch and token counts, the final output folder."""
    trained: LanguageModelSAERunnerConfig[Any]
    """The config this process trains: writing into the staging folder, with this rank's share
    of each batch in data-parallel training."""
    model_path: str | None
    init_b_dec_to_mean: bool
    model: HookedSAETransformer | None
    checkpoint_every: int | None
    resume_from: Path | None
    ranks: DataParallel | None


def _run(run: _Run) -> TrainResult:
    output = Path(run.requested.output_path).expanduser()
    staging = staging_folder(output)
    main = run.ranks is None or run.ranks.is_main
    try:
        runner = _build_runner(run)
        if run.ranks is not None:  # the saved runner_cfg.json records the global figures
            runner.recorded_cfg = bind_run(_staged_config(run.requested, staging))
        sae = runner.run()
    except BaseException:
        if main and not has_checkpoints(staging):  # nothing to resume from: leave nothing behind
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if main:
        (staging / RUN_CONFIG_FILENAME).unlink(missing_ok=True)
        move_into_place(staging, output)
        logger.info("saved the trained SAE to %s", output)
    if run.ranks is not None:
        dist.barrier()  # every rank returns once the SAE is in place
    result_cfg = copy.copy(runner.cfg if run.ranks is None else bind_run(run.requested))
    result_cfg.output_path, result_cfg.checkpoint_path = (
        run.requested.output_path,
        run.requested.checkpoint_path,
    )
    return TrainResult(output, sae, result_cfg)


def _build_runner(run: _Run) -> VariantTrainingRunner:
    runner_cfg, model_path, model, ranks = run.trained, run.model_path, run.model, run.ranks
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
        dataset = shard_dataset(
            _hub_dataset(runner_cfg) if dataset is None else dataset,
            ranks,
            contexts_per_share(runner_cfg, ranks),
        )
    runner = VariantTrainingRunner(
        runner_cfg,
        override_dataset=dataset,
        override_model=model,
        checkpoint_every=run.checkpoint_every,
        resume_from=run.resume_from,
        resume_hint=_resume_hint(Path(run.requested.output_path).expanduser()),
        data_parallel=ranks,
    )
    if run.init_b_dec_to_mean:
        initialize_b_dec_to_mean(
            runner.sae,
            runner.activations_store,
            runner_cfg.sae.normalize_activations,
            ranks=ranks,
            whole_cache=ranks is not None and needs_sequence_pipeline(runner_cfg.sae),
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

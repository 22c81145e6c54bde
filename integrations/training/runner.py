"""One SAELens runner for every architecture: :class:`VariantTrainingRunner`.

It is SAELens's ``LanguageModelSAETrainingRunner`` plus what a variant needs from the run, all
through seams SAELens exposes:

1. before anything is built, the config is checked (no NaN/inf setting) and the SAE config is
   bound to the run (:func:`bind_run`: the variant receives its run's facts once, and the
   warm-ups are checked against the run's length);
2. the activation store is wrapped: the per-token batches come from a
   :class:`~sae_variants.integrations.training.mixing_stream.ResumableMixingStream` (SAELens's
   mixing buffer, bit for bit, with a state a checkpoint holds), and for a config that declares a
   sequence layout from a
   :class:`~sae_variants.integrations.training.sequence_batches.SequenceBatchSource` over that
   same store; every batch is checked (finite, of width ``d_in``); around either, a
   :class:`~sae_variants.integrations.training.checkpoints.CheckpointSeam` writes complete
   checkpoints between steps (periodically, and on SIGINT/SIGTERM) and a resumed run reads one
   back (the runner reads batches and saves checkpoints through ``runner.activations_store``);
3. once SAELens's trainer exists, the SAE is bound to *its* optimizer (``bind_optimizer``), and
   ``trainer.step`` (its documented per-batch seam, called by ``fit`` with each batch exactly as
   the data provider returned it) hands a sequence-aware SAE the batch's token context first and
   stops the run within any step whose loss terms or parameters go non-finite; the final
   weights are checked before they are saved.

4. in data-parallel training (``data_parallel``, :mod:`~.distributed`), gradients are averaged
   over the ranks at the end of each backward, SAELens's statistics are reduced, only rank 0
   writes, and the ranks' copies are checked to agree at every checkpoint and at the end.

Everything else (the model, Adam, schedules, clipping, normalization and its fold, saving) is
SAELens's own; ``tests/integrations/training/test_sequence_training.py`` pins the SAELens
behaviour this relies on.

    runner = VariantTrainingRunner(LanguageModelSAERunnerConfig(
        sae=SeqContrastiveTrainingSAEConfig(d_in=2304, d_sae=16384), ...))
    sae = runner.run()
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.constants import RUNNER_CFG_FILENAME
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_variants.architectures.base import RunInfo, VariantTrainingSAE, VariantTrainingSAEConfig
from sae_variants.integrations.training.checkpoints import CheckpointSeam, load_checkpoint
from sae_variants.integrations.training.distributed import (
    DataParallel,
    GradientAverager,
    broadcast_state,
    check_replicas_agree,
    checkpoints_from_rank_zero,
    contexts_per_share,
    shard_activation_cache,
    synchronize_feature_statistics,
    synchronize_scaling_estimate,
)
from sae_variants.integrations.training.finite_guard import (
    check_finite_parameters,
    guard_finite_steps,
    refuse_non_finite_config,
    refuse_overflowing_learning_rate,
)
from sae_variants.integrations.training.mixing_stream import ResumableMixingStream
from sae_variants.integrations.training.sequence_batches import SequenceBatchSource
from sae_variants.replicas import SINGLE
from sae_variants.token_context import NeedsTokenContext, SequenceLayout, sequence_layout_of


def run_info(cfg: LanguageModelSAERunnerConfig[Any]) -> RunInfo:
    """The facts of the run ``cfg`` describes."""
    return RunInfo(
        total_steps=cfg.training_tokens // cfg.train_batch_size_tokens,
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        context_size=cfg.context_size,
    )


def check_warm_ups_fit(sae_cfg: TrainingSAEConfig, run: RunInfo) -> None:
    """``ValueError`` for any ``*_warm_up_steps`` field longer than the whole run."""
    for f in dataclasses.fields(sae_cfg):
        value = getattr(sae_cfg, f.name)
        if f.name.endswith("_warm_up_steps") and isinstance(value, int) and value > run.total_steps:
            raise ValueError(
                f"{f.name}={value} is longer than the whole run ({run.total_steps} steps); "
                "shorten the warm-up or train for more tokens"
            )


def bind_sae_config(sae_cfg: TrainingSAEConfig, run: RunInfo) -> TrainingSAEConfig:
    """``sae_cfg`` bound to ``run`` (a variant's ``bind_run``; SAELens's built-ins take nothing)."""
    return sae_cfg.bind_run(run) if isinstance(sae_cfg, VariantTrainingSAEConfig) else sae_cfg


def bind_run(cfg: LanguageModelSAERunnerConfig[Any]) -> LanguageModelSAERunnerConfig[Any]:
    """A copy of ``cfg`` whose SAE config is bound to the run and whose warm-ups fit in it.
    Binding a bound config changes nothing."""
    refuse_non_finite_config(cfg)
    refuse_overflowing_learning_rate(cfg)
    run = run_info(cfg)
    sae_cfg = bind_sae_config(cfg.sae, run)
    check_warm_ups_fit(sae_cfg, run)
    bound = copy.copy(cfg)
    bound.sae = sae_cfg
    return bound


@contextlib.contextmanager
def _signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block (in the main thread only: Python
    delivers signals there); the previous handlers are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def deliver_token_contexts(
    trainer: SAETrainer[Any, Any], sae: TrainingSAE[Any], source: SequenceBatchSource
) -> None:
    """Make ``trainer`` hand ``sae`` each batch's token context right before stepping on it."""
    step = trainer.step

    def step_with_context(batch: Any) -> Any:
        context = source.context_of(batch)
        if isinstance(sae, NeedsTokenContext):
            sae.attach_token_context(context)
        return step(batch)

    trainer.step = step_with_context  # type: ignore[method-assign]


def attach_to_trainer(
    trainer: SAETrainer[Any, Any],
    sequence_batches: SequenceBatchSource | None = None,
    checkpoint_path: str | None = None,
) -> None:
    """Give the trainer's SAE what SAELens's trainer does not: its optimizer (for variants that
    act on it), with a sequence source each batch's token context, and a check that every step
    ends finite (naming the last checkpoint under ``checkpoint_path`` when it does not)."""
    if isinstance(trainer.sae, VariantTrainingSAE):
        trainer.sae.bind_optimizer(trainer.optimizer)
    if sequence_batches is not None:
        deliver_token_contexts(trainer, trainer.sae, sequence_batches)
    guard_finite_steps(trainer, checkpoint_path)


class VariantTrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` for every architecture (see the module docstring).

    ``layout`` defaults to what the SAE's config declares (``sequence_layout()``); a per-token
    SAE (e.g. SAELens ``standard``) may be trained on sequence-structured batches by passing one.
    ``pool_contexts`` sets how many contexts a sequence source keeps for mixing (default: twice
    a batch's).
    """

    sequence_batches: SequenceBatchSource | None
    checkpoint_seam: CheckpointSeam | None
    """The data provider the trainer reads (None with SAELens's prefetching, which reads ahead
    in another thread, so no step boundary can be checkpointed)."""

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: Any = None,
        override_model: Any = None,
        override_sae: TrainingSAE[Any] | None = None,
        *,
        layout: SequenceLayout | None = None,
        pool_contexts: int | None = None,
        checkpoint_every: int | None = None,
        resume_from: str | Path | None = None,
        resume_hint: Callable[[Path], str] | None = None,
        data_parallel: DataParallel | None = None,
    ) -> None:
        """``checkpoint_every``: write a complete checkpoint every this many steps (SIGINT and
        SIGTERM always write one, see :mod:`~.checkpoints`); ``resume_from``: a checkpoint
        folder to continue from exactly; ``resume_hint``: the sentence an interrupted run prints
        about resuming, given the checkpoint written; ``data_parallel``: this process's rank in
        data-parallel training (:mod:`~.distributed`), with ``cfg`` its per-rank config and
        ``override_dataset`` its share of the data already, dealt out by ``shard_dataset`` in
        blocks of ``contexts_per_share`` (an activation cache is shared out here)."""
        if cfg.prefetch_llm_batches and (checkpoint_every or resume_from):
            raise ValueError(
                "prefetch_llm_batches reads batches ahead in another thread, so no step boundary "
                "can be checkpointed or resumed exactly; set it to False to use checkpoint_every "
                "or resume_from"
            )
        if (checkpoint_every or resume_from) and cfg.checkpoint_path is None:
            raise ValueError("checkpoint_every and resume_from need cfg.checkpoint_path")
        cfg = bind_run(cfg)
        super().__init__(
            cfg,
            override_dataset=override_dataset,
            override_model=override_model,
            override_sae=override_sae,
        )
        self.data_parallel = data_parallel
        self.recorded_cfg: LanguageModelSAERunnerConfig[Any] | None = None
        """The config ``runner_cfg.json`` records when it is not ``cfg`` (in data-parallel
        training: the global batch and token counts, not this rank's share)."""
        layout = layout or sequence_layout_of(cfg.sae)
        replicas = SINGLE
        if data_parallel is not None:
            replicas = data_parallel.replicas
            self.sae.replicas = replicas  # type: ignore[assignment]
            if layout is None:  # a sequence-aware pool reads its share of each refill itself
                block = contexts_per_share(cfg, data_parallel)
                shard_activation_cache(self.activations_store, data_parallel, block)
        self.sequence_batches = None
        if layout is not None:
            self.sequence_batches = SequenceBatchSource(
                self.activations_store,
                layout,
                cfg.train_batch_size_tokens * replicas.world_size,  # the global batch
                pool_contexts=pool_contexts,
                seed=cfg.seed,
                replicas=replicas,
            )
            # The source checks every batch itself.
            self.activations_store = self.sequence_batches  # type: ignore[assignment]
            if isinstance(self.sae, NeedsTokenContext):
                self.sae.expect_token_contexts()  # delivered by attach_to_trainer
        else:
            self.activations_store = ResumableMixingStream(  # type: ignore[assignment]
                self.activations_store, cfg.sae.d_in, cfg.hook_name
            )
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.checkpoint_seam = None
        if not cfg.prefetch_llm_batches:
            hint = resume_hint or (
                lambda c: f"Resume with VariantTrainingRunner(..., resume_from='{c}')."
            )
            self.checkpoint_seam = CheckpointSeam(self.activations_store, checkpoint_every, hint)
            self.checkpoint_seam.layout = data_parallel
            self.activations_store = self.checkpoint_seam  # type: ignore[assignment]

    def run_trainer_with_interruption_handling(self, trainer: SAETrainer[Any, Any]) -> Any:
        attach_to_trainer(trainer, self.sequence_batches, self.cfg.checkpoint_path)
        ranks = self.data_parallel
        if ranks is not None:
            if self.checkpoint_seam is None:
                raise ValueError(
                    "data-parallel training reads batches step by step; set "
                    "prefetch_llm_batches=False"
                )
            checkpoints_from_rank_zero(ranks, trainer)
            synchronize_scaling_estimate(trainer, ranks.replicas)
            synchronize_feature_statistics(trainer, ranks.replicas)
        seam = self.checkpoint_seam
        if seam is None:
            return super().run_trainer_with_interruption_handling(trainer)
        seam.trainer = trainer
        if self.resume_from is not None:
            load_checkpoint(trainer, seam._provider, self.resume_from, ranks)
            seam.training_started = True
        else:
            step = trainer.step

            def first_step_starts_training(batch: Any) -> Any:
                seam.training_started = True
                trainer.step = step  # type: ignore[method-assign]
                return step(batch)

            trainer.step = first_step_starts_training  # type: ignore[method-assign]
        averager = None
        if ranks is not None:
            broadcast_state(trainer.sae)
            averager = GradientAverager(trainer.sae, ranks)
        try:
            with _signals_to(seam.on_signal):
                sae = trainer.fit()
        finally:
            if averager is not None:
                averager.remove()
        if ranks is not None:
            check_replicas_agree(sae, "the end of training")
            sae.replicas = None  # training is over: what the caller does next is its own
        return sae

    def save_final_sae(self, sae: TrainingSAE[Any], output_path: str, **kwargs: Any) -> None:
        """SAELens's save, once every weight is known to be finite (rank 0 alone, in
        data-parallel training)."""
        if self.data_parallel is not None and not self.data_parallel.is_main:
            # Saving folds the decoder norms in place; the SAE every rank returns is the same.
            if isinstance(sae, VariantTrainingSAE):
                sae.fold_W_dec_norm()
            return
        check_finite_parameters(sae, f"saving to {output_path}")
        super().save_final_sae(sae, output_path, **kwargs)
        self._record_config(Path(output_path))

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        """SAELens's checkpoint of the data provider and the runner config (as recorded)."""
        super().save_checkpoint(checkpoint_path)
        if checkpoint_path is not None:
            self._record_config(checkpoint_path)

    def _record_config(self, folder: Path) -> None:
        if self.recorded_cfg is not None:
            (folder / RUNNER_CFG_FILENAME).write_text(json.dumps(self.recorded_cfg.to_dict()))

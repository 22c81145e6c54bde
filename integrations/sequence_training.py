"""SAELens's training runner with sequence-structured batches and per-row token contexts.

:class:`SequenceAwareTrainingRunner` is SAELens's ``LanguageModelSAETrainingRunner`` with two
changes, both through seams SAELens exposes:

1. its activation store is replaced by a :class:`SequenceBatchSource` over that same store (the
   runner reads batches, saves and restores checkpoints through ``runner.activations_store``);
2. before training, ``trainer.step`` (the trainer's documented per-batch seam, called by ``fit``
   with each batch exactly as the data provider returned it) is wrapped so that the SAE receives
   the batch's :class:`~sae_variants.token_context.TokenContext` just before the step runs.

Everything else (the model, Adam, schedules, clipping, checkpoints, normalization and its fold,
saving) is SAELens's own. ``tests/integrations/test_sequence_training.py`` pins the SAELens
behaviour this relies on, so an upgrade that changes it fails a test instead of training on
wrong pairs.

    runner = SequenceAwareTrainingRunner(LanguageModelSAERunnerConfig(
        sae=SeqContrastiveTrainingSAEConfig(d_in=2304, d_sae=16384), ...))
    sae = runner.run()
"""

from __future__ import annotations

from typing import Any

from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_variants.integrations.sequence_batches import SequenceBatchSource
from sae_variants.token_context import NeedsTokenContext, SequenceLayout


def sequence_layout_of(sae_cfg: TrainingSAEConfig) -> SequenceLayout | None:
    """The batches a training config declares it needs, or None for per-token SAEs."""
    declare = getattr(sae_cfg, "sequence_layout", None)
    return declare() if callable(declare) else None


def needs_sequence_pipeline(sae_cfg: TrainingSAEConfig | type[TrainingSAEConfig]) -> bool:
    """Whether a training config (or config class) declares a sequence layout."""
    return callable(getattr(sae_cfg, "sequence_layout", None))


def deliver_token_contexts(trainer: SAETrainer[Any, Any], sae: TrainingSAE[Any], source: SequenceBatchSource) -> None:
    """Make ``trainer`` hand ``sae`` each batch's token context right before stepping on it."""
    step = trainer.step

    def step_with_context(batch: Any) -> Any:
        context = source.context_of(batch)
        if isinstance(sae, NeedsTokenContext):
            sae.attach_token_context(context)
        return step(batch)

    trainer.step = step_with_context  # type: ignore[method-assign]


class SequenceAwareTrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` whose batches are S contexts x P positions, shuffled by
    sequence, with every row's position, sequence id and token id delivered to the SAE.

    ``layout`` defaults to what the SAE's config declares (``sequence_layout()``); a per-token
    SAE (e.g. SAELens ``standard``) may be trained on the same batches by passing one.
    ``pool_contexts`` sets how many contexts are kept for mixing (default: twice a batch's).
    """

    sequence_batches: SequenceBatchSource

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: Any = None,
        override_model: Any = None,
        override_sae: TrainingSAE[Any] | None = None,
        *,
        layout: SequenceLayout | None = None,
        pool_contexts: int | None = None,
    ) -> None:
        layout = layout or sequence_layout_of(cfg.sae)
        if layout is None:
            raise ValueError(
                f"the {cfg.sae.architecture()!r} config declares no sequence layout; pass "
                "layout=SequenceLayout(...) to train it on sequence-structured batches"
            )
        if hasattr(cfg.sae, "total_training_steps") and cfg.sae.total_training_steps is None:
            # Curricula defined as fractions of the run need its length.
            cfg.sae.total_training_steps = cfg.training_tokens // cfg.train_batch_size_tokens
        super().__init__(cfg, override_dataset=override_dataset, override_model=override_model,
                         override_sae=override_sae)
        self.sequence_batches = SequenceBatchSource(
            self.activations_store, layout, cfg.train_batch_size_tokens,
            pool_contexts=pool_contexts, seed=cfg.seed,
        )
        # The runner draws batches and writes/reads checkpoints through this attribute.
        self.activations_store = self.sequence_batches  # type: ignore[assignment]

    def run_trainer_with_interruption_handling(self, trainer: SAETrainer[Any, Any]) -> Any:
        deliver_token_contexts(trainer, self.sae, self.sequence_batches)
        return super().run_trainer_with_interruption_handling(trainer)

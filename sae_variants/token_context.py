"""Where each training row came from: its sequence, its position and its token.

SAELens's ``TrainStepInput`` carries only the activations, and its store shuffles single tokens,
so a variant whose training step needs sequence structure (seeds 003 and 004) cannot get it from
SAELens alone. Such a variant's training config declares the batches it needs with a
``sequence_layout()`` method returning a :class:`SequenceLayout`; a sequence-aware data source
builds batches that way and hands the SAE one :class:`TokenContext` per step, through
:meth:`NeedsTokenContext.attach_token_context`, and the step reads it as a
:class:`SequenceStepInput`.

A training step that finds no context raises :class:`MissingTokenContextError`: training on
shuffled tokens with invented positions would be silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from jaxtyping import Int
from sae_lens.saes.sae import TrainStepInput
from torch import Tensor

SAMPLINGS = ("uniform", "span", "pairs")


@dataclass(frozen=True)
class SequenceLayout:
    """How a sequence-aware batch is made: S contexts x P positions, shuffled by sequence.

    The batch has ``train_batch_size_tokens = S * P`` rows, ``P`` consecutive rows per context.
    Every position of a context is served once (in some batch) before the context leaves the pool.
    """

    positions_per_context: int | None = None
    """P. ``None``: every usable position of a context at once (whole contexts; BOS and other
    special tokens are never served)."""
    sampling: str = "uniform"
    """How a context's positions are grouped into its batches of P: ``"uniform"`` (a random
    subset each time), ``"span"`` (P consecutive positions) or ``"pairs"`` (P/2 pairs of positions
    at most ``pair_window`` apart, the seed-003 anchor/positive layout)."""
    pair_window: int = 8
    """w: the largest distance between the two positions of a pair (``"pairs"`` only)."""

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"sampling must be one of {', '.join(SAMPLINGS)}; got {self.sampling!r}"
            )
        if self.positions_per_context is not None and self.positions_per_context < 1:
            raise ValueError(
                f"positions_per_context must be >= 1 or None, got {self.positions_per_context}"
            )
        if self.sampling == "pairs":
            if self.positions_per_context is None or self.positions_per_context % 2:
                raise ValueError(
                    "sampling='pairs' needs an even positions_per_context (P/2 pairs per context), "
                    f"got {self.positions_per_context}"
                )
            if self.pair_window < 1:
                raise ValueError(f"pair_window must be >= 1, got {self.pair_window}")


def sequence_layout_of(sae_cfg: Any) -> SequenceLayout | None:
    """The batches a training config declares it needs, or None for per-token SAEs."""
    declare = getattr(sae_cfg, "sequence_layout", None)
    return declare() if callable(declare) else None


def needs_sequence_pipeline(sae_cfg: Any) -> bool:
    """Whether a training config (or config class) declares a sequence layout."""
    return callable(getattr(sae_cfg, "sequence_layout", None))


@dataclass(frozen=True)
class TokenContext:
    """Per-row provenance of one training batch (row ``i`` describes ``sae_in[i]``)."""

    positions: Int[Tensor, " rows"]
    """Index of the token in its context (0 is the context's first token)."""
    sequence_ids: Int[Tensor, " rows"]
    """Which context the row came from; unique per context within a run."""
    token_ids: Int[Tensor, " rows"]
    """The token at that position."""

    def __post_init__(self) -> None:
        sizes = {t.shape for t in (self.positions, self.sequence_ids, self.token_ids)}
        if len(sizes) != 1 or self.positions.ndim != 1:
            raise ValueError(
                "positions, sequence_ids and token_ids must be 1-D and of one length, got shapes "
                f"{[tuple(t.shape) for t in (self.positions, self.sequence_ids, self.token_ids)]}"
            )

    @property
    def n_rows(self) -> int:
        return int(self.positions.shape[0])

    def to(self, device: torch.device | str) -> TokenContext:
        return TokenContext(
            self.positions.to(device), self.sequence_ids.to(device), self.token_ids.to(device)
        )

    def __getitem__(self, index: Any) -> TokenContext:
        return TokenContext(self.positions[index], self.sequence_ids[index], self.token_ids[index])


@dataclass
class SequenceStepInput(TrainStepInput):
    """A training step's input with the token context of its rows (row ``i`` of ``sae_in``)."""

    token_context: TokenContext


class MissingTokenContextError(RuntimeError):
    """A sequence-aware training step ran without the pipeline that knows where its rows are from."""


def _no_context_message(architecture: str) -> str:
    return (
        f"the {architecture!r} SAE trains on sequence-structured batches and needs each "
        "row's sequence id and position, which SAELens's LanguageModelSAETrainingRunner "
        "cannot provide (its store shuffles single tokens). Train it with "
        "sae_variants.integrations.training.VariantTrainingRunner (same arguments) or "
        "`sae-variants train`; in your own loop, call sae.expect_token_contexts() once and "
        "sae.attach_token_context(TokenContext(...)) before each training_forward_pass."
    )


class NeedsTokenContext:
    """Mixin for a training SAE whose step reads a :class:`TokenContext` (one per step).

    The pipeline attaches the context right before SAELens's trainer runs the step on the batch
    it belongs to; :meth:`take_token_context` consumes it, so a step can never reuse a stale one.

    A trainer that will deliver contexts says so first (:meth:`expect_token_contexts`):
    ``get_coefficients``, which SAELens's ``SAETrainer`` calls in its constructor, refuses an SAE
    that nothing will feed, so SAELens's own runner fails before its normalization estimate and
    before any step rather than at the first one.
    """

    _pending_token_context: TokenContext | None = None
    _expects_token_contexts: bool = False

    def expect_token_contexts(self) -> None:
        """Declare that a context will be attached before every training step."""
        self._expects_token_contexts = True

    def attach_token_context(self, context: TokenContext) -> None:
        self._pending_token_context = context

    def get_coefficients(self) -> Any:
        if not self._expects_token_contexts and self._pending_token_context is None:
            raise MissingTokenContextError(
                _no_context_message(self.cfg.architecture())  # type: ignore[attr-defined]
            )
        return super().get_coefficients()  # type: ignore[misc]

    def take_token_context(self, n_rows: int, device: torch.device) -> TokenContext:
        """The context of the batch of ``n_rows`` rows now being trained on, or a clear error."""
        context, self._pending_token_context = self._pending_token_context, None
        architecture = self.cfg.architecture()  # type: ignore[attr-defined]
        if context is None:
            raise MissingTokenContextError(_no_context_message(architecture))
        if context.n_rows != n_rows:
            raise ValueError(
                f"the token context describes {context.n_rows} rows but the training batch has "
                f"{n_rows}; the context belongs to another batch"
            )
        return context.to(device)

    def with_token_context(self, step_input: TrainStepInput) -> SequenceStepInput:
        """``step_input`` with this step's token context (consumed: see :meth:`take_token_context`)."""
        x = step_input.sae_in
        context = self.take_token_context(x.shape[0], x.device)
        values = {f.name: getattr(step_input, f.name) for f in fields(step_input)}
        return SequenceStepInput(**values, token_context=context)

"""The per-token training batches, as SAELens serves them, with a state a checkpoint can hold.

SAELens's store serves batches from ``mixing_buffer``, a generator: its half-full buffer of
shuffled activations lives in a Python frame no checkpoint can reach, so a resumed run refills
it from the dataset and trains on other batches than the uninterrupted run would have. This
computes the same batches with the same arithmetic and the same draws from torch's global RNG
(so a run gives bit-identical batches through either), from the same source (the store's
``get_filtered_llm_batch``), and keeps its buffer as plain tensors:
:meth:`save_to_checkpoint` writes them beside the store's dataset position (or its activation
cache row), and :meth:`load_from_checkpoint` puts both back. The buffer is the size SAELens's
is (``n_batches_in_buffer * context_size`` rows of ``d_in``), so a checkpoint holds that much.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sae_variants.validation import check_activations

MIXING_STATE_FILENAME = "sae_variants_mixing_buffer.safetensors"


class ResumableMixingStream:
    """The runner's per-token data provider: SAELens's mixing buffer over ``store``, every batch
    checked (finite, width ``d_in``) before the SAE sees it. Everything but iteration and
    checkpoints is delegated to the store."""

    def __init__(self, store: Any, d_in: int, hook: str) -> None:
        if not 0 <= store.activations_mixing_fraction <= 1:
            raise ValueError(
                "activations_mixing_fraction must be in [0, 1], got "
                f"{store.activations_mixing_fraction}"
            )
        self._store = store
        self._d_in = d_in
        self._hook = hook
        self.buffer_size = store.n_batches_in_buffer * store.training_context_size
        self.batch_size = store.train_batch_size_tokens
        if self.buffer_size < self.batch_size:
            raise ValueError("Buffer size must be greater than or equal to batch size")
        self.mix_fraction = store.activations_mixing_fraction
        self.storage: Tensor | None = None
        self.serving: Tensor | None = None
        self.served = 0
        """Batches of ``serving`` already handed out."""

    def __getattr__(self, name: str) -> Any:
        if name == "_store":
            raise AttributeError(name)
        return getattr(self._store, name)

    def __iter__(self) -> ResumableMixingStream:
        return self

    def _pull(self) -> Tensor:
        # SAELens's _iterate_filtered_activations, one batch per call.
        try:
            return self._store.get_filtered_llm_batch(raise_on_epoch_end=True)
        except StopIteration:
            warnings.warn(
                "All samples in the training dataset have been exhausted, beginning new epoch.",
                stacklevel=2,
            )
            try:
                return self._store.get_filtered_llm_batch()
            except StopIteration as error:
                raise ValueError(
                    "Unable to fill buffer after starting new epoch. Dataset may be too small."
                ) from error

    @torch.no_grad()
    def _refill(self) -> None:
        while True:
            new = self._pull()
            self.storage = new if self.storage is None else torch.cat([self.storage, new], dim=0)
            if self.storage.shape[0] < self.buffer_size:
                continue
            if self.mix_fraction > 0:
                self.storage = self.storage[torch.randperm(self.storage.shape[0])]
            keep_for_mixing = int(self.buffer_size * self.mix_fraction)
            batches = max(1, (self.storage.shape[0] - keep_for_mixing) // self.batch_size)
            cutoff = batches * self.batch_size
            self.serving, self.storage = self.storage[:cutoff], self.storage[cutoff:]
            self.served = 0
            return

    def __next__(self) -> Tensor:
        if self.serving is None or self.served * self.batch_size >= self.serving.shape[0]:
            self._refill()
        assert self.serving is not None
        start = self.served * self.batch_size
        batch = self.serving[start : start + self.batch_size]
        self.served += 1
        check_activations(batch, self._d_in, where=f"training activations at {self._hook}")
        return batch

    # ---------------------------------------------------------------------------- checkpoints

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        """The store's position (dataset samples read, or activation-cache row) and the buffer:
        the rows kept for mixing and the rows not yet served."""
        self._store.save_to_checkpoint(checkpoint_path)
        empty = torch.zeros(0, self._d_in)
        unserved = (
            empty
            if self.serving is None
            else self.serving[self.served * self.batch_size :].contiguous()
        )
        state = {
            "storage": (empty if self.storage is None else self.storage).contiguous().cpu(),
            "unserved": unserved.cpu(),
            "has_storage": torch.tensor(self.storage is not None),
            "cache_row": torch.tensor(int(getattr(self._store, "current_row_idx", 0))),
        }
        save_file(state, str(Path(checkpoint_path) / MIXING_STATE_FILENAME))

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Put back what :meth:`save_to_checkpoint` wrote (the store fast-forwards its dataset)."""
        state_file = Path(checkpoint_path) / MIXING_STATE_FILENAME
        if not state_file.is_file():
            raise FileNotFoundError(
                f"{checkpoint_path} holds no mixing-buffer state ({MIXING_STATE_FILENAME}); it "
                "was not written by sae-variants' runner"
            )
        self._store.load_from_checkpoint(checkpoint_path)
        state = load_file(str(state_file))
        if getattr(self._store, "cached_activation_dataset", None) is not None:
            self._store.current_row_idx = int(state["cache_row"])
        device = self._store.device
        self.storage = state["storage"].to(device) if bool(state["has_storage"]) else None
        unserved = state["unserved"].to(device)
        self.serving = unserved if unserved.shape[0] else None
        self.served = 0

"""Complete training checkpoints: written on SIGINT/SIGTERM and every ``checkpoint_every`` steps,
read back by a resumed run, which then continues exactly as the uninterrupted run would have.

A checkpoint is written between two steps, when the trainer asks its data provider for the
next batch (:class:`CheckpointSeam`), so no batch is half-used. It holds:

- SAELens's own checkpoint (``SAETrainer.save_checkpoint``): the training SAE's weights and
  buffers, the optimizer, the learning-rate and coefficient schedulers, the step counters, the
  dead-feature statistics and the activation scaler, plus the data provider's state (the store's
  dataset position or cache row, and the mixing buffer or the sequence pool);
- ``sae_variants_resume.pt``: every RNG state (torch's CPU and CUDA generators, Python's,
  NumPy's) and what a variant logs outside its buffers (e.g. QuCL's rank decisions).

In data-parallel training (``distributed``) every rank writes into the same checkpoint: rank 0
all of the above, each other rank its data provider's state and RNG states in ``rank-R/``.

It is written under a temporary name and renamed when complete; only the newest complete
checkpoint is kept. A checkpoint found by :func:`latest_complete_checkpoint` is always whole.
"""

from __future__ import annotations

import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sae_lens.training.sae_trainer import SAETrainer

from sae_variants.architectures.base import VariantTrainingSAE
from sae_variants.integrations.training.distributed import DataParallel, check_replicas_agree

RESUME_STATE_FILENAME = "sae_variants_resume.pt"
STEP_PREFIX = "step-"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a complete checkpoint was written."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


def capture_rng_states() -> dict[str, Any]:
    """Every RNG state training can draw from, as plain data and tensors."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_states` captured."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder named ``step-N`` was written before."""
    return int(folder.name[len(STEP_PREFIX) :])


def latest_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint under ``checkpoints`` (a run's ``checkpoints/`` folder)."""
    if not checkpoints.is_dir():
        return None
    complete = [
        p
        for p in checkpoints.iterdir()
        if p.is_dir()
        and p.name.startswith(STEP_PREFIX)
        and p.name[len(STEP_PREFIX) :].isdigit()
        and (p / RESUME_STATE_FILENAME).is_file()
    ]
    return max(complete, key=checkpoint_step, default=None)


def write_checkpoint(
    trainer: SAETrainer[Any, Any], provider: Any = None, layout: DataParallel | None = None
) -> Path:
    """A complete checkpoint of the run before step ``trainer.n_training_steps``, under the
    trainer's checkpoint folder (written as ``.incomplete-step-N`` and renamed when whole); older
    complete checkpoints are removed once it is in place.

    In data-parallel training (``layout``) every rank calls this: rank 0 writes the SAE, the
    trainer and its own data ``provider`` as above, each other rank its ``provider``'s state and
    its RNG states into ``rank-R/`` inside the same folder, after the ranks' copies of the SAE are
    checked to agree."""
    base = Path(trainer.cfg.checkpoint_path)
    step = trainer.n_training_steps
    final = base / f"{STEP_PREFIX}{step}"
    temporary = base / f".incomplete-{final.name}"
    if layout is not None:
        check_replicas_agree(trainer.sae, f"the checkpoint before step {step}")
    if layout is None or layout.is_main:
        shutil.rmtree(temporary, ignore_errors=True)
        # SAELens's checkpoint: the SAE, trainer state, and (through the runner) the data provider.
        trainer.save_checkpoint(checkpoint_name=temporary.name)
    if layout is not None:
        dist.barrier()
        if not layout.is_main:
            own = temporary / rank_folder_name(layout.rank)
            own.mkdir()
            provider.save_to_checkpoint(own)
            torch.save({"step": step, "rng": capture_rng_states()}, own / RESUME_STATE_FILENAME)
        dist.barrier()
    if layout is None or layout.is_main:
        sae = trainer.sae
        state = {
            "step": step,
            "world_size": 1 if layout is None else layout.world_size,
            "dealing": DEALING,
            "rng": capture_rng_states(),
            "variant": sae.resumable_state() if isinstance(sae, VariantTrainingSAE) else {},
        }
        torch.save(state, temporary / RESUME_STATE_FILENAME)
        shutil.rmtree(final, ignore_errors=True)
        temporary.rename(final)
        for older in base.iterdir():
            if older != final and older.name.startswith(STEP_PREFIX):
                shutil.rmtree(older, ignore_errors=True)
    if layout is not None:
        dist.barrier()
    return final


def checkpoint_world_size(checkpoint: Path) -> int:
    """How many processes wrote ``checkpoint`` (1 for a single-process run)."""
    state = torch.load(checkpoint / RESUME_STATE_FILENAME, weights_only=True)
    return int(state.get("world_size", 1))


DEALING = "blocks"
"""How a data-parallel run deals contexts out to its ranks (``distributed.shard_dataset``),
recorded in its checkpoints: a stream dealt otherwise cannot be continued."""


def check_resumable_by(checkpoint: Path, world_size: int) -> None:
    """Refuse to resume ``checkpoint`` in a run of ``world_size`` processes unless as many
    wrote it, and (in data-parallel training) dealt the data out as this version does: each
    one's share of the data stream is in it."""
    state = torch.load(checkpoint / RESUME_STATE_FILENAME, weights_only=True)
    written_by = int(state.get("world_size", 1))
    if written_by != world_size:
        raise ValueError(
            f"{checkpoint} was written by a run of {written_by} process(es); resume it with "
            f"{written_by} (torchrun --nproc-per-node {written_by}), not {world_size}: each "
            "one's share of the data stream is in it"
        )
    if written_by > 1 and state.get("dealing") != DEALING:
        raise ValueError(
            f"{checkpoint} was written by a data-parallel run that dealt contexts to its ranks "
            "one by one (sae-variants before the global sequence pool); its ranks' data streams "
            "cannot be continued by this version: train the run again"
        )


def rank_folder_name(rank: int) -> str:
    """The folder inside a data-parallel checkpoint holding rank ``rank``'s own state."""
    return f"rank-{rank}"


def load_checkpoint(
    trainer: SAETrainer[Any, Any],
    provider: Any,
    checkpoint: Path,
    layout: DataParallel | None = None,
) -> None:
    """Restore the run from ``checkpoint`` into a freshly built ``trainer`` and its data
    ``provider`` (in data-parallel training, this rank's, from its ``rank-R/`` folder); the RNG
    states last, so nothing draws from them before the next step."""
    check_resumable_by(checkpoint, 1 if layout is None else layout.world_size)
    state = torch.load(checkpoint / RESUME_STATE_FILENAME, weights_only=True)
    own = checkpoint
    if layout is not None and not layout.is_main:
        own = checkpoint / rank_folder_name(layout.rank)
        if not (own / RESUME_STATE_FILENAME).is_file():
            raise FileNotFoundError(f"{checkpoint} holds no state for rank {layout.rank} ({own})")
    trainer.load_trainer_state(checkpoint)
    trainer.sae.load_weights_from_checkpoint(checkpoint)
    provider.load_from_checkpoint(own)
    if isinstance(trainer.sae, VariantTrainingSAE):
        trainer.sae.load_resumable_state(state["variant"])
    # SAELens's periodic checkpoints already passed must not be written again.
    trainer.checkpoint_thresholds = [
        t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples
    ]
    if trainer.n_training_steps != state["step"]:
        raise ValueError(
            f"{checkpoint}: the trainer state is at step {trainer.n_training_steps}, the resume "
            f"state at step {state['step']}; the checkpoint is damaged"
        )
    own_state = (
        state if own == checkpoint else torch.load(own / RESUME_STATE_FILENAME, weights_only=True)
    )
    restore_rng_states(own_state["rng"])


class CheckpointSeam:
    """The data provider the trainer reads, wrapping the runner's: before it hands out the batch
    of a step, it writes a complete checkpoint when one is due (every ``every`` steps) or when
    SIGINT/SIGTERM arrived, then raises :class:`TrainingInterrupted` for a signal.

    Nothing is checkpointed before the trainer's first step (its normalization estimate reads
    batches too): a signal then stops the run with nothing to resume.
    """

    def __init__(self, provider: Any, every: int | None, resume_hint: Callable[[Path], str]):
        if every is not None and every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 step, got {every}")
        self._provider = provider
        self.every = every
        self.resume_hint = resume_hint
        self.trainer: SAETrainer[Any, Any] | None = None
        self.training_started = False
        self.signal_received: int | None = None
        self.writing = False
        """True while a checkpoint is written (a repeated signal then waits for it)."""
        self.layout: DataParallel | None = None
        """Set in data-parallel training: every rank checkpoints together."""

    def __getattr__(self, name: str) -> Any:
        if name == "_provider":
            raise AttributeError(name)
        return getattr(self._provider, name)

    def __iter__(self) -> CheckpointSeam:
        return self

    def on_signal(self, signal_number: int, _frame: Any) -> None:
        if self.writing:  # a repeat while the ranks write together: finish the checkpoint
            return
        if self.signal_received is not None or not self.training_started:
            raise KeyboardInterrupt(signal.Signals(signal_number).name)  # insisted, or too early
        self.signal_received = signal_number

    def __next__(self) -> Any:
        trainer = self.trainer
        if trainer is not None and self.training_started:
            step = trainer.n_training_steps
            due = self.every is not None and step > 0 and step % self.every == 0
            stop = self.signal_received
            if self.layout is not None:
                stop = self._agree_on_signal(stop, trainer.sae.W_dec.device)
            if stop is not None or due:
                self.writing = True
                try:
                    written = write_checkpoint(trainer, self._provider, self.layout)
                finally:
                    self.writing = False
                if stop is not None:
                    name = signal.Signals(stop).name
                    raise TrainingInterrupted(
                        f"{name}: training stopped before step {step}; a complete checkpoint is "
                        f"at {written}. {self.resume_hint(written)}",
                        stop,
                    )
        return next(self._provider)

    @staticmethod
    def _agree_on_signal(seen: int | None, device: torch.device) -> int | None:
        # A signal that reached one rank stops them all at the same step (one small all-reduce,
        # on the SAE's device: NCCL reduces CUDA tensors only). Only the reduced value decides:
        # a signal handled while the reduction ran is left for the next step, on every rank.
        received = torch.tensor([seen or 0], dtype=torch.long, device=device)
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
        return int(received) or None

"""Data-parallel training on torch.distributed, launched by ``torchrun``: N processes train one SAE.

    torchrun --nproc-per-node N $(which sae-variants) train ...

Each process (rank) runs its own copy of the model on its own share of the token stream (or of
the activation cache): contexts are dealt out in blocks, block ``j`` to rank ``j mod N``, a block
being what a rank takes at a time (:func:`contexts_per_share`), so the ranks' slices of a global
batch are, in rank order, the batch one process would read. A sequence-aware SAE's pool is
global: every rank runs the model on its share of each refill and the activations are gathered,
so every rank holds the same pool, makes the same draws, and serves its slice. The
config's ``train_batch_size_tokens`` and ``training_tokens`` are the *global* figures, so a config
means the same training whatever N is: each rank steps on ``batch / N`` tokens, for the same number
of steps.

**Why not DDP.** ``DistributedDataParallel`` prepares its gradient reduction in ``forward``; SAELens's
trainer calls ``training_forward_pass`` and then clips the gradient norm right after ``backward``,
so DDP would need its forward replaced and would broadcast rank 0's buffers over every replica's
statistics each step. Instead :class:`GradientAverager` averages every parameter's gradient in one
all-reduce when ``backward`` finishes (the same end-of-backward callback DDP itself uses), before
SAELens clips: the step seam SAELens exposes. Everything else is kept identical across ranks
explicitly: SAELens's dead-feature statistics and normalization estimate here, each variant's
running statistics through ``sae_variants.replicas``, and :func:`check_replicas_agree` verifies it
at every checkpoint and at the end of training.

Rank 0 alone logs, evaluates, writes checkpoints (every rank adds its data-stream state to them)
and saves the SAE. Backend: NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on the CPU.
Collectives time out after ``SAE_VARIANTS_DIST_TIMEOUT`` seconds (default 600), so a rank that
dies does not leave the others waiting forever (torchrun also stops the survivors when one rank
exits with an error).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sae_lens import LanguageModelSAERunnerConfig
from sae_lens.training import sae_trainer as trainer_module
from sae_lens.training.sae_trainer import SAETrainer
from torch import Tensor, nn

from sae_variants.architectures.base import VariantTrainingSAEConfig
from sae_variants.replicas import Replicas
from sae_variants.token_context import needs_sequence_pipeline

logger = logging.getLogger(__name__)

TIMEOUT_ENVIRONMENT_VARIABLE = "SAE_VARIANTS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the ranks torchrun launched."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that logs, evaluates, checkpoints and saves."""
        return self.rank == 0

    @property
    def replicas(self) -> Replicas:
        return Replicas(world_size=self.world_size, rank=self.rank)


def launched_data_parallel(environ: dict[str, str] | None = None) -> DataParallel | None:
    """The data-parallel layout torchrun's environment describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``), or None for a single process (no launcher, or a world of one)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world_size, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise ValueError(
            "torchrun's RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
            f"{env.get('RANK')!r}, {env['WORLD_SIZE']!r}, {env.get('LOCAL_RANK')!r}"
        ) from error
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}"
        )
    if world_size == 1:
        return None
    return DataParallel(rank=rank, world_size=world_size, local_rank=local_rank)


def is_main_process() -> bool:
    """Whether this process reports results: the only one, or rank 0 under torchrun."""
    layout = launched_data_parallel()
    return layout is None or layout.is_main


def collective_timeout(environ: dict[str, str] | None = None) -> timedelta:
    """How long a collective may wait for the other ranks (``SAE_VARIANTS_DIST_TIMEOUT``)."""
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_ENVIRONMENT_VARIABLE, str(DEFAULT_TIMEOUT_SECONDS))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(
            f"{TIMEOUT_ENVIRONMENT_VARIABLE} must be a positive number of seconds, got {raw!r}"
        )
    return timedelta(seconds=seconds)


def rank_device(device: str | None, layout: DataParallel) -> str:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` when the run asks for CUDA (or for
    ``auto`` on a machine with CUDA), else the CPU. One named GPU for every rank is refused: the
    ranks would share it."""
    if device is not None and device.startswith("cuda:"):
        raise ValueError(
            f"device {device!r} would put every rank on one GPU; in data-parallel training "
            "give device 'cuda' (or 'auto'): each rank then uses cuda:LOCAL_RANK"
        )
    if device == "mps":
        raise ValueError("data-parallel training runs on CUDA (NCCL) or the CPU (gloo), not MPS")
    wants_cuda = device == "cuda" or (device in (None, "auto") and torch.cuda.is_available())
    return f"cuda:{layout.local_rank}" if wants_cuda else "cpu"


def join_process_group(layout: DataParallel, device: str) -> None:
    """Join torchrun's process group (once): NCCL for CUDA, gloo for the CPU. Ranks other than
    0 stop drawing progress bars and log errors only."""
    if not layout.is_main:
        trainer_module.tqdm = functools.partial(trainer_module.tqdm, disable=True)  # type: ignore[attr-defined]
        logging.getLogger().setLevel(logging.ERROR)
    if dist.is_initialized():
        if dist.get_world_size() != layout.world_size:
            raise ValueError(
                f"torch.distributed is already initialized with {dist.get_world_size()} "
                f"processes, but the launcher says {layout.world_size}"
            )
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend=backend, timeout=collective_timeout())


LEAVE_TIMEOUT_SECONDS = 60.0
"""How long :func:`leave_process_group` waits for torch to tear the group down."""

_left = threading.Event()
"""Set once this process has left its group (a second call must not meet a half-torn one)."""


def leave_process_group(timeout: float = LEAVE_TIMEOUT_SECONDS) -> None:
    """Leave torchrun's process group, if this process joined one (at the end of a command, once
    everything is saved): after a barrier, so no rank tears its connections down while another
    still uses them, then ``destroy_process_group`` in a helper thread given ``timeout`` seconds.
    On torch 2.6's gloo it has been seen to hang once every rank was past the barrier (once in
    about fifteen runs); the command's work is done then, so it goes on with a warning rather
    than hold the process forever. Calls after the first do nothing."""
    if _left.is_set() or not (dist.is_available() and dist.is_initialized()):
        return
    _left.set()
    dist.barrier()
    left = threading.Event()

    def destroy() -> None:
        dist.destroy_process_group()
        left.set()

    threading.Thread(target=destroy, name="leave-process-group", daemon=True).start()
    if not left.wait(timeout):
        logger.warning(
            "torch.distributed did not finish tearing down its process group within %.0f s; "
            "exiting without it (everything was saved before)",
            timeout,
        )


def per_rank_config(
    cfg: LanguageModelSAERunnerConfig[Any], layout: DataParallel, device: str
) -> LanguageModelSAERunnerConfig[Any]:
    """The config one rank trains with: ``batch / N`` tokens per step for the same number of
    steps, on this rank's device, logging to wandb from rank 0 only. Refuses a global batch that
    does not split evenly, and normalizations whose estimate is not reduced across ranks."""
    n = layout.world_size
    batch = cfg.train_batch_size_tokens
    if batch % n:
        raise ValueError(
            f"train_batch_size_tokens={batch} is the global batch and must split evenly over the "
            f"{n} ranks; use a multiple of {n}"
        )
    if cfg.sae.normalize_activations == "covariance_whitening":
        raise ValueError(
            "normalize_activations='covariance_whitening' estimates its statistics per rank; "
            "data-parallel training supports 'none', 'expected_average_only_in' and 'layer_norm'"
        )
    fetch = cfg.store_batch_size_prompts
    if needs_sequence_pipeline(cfg.sae) and fetch % n:
        raise ValueError(
            f"store_batch_size_prompts={fetch} is how many contexts the sequence-aware pool "
            f"refills at a time, and each of the {n} ranks runs the model on its share: use a "
            f"multiple of {n}"
        )
    if isinstance(cfg.sae, VariantTrainingSAEConfig):
        cfg.sae.check_replica_rows(batch // n)
    steps = cfg.training_tokens // batch
    ranked = copy.deepcopy(cfg)
    ranked.train_batch_size_tokens = batch // n
    ranked.training_tokens = steps * (batch // n)
    ranked.device = device
    ranked.act_store_device = device
    ranked.llm_device = device
    if not layout.is_main:
        ranked.logger.log_to_wandb = False
    ranked.sae.device = device
    return ranked


def config_fingerprint(
    cfg: LanguageModelSAERunnerConfig[Any], options: dict[str, Any] | None = None
) -> str:
    """A digest of everything in ``cfg`` but the device (which differs by rank on a GPU node) and
    the checkpoint folder (SAELens draws a random one per process; the run replaces it), and of
    the run's ``options`` outside the config (checkpointing, initialization, resumption)."""
    data = cfg.to_dict()
    data["sae_variants_options"] = options or {}
    for key in ("device", "act_store_device", "llm_device", "checkpoint_path"):
        data.pop(key, None)
    if isinstance(data.get("sae"), dict):
        data["sae"].pop("device", None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_config(
    cfg: LanguageModelSAERunnerConfig[Any],
    layout: DataParallel,
    options: dict[str, Any] | None = None,
) -> None:
    """``ValueError`` on every rank when some rank was given another config (or other run
    ``options``) than rank 0."""
    fingerprints: list[Any] = [None] * layout.world_size
    dist.all_gather_object(fingerprints, config_fingerprint(cfg, options))
    differing = [r for r, f in enumerate(fingerprints) if f != fingerprints[0]]
    if differing:
        raise ValueError(
            f"rank(s) {differing} were started with another training config than rank 0; every "
            "rank must run the same command"
        )


def shard_dataset(dataset: Any, layout: DataParallel, block: int = 1) -> Any:
    """This rank's share of a token dataset: contexts dealt out in blocks of ``block``, block
    ``j`` to rank ``j mod N`` (a map-style ``datasets.Dataset``), or
    ``datasets.distributed.split_dataset_by_node``'s share of a streamed one.

    With ``block`` the contexts one rank takes at a time (see :func:`contexts_per_share`), the
    ranks' ``j``-th takes, in rank order, are the ``j``-th take of one process reading the whole
    stream."""
    from datasets import Dataset, IterableDataset
    from datasets.distributed import split_dataset_by_node

    if block < 1:
        raise ValueError(f"block must be >= 1 context, got {block}")
    if isinstance(dataset, Dataset):
        if len(dataset) < layout.world_size * block:
            raise ValueError(
                f"the dataset holds {len(dataset)} contexts, fewer than the "
                f"{layout.world_size * block} one round of {layout.world_size} ranks takes "
                f"({block} each)"
            )
        index = np.arange(len(dataset))
        return dataset.select(index[(index // block) % layout.world_size == layout.rank])
    if isinstance(dataset, IterableDataset):
        return split_dataset_by_node(dataset, rank=layout.rank, world_size=layout.world_size)
    raise TypeError(f"cannot share out a dataset of type {type(dataset).__name__} over ranks")


def contexts_per_share(cfg: LanguageModelSAERunnerConfig[Any], layout: DataParallel) -> int:
    """How many consecutive contexts of the stream a rank takes at a time (``cfg`` the per-rank
    config): for a sequence-aware SAE, its share of each refill of the pool
    (``store_batch_size_prompts / N``); otherwise its batch when that is whole contexts, else one.
    Dealt out in such blocks, the ranks' batches are the slices of one process's global batch,
    in rank order, whenever one process would read its batches as whole contexts in order."""
    if needs_sequence_pipeline(cfg.sae):
        return cfg.store_batch_size_prompts // layout.world_size
    batch, context = cfg.train_batch_size_tokens, cfg.context_size
    return batch // context if batch % context == 0 else 1


def shard_activation_cache(store: Any, layout: DataParallel, block: int = 1) -> None:
    """Give ``store`` (SAELens's ``ActivationsStore`` over a cache) this rank's rows of it, dealt
    out as :func:`shard_dataset` deals contexts."""
    cached = store.cached_activation_dataset
    if cached is not None:
        store.cached_activation_dataset = shard_dataset(cached, layout, block)


# ------------------------------------------------------------------------------ the step


class GradientAverager:
    """Averages the gradients of ``module``'s parameters over the ranks once each ``backward``
    has finished (one all-reduce of every gradient, flattened in a fixed order), so the trainer's
    clipping and optimizer see the gradient of the global batch's mean loss on every rank; then
    calls ``module.after_gradients_reduced()`` if it has one.

    A parameter that got no gradient on any rank keeps ``None`` (Adam then skips it, as it
    would in one process); one that got a gradient on some ranks only gets zeros on the others.
    """

    def __init__(self, module: nn.Module, layout: DataParallel) -> None:
        self.module = module
        self.parameters = [p for p in module.parameters() if p.requires_grad]
        self.world_size = layout.world_size
        self._queued = False
        self.communicated_bytes = 0
        """Bytes of gradient all-reduced so far (for the benchmark's communication share)."""
        self._handles = [
            p.register_post_accumulate_grad_hook(self._on_gradient) for p in self.parameters
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _on_gradient(self, _parameter: Tensor) -> None:
        if not self._queued:
            self._queued = True
            # Runs when the whole backward pass is done (DDP's own mechanism).
            torch.autograd.Variable._execution_engine.queue_callback(self.average)

    @torch.no_grad()
    def average(self) -> None:
        """All-reduce and average the current gradients (called at the end of backward)."""
        self._queued = False
        params = self.parameters
        # Reduced in the parameters' own precision (float64 stays float64, bfloat16 bfloat16).
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))
        has_grad = torch.tensor(
            [p.grad is not None for p in params], dtype=dtype, device=params[0].device
        )
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                for p in params
            ]
            + [has_grad]
        )
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self.communicated_bytes += flat.numel() * flat.element_size()
        offset = 0
        any_grad = flat[-len(params) :] > 0
        for i, p in enumerate(params):
            size = p.numel()
            if bool(any_grad[i]):
                averaged = flat[offset : offset + size].view_as(p).div_(self.world_size)
                if p.grad is None:
                    p.grad = averaged.to(p.dtype).clone()
                else:
                    p.grad.copy_(averaged)
            offset += size
        notify = getattr(self.module, "after_gradients_reduced", None)
        if callable(notify):
            notify()


def synchronize_feature_statistics(trainer: SAETrainer[Any, Any], replicas: Replicas) -> None:
    """After every step, make SAELens's dead-feature statistics those of the global batch on
    every rank: firing counts summed, and a feature counts as having fired if it fired on any
    rank (so the dead-feature mask the next step reads is the same everywhere)."""
    step = trainer.step

    def step_then_reduce(batch: Any) -> Any:
        counts_before = trainer.act_freq_scores.clone()
        samples_before = trainer.n_frac_active_samples
        output = step(batch)
        added = replicas.sum_(trainer.act_freq_scores - counts_before)
        trainer.act_freq_scores = counts_before + added
        trainer.n_frac_active_samples = samples_before + replicas.world_size * (
            trainer.n_frac_active_samples - samples_before
        )
        # 0 where the feature fired on this rank, else one more pass than before: the minimum
        # over ranks is 0 exactly where it fired anywhere.
        replicas.min_(trainer.n_forward_passes_since_fired)
        return output

    trainer.step = step_then_reduce  # type: ignore[method-assign]


def synchronize_scaling_estimate(trainer: SAETrainer[Any, Any], replicas: Replicas) -> None:
    """Make the ``expected_average_only_in`` estimate the global one: each rank measures the mean
    activation norm over its share of the same number of batches; their mean is the global
    batches' mean norm."""
    scaler = trainer.activation_scaler
    estimate = scaler.estimate_scaling_factor

    def estimate_then_reduce(*, d_in: int, **kwargs: Any) -> None:
        estimate(d_in=d_in, **kwargs)
        device = trainer.sae.W_dec.device  # NCCL reduces CUDA tensors only
        mean_norm = torch.tensor(
            [d_in**0.5 / scaler.scaling_factor], dtype=torch.float64, device=device
        )
        replicas.mean_(mean_norm)
        scaler.scaling_factor = float(d_in**0.5 / mean_norm.item())

    scaler.estimate_scaling_factor = estimate_then_reduce  # type: ignore[method-assign]


def checkpoints_from_rank_zero(layout: DataParallel, trainer: SAETrainer[Any, Any]) -> None:
    """SAELens's own checkpoints (``n_checkpoints``, the final one) are written by rank 0 only,
    named by the samples the whole run has seen (SAELens's trainer counts this rank's share),
    as one process would name them."""
    if not layout.is_main:

        def write_nothing(*_args: Any, **_kwargs: Any) -> None:
            return None

        trainer.save_checkpoint = write_nothing  # type: ignore[method-assign]
        return
    save = trainer.save_checkpoint

    def save_globally_named(checkpoint_name: str, *args: Any, **kwargs: Any) -> Any:
        return save(global_sample_name(checkpoint_name, layout.world_size), *args, **kwargs)

    trainer.save_checkpoint = save_globally_named  # type: ignore[method-assign]


def global_sample_name(name: str, world_size: int) -> str:
    """SAELens's checkpoint name ``"<samples>"`` or ``"final_<samples>"`` with one rank's sample
    count replaced by the run's (``world_size`` times it); other names are kept."""
    prefix, separator, count = name.rpartition("_")
    if not count.isdigit():
        return name
    return f"{prefix}{separator}{int(count) * world_size}"


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Every parameter and buffer set to rank 0's (before the first step)."""
    for tensor in _state_tensors(module):
        dist.broadcast(tensor.data, src=0)


def _state_tensors(module: nn.Module) -> Iterable[Tensor]:
    yield from module.parameters()
    yield from module.buffers()


class ReplicasDisagreeError(RuntimeError):
    """Data-parallel replicas of the SAE hold different state (a bug: say which tensors)."""


@torch.no_grad()
def check_replicas_agree(module: nn.Module, where: str) -> None:
    """``ReplicasDisagreeError`` on every rank unless every parameter and buffer of ``module``
    is the same on all ranks (compared through float64 sums, sums of squares and
    position-weighted sums of each tensor, which replicas with identical tensors reproduce
    exactly)."""
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
    digests = torch.stack([_digest(t) for t in _state_tensors(module)]).cpu()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digests)
    differing = sorted(
        {
            names[i]
            for other in gathered[1:]
            for i in torch.nonzero((other != gathered[0]).any(dim=1)).flatten().tolist()
        }
    )
    if differing:
        raise ReplicasDisagreeError(
            f"{where}: the ranks' copies of the SAE differ in {', '.join(differing)}; a state "
            "update is not reduced across ranks"
        )


def _digest(tensor: Tensor) -> Tensor:
    values = tensor.detach().reshape(-1).double()
    weights = torch.arange(1, values.numel() + 1, dtype=torch.float64, device=values.device)
    return torch.stack([values.sum(), (values * values).sum(), (values * weights).sum()])


def on_main_first(layout: DataParallel | None, action: Callable[[], Any]) -> Any:
    """Run ``action`` on rank 0 while the others wait; the others then get rank 0's result, or
    its error re-raised (so a refused output folder stops every rank)."""
    if layout is None:
        return action()
    outcome: list[Any] = [None]
    if layout.is_main:
        try:
            outcome = [("ok", action())]
        except Exception as error:  # re-raised below, on every rank
            outcome = [("error", error)]
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value

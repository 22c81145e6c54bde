"""Sequence-structured training batches from SAELens's own activation store.

SAELens's store runs the model on whole contexts and then flattens and shuffles single tokens, so
a row's sequence and position are gone before the SAE sees it. :class:`SequenceBatchSource` uses
the same store's public ``get_batch_tokens`` / ``get_activations`` (so hooks, head indices,
special tokens, autocast and the dataset stream behave exactly as in SAELens) and keeps contexts
whole in a pool instead:

- the pool holds ``pool_contexts`` contexts with their activations, tokens and a sequence id;
- each context's usable positions (special tokens such as BOS are never served) are split into
  groups of P by the layout's sampling (``uniform``, ``span`` or ``pairs``), in random order;
- a batch is S = batch_size / P distinct contexts drawn at random from the pool, one group of P
  positions from each, so shuffling happens at the level of sequences;
- a context leaves the pool once all its groups have been served, and free slots are refilled
  from the dataset stream a model batch at a time, so every forward pass is used in full.

Contexts come from one of two supplies with the same interface: :class:`LiveContexts` runs the
model through the store, :class:`CachedContexts` reads whole rows (``[context, d_in]`` plus
``token_ids``) of an activation cache written by SAELens's ``CacheActivationsRunner`` (``sae-variants
cache``), so positions and sequence ids are as exact from a cache as live.

In data-parallel training (``replicas``) the pool is global: each replica takes its share of
every refill (its own stream's next contexts, or its slice of the cache rows) and the shares are
gathered in rank order, so every replica holds the pool one process would, draws the same batch
from it with the same generator, and serves its slice of the batch's contexts.

Every batch comes with a :class:`~sae_variants.token_context.TokenContext` (position, sequence id
and token id of each row); :meth:`SequenceBatchSource.context_of` returns it for a batch tensor
the source produced, by identity. The source is also what the runner checkpoints: the pool's
tokens, plans, cursors, cache rows and random state are saved, and activations recomputed (live)
or re-read (cache) on resume, so a resumed run sees the batches an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from sae_variants.replicas import SINGLE, Replicas
from sae_variants.token_context import SequenceLayout, TokenContext
from sae_variants.validation import check_activations

SEQUENCE_STATE_FILENAME = "sequence_batches_state.safetensors"
"""Written beside SAELens's ``activations_store_state.safetensors`` in every checkpoint."""

logger = logging.getLogger(__name__)

_ISSUED_MEMORY = 64
"""Batches whose contexts are kept for :meth:`SequenceBatchSource.context_of` (enough for the
trainer's normalization estimate and a prefetching thread running ahead)."""


def _random_order(
    keys_shape: tuple[int, ...], excluded: Tensor, generator: torch.Generator
) -> Tensor:
    """Per-row random permutation of the last axis that puts ``excluded`` entries last."""
    keys = torch.rand(keys_shape, generator=generator)
    return torch.argsort(keys.masked_fill(excluded, 2.0), dim=-1)


def greedy_window_pairs(
    usable: Bool[Tensor, "contexts pos"], window: int, generator: torch.Generator
) -> tuple[Int[Tensor, "contexts pairs 2"], Int[Tensor, " contexts"]]:
    """Pair each context's usable positions two by two, at most ``window`` apart.

    Walks the positions in order (vectorized over contexts): a still-free position takes a
    partner uniformly among the free positions up to ``window`` after it. Positions left without
    a partner are not paired. Returns the pairs (padded with -1) and each context's pair count.
    """
    n, length = usable.shape
    taken = ~usable.clone()
    pairs = torch.full((n, length // 2, 2), -1, dtype=torch.long)
    count = torch.zeros(n, dtype=torch.long)
    rows = torch.arange(n)
    for t in range(length - 1):
        end = min(length, t + window + 1)
        free_after = ~taken[:, t + 1 : end]
        scores = torch.rand(free_after.shape, generator=generator).masked_fill(~free_after, -1.0)
        best = scores.argmax(dim=1)
        pair_up = ~taken[:, t] & free_after.any(dim=1)
        if not bool(pair_up.any()):
            continue
        who = rows[pair_up]
        mate = t + 1 + best[pair_up]
        taken[who, t] = True
        taken[who, mate] = True
        pairs[who, count[who], 0] = t
        pairs[who, count[who], 1] = mate
        count[who] += 1
    return pairs, count


def plan_groups(
    usable: Bool[Tensor, "contexts pos"],
    layout: SequenceLayout,
    per_group: int,
    generator: torch.Generator,
) -> tuple[Int[Tensor, "contexts groups per_group"], Int[Tensor, " contexts"]]:
    """Split each context's usable positions into groups of ``per_group`` as ``layout`` says, in a
    random serving order. Returns the groups (rows past a context's count are padding) and counts.
    Leftover positions that do not fill a group are not served."""
    n, length = usable.shape
    n_usable = usable.sum(dim=1)
    if layout.sampling == "pairs":
        pairs, n_pairs = greedy_window_pairs(usable, layout.pair_window, generator)
        half = per_group // 2
        order = _random_order(
            pairs.shape[:2], torch.arange(pairs.shape[1]) >= n_pairs.unsqueeze(1), generator
        )
        pairs = torch.gather(pairs, 1, order.unsqueeze(-1).expand(-1, -1, 2))
        max_groups = pairs.shape[1] // half
        groups = pairs[:, : max_groups * half].reshape(n, max_groups, per_group)
        counts = n_pairs // half
    else:
        if layout.sampling == "uniform":
            order = _random_order((n, length), ~usable, generator)
        else:  # span: usable positions in order, from a random offset
            order = torch.argsort((~usable).to(torch.int8), dim=1, stable=True)
            spare = n_usable % per_group
            offset = (torch.rand(n, generator=generator) * (spare + 1)).long().clamp_max(spare)
            order = torch.gather(
                order, 1, (offset.unsqueeze(1) + torch.arange(length)).clamp_max(length - 1)
            )
        max_groups = length // per_group
        groups = order[:, : max_groups * per_group].reshape(n, max_groups, per_group)
        counts = n_usable // per_group
    if max_groups == 0:
        return groups, torch.zeros(n, dtype=torch.long)
    # Serve a context's groups in random order, positions sorted within each group.
    serve = _random_order(
        (n, max_groups), torch.arange(max_groups) >= counts.unsqueeze(1), generator
    )
    groups = torch.gather(groups, 1, serve.unsqueeze(-1).expand(-1, -1, per_group))
    return groups.sort(dim=-1).values, counts


@runtime_checkable
class ContextSupply(Protocol):
    """Where a :class:`SequenceBatchSource` gets whole contexts from."""

    def take(
        self, n: int
    ) -> tuple[Int[Tensor, "k pos"], Float[Tensor, "k pos d_in"], Int[Tensor, " k"]]:
        """The next ``n`` contexts, or among data-parallel replicas this replica's ``k = n / N``
        of them: token ids (CPU, int64), activations, and the cache row of each (-1 when they
        were computed live)."""
        ...

    def reload(
        self, tokens: Int[Tensor, "n pos"], rows: Int[Tensor, " n"]
    ) -> Float[Tensor, "n pos d_in"]:
        """The activations of contexts taken earlier (for a resumed pool)."""
        ...

    def state(self) -> dict[str, Tensor]:
        """What must be checkpointed beyond SAELens's store state to continue the stream."""
        ...

    def load_state(self, state: dict[str, Tensor]) -> None: ...


class LiveContexts:
    """Contexts from the dataset stream, run through the model by SAELens's store.

    Among ``parts`` data-parallel replicas, the store's stream is this replica's share of the
    data (dealt out in blocks of ``n / parts`` contexts), and :meth:`take` returns its share of
    the next ``n`` contexts."""

    def __init__(self, store: Any, parts: int = 1) -> None:
        self.store = store
        self.parts = parts

    def _model_device(self) -> torch.device:
        try:
            return next(self.store.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    @torch.no_grad()
    def reload(
        self,
        tokens: Int[Tensor, "n pos"],
        rows: Int[Tensor, " n"],  # noqa: ARG002  (live contexts have no cache rows)
    ) -> Float[Tensor, "n pos d_in"]:
        return self.store.get_activations(tokens.to(self._model_device()))

    def take(
        self, n: int
    ) -> tuple[Int[Tensor, "n pos"], Float[Tensor, "n pos d_in"], Int[Tensor, " n"]]:
        share = n // self.parts
        tokens = self.store.get_batch_tokens(share).cpu()
        return tokens, self.reload(tokens, torch.full((share,), -1)), torch.full((share,), -1)

    def state(self) -> dict[str, Tensor]:
        return {}  # SAELens's own store state holds the dataset position

    def load_state(self, state: dict[str, Tensor]) -> None:
        if "cache_position" in state:
            raise ValueError(
                "the checkpoint was written by a run that read an activation cache; resume it "
                "with the same cached activations"
            )


class CachedContexts:
    """Whole contexts read in order from an activation cache (the store's
    ``cached_activation_dataset``: a ``hook_name`` column of ``[context, d_in]`` and ``token_ids``),
    starting over at the end as SAELens's store does.

    Among ``parts`` data-parallel replicas every one reads the whole cache: :meth:`take` returns
    the ``part``-th slice of the next ``n`` rows and moves past all ``n``."""

    def __init__(
        self,
        dataset: Any,
        hook_name: str,
        context_size: int,
        d_in: int,
        part: int = 0,
        parts: int = 1,
    ) -> None:
        if "token_ids" not in dataset.column_names:
            raise ValueError(
                f"the activation cache has columns {dataset.column_names} but no 'token_ids': the "
                "sequence-aware pipeline needs each row's tokens (to skip special tokens and to "
                "know what it trains on); write the cache with `sae-variants cache` or a SAELens "
                "CacheActivationsRunner that records token_ids"
            )
        self.dataset = dataset
        # Token ids read on their own, as integers (the store formats every column as activations).
        self.token_ids = dataset.with_format("torch", columns=["token_ids"])
        self.hook_name = hook_name
        self.context_size = context_size
        self.d_in = d_in
        if not 0 <= part < parts:
            raise ValueError(f"part {part} is not among {parts} parts")
        self.part, self.parts = part, parts
        self.cursor = 0
        self.epochs = 0

    def _read(self, rows: slice | list[int]) -> tuple[Tensor, Tensor]:
        acts = self.dataset[rows][self.hook_name]
        tokens = self.token_ids[rows]["token_ids"].long().cpu()
        if acts.shape[1:] != (self.context_size, self.d_in):
            raise ValueError(
                f"cached rows have shape {tuple(acts.shape[1:])}, expected "
                f"({self.context_size}, {self.d_in}) (context_size, d_in)"
            )
        return tokens, acts

    def take(
        self, n: int
    ) -> tuple[Int[Tensor, "n pos"], Float[Tensor, "n pos d_in"], Int[Tensor, " n"]]:
        size = len(self.dataset)
        if n > size:
            raise ValueError(
                f"the activation cache holds {size} contexts, fewer than the {n} one refill needs; "
                "cache more tokens"
            )
        if self.cursor + n > size:
            self.cursor = 0
            self.epochs += 1
            logger.warning(
                "the activation cache is exhausted; starting pass %d over its %d contexts",
                self.epochs + 1,
                size,
            )
        share = n // self.parts
        start = self.cursor + self.part * share
        tokens, acts = self._read(slice(start, start + share))  # one contiguous read
        rows = torch.arange(start, start + share)
        self.cursor += n
        return tokens, acts, rows

    def reload(
        self, tokens: Int[Tensor, "n pos"], rows: Int[Tensor, " n"]
    ) -> Float[Tensor, "n pos d_in"]:
        cached_tokens, acts = self._read(rows.tolist())
        if not torch.equal(cached_tokens, tokens):
            raise ValueError(
                "the activation cache no longer matches the checkpoint (different tokens in the "
                "rows the checkpoint's pool came from): resume with the cache it was trained on"
            )
        return acts

    def state(self) -> dict[str, Tensor]:
        return {"cache_position": torch.tensor([self.cursor, self.epochs])}

    def load_state(self, state: dict[str, Tensor]) -> None:
        if "cache_position" not in state:
            raise ValueError(
                "the checkpoint was written by a run that computed activations live; resume it "
                "without cached activations"
            )
        self.cursor, self.epochs = (int(v) for v in state["cache_position"])


def context_supply(store: Any, replicas: Replicas = SINGLE) -> ContextSupply:
    """The supply for SAELens's ``store``: its activation cache if it reads one, else the model;
    among data-parallel ``replicas``, this replica's share of each take."""
    cached = getattr(store, "cached_activation_dataset", None)
    if cached is None:
        return LiveContexts(store, replicas.world_size)
    return CachedContexts(
        cached, store.hook_name, store.context_size, store.d_in, replicas.rank, replicas.world_size
    )


class SequenceBatchSource:
    """SAELens data provider of sequence-structured batches (see the module docstring).

    ``batch_size`` is the global batch: among data-parallel ``replicas`` each serves its slice,
    ``batch_size / N`` rows.

    Attributes the runner or user code read on SAELens's store (``store_batch_size_prompts``,
    ``get_batch_tokens``, ...) are forwarded to the wrapped store.
    """

    def __init__(
        self,
        store: Any,
        layout: SequenceLayout,
        batch_size: int,
        *,
        pool_contexts: int | None = None,
        seed: int = 0,
        replicas: Replicas = SINGLE,
    ) -> None:
        if tuple(store.seqpos_slice) not in ((None,), (None, None), (0, None)):
            raise ValueError(
                f"seqpos_slice={tuple(store.seqpos_slice)} is not supported by the sequence-aware "
                "pipeline (positions must be the tokens' true positions in the context); leave it "
                "at its default and let the SAE see every position"
            )
        self.store = store
        self.replicas = replicas
        self.supply = context_supply(store, replicas)
        self.layout = layout
        self.context_size: int = store.context_size
        self.d_in: int = store.d_in
        specials = store.exclude_special_tokens
        # Whole contexts serve every position except the context's BOS (or none if nothing is excluded).
        default_per_group = self.context_size - (1 if specials is not None else 0)
        self.per_group = layout.positions_per_context or default_per_group
        if self.per_group > self.context_size:
            raise ValueError(
                f"positions_per_context={self.per_group} exceeds the context size {self.context_size}"
            )
        if batch_size % self.per_group:
            raise ValueError(
                f"train_batch_size_tokens={batch_size} must be a multiple of the positions served per "
                f"context ({self.per_group}): a batch is S whole groups of P positions"
            )
        self.batch_size = batch_size
        self.contexts_per_batch = batch_size // self.per_group
        fetch = store.store_batch_size_prompts
        n = replicas.world_size
        if self.contexts_per_batch % n or fetch % n:
            raise ValueError(
                f"a global batch of {self.contexts_per_batch} contexts and refills of {fetch} "
                f"(store_batch_size_prompts) must split evenly over the {n} data-parallel ranks; "
                f"make both multiples of {n}"
            )
        capacity = pool_contexts or max(
            2 * self.contexts_per_batch, self.contexts_per_batch + fetch
        )
        if capacity < self.contexts_per_batch + fetch:
            raise ValueError(
                f"pool_contexts={capacity} is too small: a batch needs {self.contexts_per_batch} "
                f"distinct contexts plus room to refill {fetch} at a time"
            )
        if isinstance(self.supply, CachedContexts) and len(self.supply.dataset) < capacity:
            raise ValueError(
                f"the activation cache holds {len(self.supply.dataset)} contexts, fewer than the "
                f"pool's {capacity}: the pool would hold one cached context several times under "
                "different sequence ids; cache more tokens (or pass a smaller pool_contexts)"
            )
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self._special_ids = specials.detach().cpu() if specials is not None else None
        length, d_in = self.context_size, self.d_in
        self.acts = torch.zeros(0, length, d_in)  # allocated on the first fill
        self.tokens = torch.zeros(capacity, length, dtype=torch.long)
        self.sequence_ids = torch.full((capacity,), -1, dtype=torch.long)
        self.rows = torch.full((capacity,), -1, dtype=torch.long)  # cache row of each slot
        self.groups = torch.zeros(
            capacity, max(1, length // self.per_group), self.per_group, dtype=torch.long
        )
        self.group_counts = torch.zeros(capacity, dtype=torch.long)
        self.cursors = torch.zeros(capacity, dtype=torch.long)
        self.next_sequence_id = 0
        self.positions_served = 0
        self.positions_loaded = 0
        self._issued: deque[tuple[Tensor, TokenContext]] = deque(maxlen=_ISSUED_MEMORY)
        self._lock = threading.Lock()
        self._stale_slots: Tensor | None = (
            None  # slots restored from a checkpoint without activations
        )

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class does not define: forward to SAELens's store.
        if name == "store":
            raise AttributeError(name)
        return getattr(self.store, name)

    # ------------------------------------------------------------------------------ the pool

    def _usable(self, tokens: Int[Tensor, "contexts pos"]) -> Bool[Tensor, "contexts pos"]:
        if self._special_ids is None:
            return torch.ones_like(tokens, dtype=torch.bool)
        return ~torch.isin(tokens, self._special_ids)

    def _store_acts(self, slots: Int[Tensor, " k"], acts: Float[Tensor, "k pos d_in"]) -> None:
        # Checked as they enter the pool (every batch is drawn from it): among data-parallel
        # replicas every one holds the same contexts here, so all refuse a bad one together.
        check_activations(
            acts.reshape(-1, self.d_in),
            self.d_in,
            where=f"contexts entering the sequence-aware pool at {self.store.hook_name}",
        )
        if self.acts.shape[0] == 0:
            self.acts = torch.zeros(
                self.capacity, self.context_size, self.d_in, dtype=acts.dtype, device=acts.device
            )
        self.acts[slots.to(self.acts.device)] = acts.to(self.acts)

    def _gathered(self, tensor: Tensor, device: torch.device) -> Tensor:
        """Every replica's ``tensor`` in rank order (gathered on ``device``, which NCCL needs to
        be the GPU), back where it was."""
        return self.replicas.gather(tensor.to(device)).to(tensor.device)

    @torch.no_grad()
    def _fill(self, slots: Int[Tensor, " k"]) -> None:
        tokens, acts, rows = self.supply.take(slots.numel())
        if self.replicas.world_size > 1:  # every replica holds the whole pool
            tokens, rows = (self._gathered(t, acts.device) for t in (tokens, rows))
            acts = self.replicas.gather(acts)
        self._store_acts(slots, acts)
        groups, counts = plan_groups(
            self._usable(tokens), self.layout, self.per_group, self.generator
        )
        self.tokens[slots] = tokens
        self.rows[slots] = rows
        self.groups[slots, : groups.shape[1]] = groups
        self.group_counts[slots] = counts
        self.cursors[slots] = 0
        self.sequence_ids[slots] = self.next_sequence_id + torch.arange(slots.numel())
        self.next_sequence_id += slots.numel()
        self.positions_loaded += slots.numel() * self.context_size

    def _refill(self) -> None:
        if self._stale_slots is not None:
            stale, self._stale_slots = self._stale_slots, None
            for chunk in stale.split(self.store.store_batch_size_prompts):
                self._store_acts(chunk, self.supply.reload(self.tokens[chunk], self.rows[chunk]))
        fetch = self.store.store_batch_size_prompts
        for _ in range(10_000):
            free = (self.cursors >= self.group_counts).nonzero().squeeze(1)
            if free.numel() < fetch and self.capacity - free.numel() >= self.contexts_per_batch:
                return
            # capacity >= S + fetch, so fewer than S live contexts leaves at least `fetch` free slots.
            self._fill(free[:fetch])
        raise RuntimeError(
            f"could not gather {self.contexts_per_batch} contexts with a full group of "
            f"{self.per_group} usable positions from the dataset; are the contexts mostly special tokens?"
        )

    # ------------------------------------------------------------------------ the data provider

    def __iter__(self) -> Iterator[Tensor]:
        return self

    @torch.no_grad()
    def __next__(self) -> Tensor:
        with self._lock:
            self._refill()
            alive = (self.cursors < self.group_counts).nonzero().squeeze(1)
            pick = alive[
                torch.randperm(alive.numel(), generator=self.generator)[: self.contexts_per_batch]
            ]
            positions = self.groups[pick, self.cursors[pick]]  # [S, P]
            self.cursors[pick] += 1
            # Among data-parallel replicas, each serves its slice of the global batch's contexts.
            own = self.replicas.own_rows(self.contexts_per_batch // self.replicas.world_size)
            pick, positions = pick[own], positions[own]
            device = self.acts.device
            batch = self.acts[pick.unsqueeze(1).to(device), positions.to(device)].reshape(
                -1, self.d_in
            )
            context = TokenContext(
                positions=positions.reshape(-1),
                sequence_ids=self.sequence_ids[pick].repeat_interleave(self.per_group),
                token_ids=self.tokens[pick.unsqueeze(1), positions].reshape(-1),
            )
            batch = batch.to(self.store.device)
            self.positions_served += self.batch_size  # over every replica
            self._issued.append((batch, context))
            return batch

    def context_of(self, batch: Tensor) -> TokenContext:
        """The token context of a batch this source returned (matched by identity, not value).

        Older batches than ``batch`` are forgotten: the trainer consumes batches in order, and the
        ones it used for its normalization estimate never reach a training step.
        """
        with self._lock:
            while self._issued:
                issued, context = self._issued.popleft()
                if issued is batch:
                    return context
        raise LookupError(
            "this batch was not produced by the SequenceBatchSource (or was produced more than "
            f"{_ISSUED_MEMORY} batches ago); the trainer must step on the source's own tensors"
        )

    @property
    def served_fraction(self) -> float:
        """Positions served over positions the model computed (the pipeline's efficiency)."""
        return self.positions_served / max(1, self.positions_loaded)

    # ---------------------------------------------------------------------------- checkpoints

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        """SAELens's store state (dataset position) plus the pool's tokens, plans and RNG."""
        self.store.save_to_checkpoint(checkpoint_path)
        with self._lock:
            state = {
                "tokens": self.tokens,
                "rows": self.rows,
                "sequence_ids": self.sequence_ids,
                "groups": self.groups,
                "group_counts": self.group_counts,
                "cursors": self.cursors,
                "counters": torch.tensor(
                    [self.next_sequence_id, self.positions_served, self.positions_loaded]
                ),
                "generator": self.generator.get_state(),
                "loaded": torch.tensor(self.acts.shape[0] > 0),
                **self.supply.state(),
            }
            save_file(
                {k: v.contiguous() for k, v in state.items()},
                str(Path(checkpoint_path) / SEQUENCE_STATE_FILENAME),
            )

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Restore the dataset (or cache) position and the pool; activations are recomputed by the
        model, or re-read from the cache."""
        self.store.load_from_checkpoint(checkpoint_path)
        state = load_file(str(Path(checkpoint_path) / SEQUENCE_STATE_FILENAME))
        if state["tokens"].shape != self.tokens.shape or state["groups"].shape != self.groups.shape:
            raise ValueError(
                f"the checkpoint at {checkpoint_path} holds a pool of shape "
                f"{tuple(state['tokens'].shape)} / groups {tuple(state['groups'].shape)}, but this "
                f"run's is {tuple(self.tokens.shape)} / {tuple(self.groups.shape)}: resume with the "
                "same context size, batch size, layout and pool size"
            )
        with self._lock:
            self.supply.load_state(state)
            self.tokens.copy_(state["tokens"])
            # Checkpoints written before cache rows were kept hold live contexts only.
            self.rows.copy_(state.get("rows", torch.full_like(self.rows, -1)))
            self.sequence_ids.copy_(state["sequence_ids"])
            self.groups.copy_(state["groups"])
            self.group_counts.copy_(state["group_counts"])
            self.cursors.copy_(state["cursors"])
            self.next_sequence_id, self.positions_served, self.positions_loaded = (
                int(v) for v in state["counters"]
            )
            self.generator.set_state(state["generator"])
            if bool(state["loaded"]):
                self._stale_slots = (self.cursors < self.group_counts).nonzero().squeeze(1)

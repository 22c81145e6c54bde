"""The replicas of one SAE in data-parallel training: what a training SAE reduces across them.

In data-parallel training (``sae_variants.integrations.training.distributed``) every process
holds an identical copy of the SAE and steps it on its own share of each global batch: replica
``rank`` holds the ``rank``-th slice of its rows, so the replicas' rows in rank order are the
batch one process would train on. Gradients are averaged by the trainer; everything else a step
changes (a running statistic, a decision read from one, a random draw that is not a gradient)
must be reduced here, or the copies drift apart, and a term coupling the rows of the batch (a
contrastive term, a dropout mask drawn for the batch) gathers the global batch here so that it
is the term one process computes. A training SAE outside data-parallel training has no
:class:`Replicas` and every method below is the identity, so a variant calls them
unconditionally.

Every replica must make the same calls in the same order with tensors of the same shape: they
are collective operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class Replicas:
    """The process group of one SAE's replicas (``None``: torch.distributed's default group)."""

    world_size: int
    rank: int = 0
    """This replica's place among them: its rows are the ``rank``-th slice of a global batch."""
    group: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"Replicas needs world_size >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not among {self.world_size} replicas")

    def _all_reduce_(self, tensor: Tensor, op: Any) -> Tensor:
        """``tensor`` replaced in place by ``op`` applied over the replicas. Returns it."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def mean_(self, tensor: Tensor) -> Tensor:
        """``tensor`` replaced in place by its mean over the replicas (each replica's batch
        statistic becomes the statistic of the global batch, for statistics that are means over
        equally sized batches). Returns it."""
        if self.world_size > 1:
            self._all_reduce_(tensor, dist.ReduceOp.SUM).div_(self.world_size)
        return tensor

    def sum_(self, tensor: Tensor) -> Tensor:
        """``tensor`` replaced in place by its sum over the replicas. Returns it."""
        return self._all_reduce_(tensor, dist.ReduceOp.SUM)

    def min_(self, tensor: Tensor) -> Tensor:
        """``tensor`` replaced in place by its element-wise minimum over the replicas."""
        return self._all_reduce_(tensor, dist.ReduceOp.MIN)

    def max_(self, tensor: Tensor) -> Tensor:
        """``tensor`` replaced in place by its element-wise maximum over the replicas."""
        return self._all_reduce_(tensor, dist.ReduceOp.MAX)

    def differentiable_sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the replicas, as a new tensor that carries gradient: the
        backward pass sums the replicas' gradients of it, so a term every replica computes from
        the summed value, once the trainer averages gradients, has the gradient of that term
        computed in one process from all the rows."""
        if self.world_size == 1:
            return tensor
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)

    def gather(self, tensor: Tensor) -> Tensor:
        """Every replica's ``tensor`` (the same shape on each) concatenated along the first axis
        in rank order, without gradient: a global batch's rows when each replica holds its
        ``rank``-th slice of them."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts)

    def gather_for_shared_term(self, tensor: Tensor) -> Tensor:
        """:meth:`gather`, carrying gradient, for a loss term that every replica computes alike
        from the gathered rows (e.g. a contrastive term over the global batch).

        The backward pass gives this replica's rows N times their slice of the term's gradient:
        every replica's term is the same function of the same rows, so that is the sum of the
        replicas' gradients for these rows, and once the trainer averages gradients over the N
        replicas the parameters get the term's gradient computed in one process."""
        if self.world_size == 1:
            return tensor
        return _GatherForSharedTerm.apply(tensor, self)

    def own_rows(self, rows_per_replica: int) -> slice:
        """Where this replica's ``rows_per_replica`` rows sit in the gathered global batch."""
        return slice(self.rank * rows_per_replica, (self.rank + 1) * rows_per_replica)

    def dropout(self, x: Float[Tensor, "rows ..."], p: float) -> Float[Tensor, "rows ..."]:
        """``torch.nn.functional.dropout(x, p)`` in training, with the mask drawn for the global
        batch (every replica draws the same ``N * rows`` rows from its generator, which the
        replicas keep in step) and this replica's slice applied: the masks one process would
        draw for the whole batch, and the generator advanced as far. With one replica the draw
        and arithmetic are ``F.dropout``'s own on the CPU (a ``bernoulli_(1 - p)`` mask, then
        ``x * mask * 1 / (1 - p)``)."""
        if p == 0.0:
            return x
        mask = torch.empty(
            (self.world_size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device
        ).bernoulli_(1.0 - p)
        return x.mul(mask[self.own_rows(x.shape[0])]).mul_(1.0 / (1.0 - p))

    def broadcast_(self, tensor: Tensor) -> Tensor:
        """``tensor`` replaced in place by rank 0's (for anything drawn at random)."""
        if self.world_size > 1:
            dist.broadcast(tensor, src=0, group=self.group)
        return tensor


class _GatherForSharedTerm(torch.autograd.Function):
    """See :meth:`Replicas.gather_for_shared_term`."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, replicas: Replicas) -> Tensor:
        ctx.rows = replicas.own_rows(tensor.shape[0])
        ctx.world_size = replicas.world_size
        return replicas.gather(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad[ctx.rows] * ctx.world_size, None


SINGLE = Replicas(world_size=1)
"""The replicas of an SAE trained in one process: every reduction is the identity."""


def replicas_of(module: Any) -> Replicas:
    """The replicas ``module`` trains among (:data:`SINGLE` unless a trainer joined it to some)."""
    return getattr(module, "replicas", None) or SINGLE


def mean_over_replicas(module: Any, tensor: Tensor) -> Tensor:
    """``tensor`` (a batch statistic, a mean over the rows of this replica's batch) as the mean
    over the global batch, in place; a no-op outside data-parallel training."""
    with torch.no_grad():
        return replicas_of(module).mean_(tensor)

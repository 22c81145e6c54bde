"""The replicas of one SAE in data-parallel training: what a training SAE reduces across them.

In data-parallel training (``sae_variants.integrations.training.distributed``) every process
holds an identical copy of the SAE and steps it on its own share of each global batch. Gradients
are averaged by the trainer; everything else a step changes (a running statistic, a decision
read from one, a random draw that is not a gradient) must be reduced here, or the copies drift
apart. A training SAE outside data-parallel training has no :class:`Replicas` and every method
below is the identity, so a variant calls them unconditionally at its statistic points.

Every replica must make the same calls in the same order with tensors of the same shape: they
are collective operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Replicas:
    """The process group of one SAE's replicas (``None``: torch.distributed's default group)."""

    world_size: int
    group: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"Replicas needs world_size >= 1, got {self.world_size}")

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

    def broadcast_(self, tensor: Tensor) -> Tensor:
        """``tensor`` replaced in place by rank 0's (for anything drawn at random)."""
        if self.world_size > 1:
            dist.broadcast(tensor, src=0, group=self.group)
        return tensor


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

"""Let an SAE act on whichever torch optimizer steps its parameters, around each step.

SAELens's trainer builds its own ``Adam`` over ``sae.parameters()`` and offers no callback, but
seed 001 prescribes optimizer behaviour: an adaptive learning-rate factor driven by the pre-clip
gradient norm, AdamW-style decoupled weight decay on some matrices only, and zeroed Adam moments
for revived features. torch's *global* optimizer step hooks reach every optimizer; an SAE that
registers here is called before and after any optimizer step whose parameters include its own,
so the behaviour holds under SAELens's runner, the benchmark, or a user's loop alike.

Policies are held weakly: a garbage-collected SAE drops out without being unregistered.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol, runtime_checkable

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)


@runtime_checkable
class OptimizerPolicy(Protocol):
    def owns_parameters_of(self, optimizer: Optimizer) -> bool: ...

    def before_optimizer_step(self, optimizer: Optimizer) -> None: ...

    def after_optimizer_step(self, optimizer: Optimizer) -> None: ...


_POLICIES: weakref.WeakSet[Any] = weakref.WeakSet()
_HOOK_HANDLES: list[Any] = []


def _before(optimizer: Optimizer, *_: Any) -> None:
    for policy in list(_POLICIES):
        if policy.owns_parameters_of(optimizer):
            policy.before_optimizer_step(optimizer)


def _after(optimizer: Optimizer, *_: Any) -> None:
    for policy in list(_POLICIES):
        if policy.owns_parameters_of(optimizer):
            policy.after_optimizer_step(optimizer)


def attach_optimizer_policy(policy: OptimizerPolicy) -> None:
    """Call ``policy`` around every optimizer step that updates its parameters (idempotent)."""
    if not _HOOK_HANDLES:
        _HOOK_HANDLES.append(register_optimizer_step_pre_hook(_before))
        _HOOK_HANDLES.append(register_optimizer_step_post_hook(_after))
    _POLICIES.add(policy)


def detach_optimizer_policy(policy: OptimizerPolicy) -> None:
    _POLICIES.discard(policy)


def optimizer_holds(optimizer: Optimizer, parameter: torch.Tensor) -> bool:
    """Whether ``parameter`` (by identity) is one of ``optimizer``'s parameters."""
    return any(p is parameter for group in optimizer.param_groups for p in group["params"])


def zero_adam_moments(
    optimizer: Optimizer, parameter: torch.Tensor, index: torch.Tensor, dim: int
) -> None:
    """Zero the first and second moments of ``parameter``'s slices ``index`` along ``dim``.

    Works for Adam and AdamW (``exp_avg``, ``exp_avg_sq``; ``max_exp_avg_sq`` under amsgrad). A
    parameter the optimizer has not stepped yet has no state and nothing to reset.
    """
    state = optimizer.state.get(parameter)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        moment = state.get(key)
        if isinstance(moment, torch.Tensor) and moment.shape == parameter.shape:
            moment.index_fill_(dim, index, 0.0)

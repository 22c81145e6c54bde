"""What a variant does to the optimizer that steps it (the SAE is bound to it with
``VariantTrainingSAE.bind_optimizer``): AdamW-style decoupled weight decay on chosen matrices and
zeroed Adam moments for re-initialized features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim import Optimizer


@torch.no_grad()
def decoupled_weight_decay(
    optimizer: Optimizer, parameters: Sequence[torch.Tensor], rate: float
) -> None:
    """``p <- p (1 - lr * rate)`` for each of ``parameters`` at its group's current learning rate,
    before the step, as AdamW decays (Adam itself would fold decay into the gradient)."""
    if rate == 0:
        return
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if any(parameter is p for p in parameters):
                parameter.mul_(1.0 - group["lr"] * rate)


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

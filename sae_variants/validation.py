"""Input checks that turn silent garbage into errors naming what was expected and what arrived."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def check_activations(x: Tensor, d_in: int, *, where: str = "SAE input") -> None:
    """Raise ``ValueError`` unless ``x`` is a finite floating tensor whose last dim is ``d_in``.

    ``where`` names the caller in the message, so the user knows which boundary refused the data.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(
            f"{where}: expected floating-point activations, got dtype {x.dtype} "
            "(token ids or an integer tensor passed where activations belong?)"
        )
    if x.ndim < 1 or x.shape[-1] != d_in:
        raise ValueError(
            f"{where}: expected activations of shape [..., d_in={d_in}], got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{where}: activations contain {n_bad} NaN/inf values out of {x.numel()}; "
            "the model produced non-finite activations or the data is corrupt"
        )


def require_fields(
    cfg: object, names: tuple[str, ...], holds: Callable[[Any], bool], requirement: str
) -> None:
    """Raise ``ValueError("<name> must be <requirement>, got <value>")`` for the first field of
    ``cfg`` named in ``names`` whose value fails ``holds`` (the configs' shared range check)."""
    for name in names:
        value = getattr(cfg, name)
        if not holds(value):
            raise ValueError(f"{name} must be {requirement}, got {value}")

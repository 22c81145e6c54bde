"""Input checks that turn silent garbage into errors naming what was expected and what arrived."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _check_tensor(x: object, width: int, what: str, where: str) -> Tensor:
    # The checks on metadata only (type, dtype, rank, trailing size): no pass over the data.
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: expected {what} as a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(
            f"{where}: expected floating-point {what}, got dtype {x.dtype} "
            "(token ids or an integer tensor passed where activations belong?)"
        )
    if x.ndim < 1 or x.shape[-1] != width:
        raise ValueError(
            f"{where}: expected {what} of shape [..., {width}], got "
            f"{'a 0-D tensor' if x.ndim == 0 else tuple(x.shape)}"
        )
    return x


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite. A finite sum proves it (a NaN or an inf makes
    the sum NaN or inf) in one reduction without a ``[..., d]`` mask, about 25x cheaper than
    ``isfinite(x).all()``; only a non-finite sum, which a sum of large finite values can also
    give, pays for the entry-wise check."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _count_non_finite(x: Tensor) -> int:
    return int((~torch.isfinite(x)).sum())


def check_activations(x: Tensor, d_in: int, *, where: str = "SAE input") -> None:
    """Raise unless ``x`` is a finite floating tensor whose last dim is ``d_in`` (``TypeError``
    for a non-tensor, ``ValueError`` otherwise). Empty batches pass.

    ``where`` names the caller in the message, so the user knows which boundary refused the data.
    """
    _check_tensor(x, d_in, f"activations (d_in={d_in})", where)
    if not all_finite(x):
        raise ValueError(
            f"{where}: activations contain {_count_non_finite(x)} NaN/inf values out of "
            f"{x.numel()}; the model produced non-finite activations or the data is corrupt"
        )


def check_codes(codes: Tensor, d_sae: int, *, where: str = "SAE decode") -> None:
    """Raise unless ``codes`` is a floating tensor whose last dim is ``d_sae``; metadata only
    (finiteness is read off the decoded output, see :func:`check_decoded`)."""
    _check_tensor(codes, d_sae, f"feature activations (d_sae={d_sae})", where)


def check_decoded(
    codes: Tensor, decoded: Tensor, weights: tuple[Tensor, ...], *, where: str = "SAE decode"
) -> None:
    """Raise ``ValueError`` naming the cause when ``decoded`` holds a NaN or inf: non-finite
    codes, non-finite ``weights``, or a product beyond the dtype's range. The check reads only
    the ``[..., d_in]`` output (NaN and inf propagate through the product), so it costs a small
    fraction of the decode; the causes are looked for only once something is wrong."""
    if all_finite(decoded):
        return
    if not all_finite(codes):
        raise ValueError(
            f"{where}: feature activations contain {_count_non_finite(codes)} NaN/inf values out "
            f"of {codes.numel()}"
        )
    for weight in weights:
        if not all_finite(weight):
            raise ValueError(
                f"{where}: the SAE's weights hold {_count_non_finite(weight)} NaN/inf values "
                "(a diverged training run?)"
            )
    raise ValueError(
        f"{where}: the reconstruction overflows {decoded.dtype} (largest |feature activation| "
        f"{float(codes.detach().abs().max()):.3g}); decode in a wider dtype"
    )


def check_positions(positions: object, shape: tuple[int, ...], *, where: str) -> Tensor:
    """``positions`` as an int64 tensor, after checking it holds non-negative integers of the
    given leading ``shape`` (``TypeError``/``ValueError`` naming what arrived otherwise)."""
    if not isinstance(positions, Tensor):
        raise TypeError(
            f"{where}: positions must be a torch.Tensor, got {type(positions).__name__}"
        )
    if (
        positions.dtype == torch.bool
        or torch.is_floating_point(positions)
        or positions.is_complex()
    ):
        raise ValueError(
            f"{where}: positions must be an integer tensor (positions in the context), got "
            f"dtype {positions.dtype}"
        )
    if tuple(positions.shape) != shape:
        raise ValueError(
            f"{where}: positions must have the input's leading shape {shape}, got "
            f"{tuple(positions.shape)}"
        )
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(
            f"{where}: positions must be >= 0 (positions in the context), got "
            f"{int(positions.min())}"
        )
    return positions.long()


def require_fields(
    cfg: object, names: tuple[str, ...], holds: Callable[[Any], bool], requirement: str
) -> None:
    """Raise ``ValueError("<name> must be <requirement>, got <value>")`` for the first field of
    ``cfg`` named in ``names`` whose value fails ``holds`` (the configs' shared range check)."""
    for name in names:
        value = getattr(cfg, name)
        if not holds(value):
            raise ValueError(f"{name} must be {requirement}, got {value}")

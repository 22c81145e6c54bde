"""Which torch device a run uses: the best one present by default, a named one checked up front.

The choice is a pure function of what torch reports (:class:`Accelerators`), so it is tested
without a GPU; :func:`resolve_device` asks torch and refuses, before any model loads, a device
this machine does not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

AUTO = "auto"
_DEVICE = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Accelerators:
    """What torch can reach on this machine."""

    cuda_devices: int = 0
    mps: bool = False

    @classmethod
    def present(cls) -> Accelerators:
        mps = getattr(torch.backends, "mps", None)
        return cls(
            cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0,
            mps=bool(mps is not None and mps.is_available()),
        )


def choose_device(requested: str | None, available: Accelerators) -> str:
    """``requested`` checked against ``available``; ``None`` or ``"auto"`` picks CUDA when there
    is a CUDA device, else the CPU. MPS is used only when named: QuCL's and MultiScaleNorm's
    float64 statistics have no MPS kernels.

    Raises ValueError for a malformed name or a device that is not there, naming what is.
    """
    if requested is None or requested == AUTO:
        return "cuda" if available.cuda_devices else "cpu"
    match = _DEVICE.match(requested)
    if match is None:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got {requested!r}"
        )
    kind, index = match.group(1), match.group(2)
    present = _describe(available)
    if kind == "cuda" and available.cuda_devices == 0:
        raise ValueError(
            f"device {requested!r} asked for, but torch sees no CUDA device ({present})"
        )
    if kind == "cuda" and index is not None and int(index) >= available.cuda_devices:
        raise ValueError(
            f"device {requested!r} asked for, but torch sees {available.cuda_devices} CUDA "
            f"device(s), numbered from 0 ({present})"
        )
    if kind == "mps" and not available.mps:
        raise ValueError(f"device 'mps' asked for, but this torch has no MPS backend ({present})")
    if kind == "cpu" and index is not None:
        raise ValueError(f"the CPU takes no index, got {requested!r}")
    return requested


def resolve_device(requested: str | None) -> str:
    """:func:`choose_device` on this machine's accelerators."""
    return choose_device(requested, Accelerators.present())


def _describe(available: Accelerators) -> str:
    parts = [f"{available.cuda_devices} CUDA"] + (["MPS"] if available.mps else [])
    return "present: " + ", ".join(parts) + ", CPU"

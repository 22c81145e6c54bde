"""A run never ends "successfully" with a broken SAE: non-finite numbers are refused in the
config before anything loads, caught within the training step they appear in, and checked again
in the final weights before anything is written.

The per-step check reads the loss, every loss term and the norm of every parameter after the
optimizer's step, stacked into one small tensor, so a step costs one host synchronization and
one pass over the parameters (a few per mille of a step: the step itself reads them several
times).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

from sae_variants.replicas import replicas_of


class NonFiniteTrainingError(RuntimeError):
    """Training produced a NaN or inf (a loss term, or a parameter after a step)."""


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _non_finite_fields(value: Any, prefix: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, float):
        if not math.isfinite(value):
            yield prefix, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _non_finite_fields(getattr(value, f.name), _joined(prefix, f.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_fields(item, _joined(prefix, str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite_fields(item, f"{prefix}[{index}]")


def refuse_non_finite_config(cfg: Any, name: str = "") -> None:
    """``ValueError`` naming the first float field of ``cfg`` (a dataclass, searched through
    nested dataclasses, dicts and lists) that is NaN or inf: such a value passes every range check
    written as a comparison (``inf >= 0``) and trains a NaN SAE."""
    for field_name, value in _non_finite_fields(cfg, name):
        raise ValueError(f"{field_name} must be a finite number, got {value}")


def refuse_overflowing_learning_rate(cfg: Any) -> None:
    """``ValueError`` for a learning rate whose first Adam step, ``lr / (1 - adam_beta1)``, is
    beyond the largest number of the SAE's dtype (``cfg`` a SAELens runner config): torch would
    fail converting it in the middle of the first step."""
    dtype = getattr(torch, str(cfg.sae.dtype).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        return  # SAELens refuses a dtype it does not know
    largest = torch.finfo(dtype).max
    first_step = cfg.lr / (1.0 - cfg.adam_beta1) if cfg.adam_beta1 < 1 else math.inf
    if first_step > largest:
        raise ValueError(
            f"lr={cfg.lr:g} is too large: Adam's first step is lr / (1 - adam_beta1) = "
            f"{first_step:.3g}, beyond the largest {cfg.sae.dtype} ({largest:.3g}); use a "
            f"learning rate below {largest * (1.0 - cfg.adam_beta1):.3g}"
        )


def latest_checkpoint(checkpoint_path: str | Path | None) -> Path | None:
    """The most recent checkpoint folder SAELens wrote under ``checkpoint_path`` (its folders
    are named by training samples seen), if any."""
    if checkpoint_path is None or not Path(checkpoint_path).is_dir():
        return None
    folders = [p for p in Path(checkpoint_path).iterdir() if p.is_dir()]
    if not folders:
        return None
    return max(folders, key=lambda p: p.stat().st_mtime)


def _terms(output: TrainStepOutput) -> dict[str, torch.Tensor]:
    terms = {"loss": output.loss, **output.losses}
    return {
        name: torch.as_tensor(value).detach().float().reshape(()) for name, value in terms.items()
    }


def check_step_finite(
    sae: torch.nn.Module, output: TrainStepOutput, step: int, checkpoint_path: str | None
) -> None:
    """Raise :class:`NonFiniteTrainingError` if a loss term of ``output`` or a parameter of
    ``sae`` is not finite, naming the step, the terms, the parameters and the last checkpoint.
    Among data-parallel replicas (``sae.replicas``) every rank raises when any rank's step is
    not finite, so none waits for the others at the next collective."""
    terms = _terms(output)
    parameters = dict(sae.named_parameters())
    norms = torch._foreach_norm([p.detach() for p in parameters.values()])
    values = torch.stack([*terms.values(), *(n.float().to(output.loss.device) for n in norms)])
    finite = torch.isfinite(values)
    here = finite.all()
    replicas = replicas_of(sae)
    if replicas.world_size > 1:
        everywhere = bool(replicas.min_(here.to(torch.int32)))
    else:
        everywhere = bool(here)  # the step's one synchronization
    if everywhere:
        return
    checkpoint = latest_checkpoint(checkpoint_path)
    resume = (
        f"the last good checkpoint is {checkpoint}"
        if checkpoint is not None
        else "no checkpoint was written before it"
    )
    if bool(here):
        raise NonFiniteTrainingError(
            f"training stopped at step {step}: another rank's step was non-finite (its error "
            f"names the terms). Nothing was saved; {resume}."
        )
    flags = finite.tolist()
    bad_terms = [name for name, ok in zip(terms, flags[: len(terms)], strict=True) if not ok]
    bad_parameters = [
        name for name, ok in zip(parameters, flags[len(terms) :], strict=True) if not ok
    ]
    found = []
    if bad_terms:
        found.append(f"loss terms {', '.join(bad_terms)}")
    if bad_parameters:
        found.append(f"parameters {', '.join(bad_parameters)} after the optimizer step")
    raise NonFiniteTrainingError(
        f"training stopped at step {step}: non-finite {' and '.join(found)}. Nothing was saved; "
        f"{resume}. Lower the learning rate or the loss coefficients, or check the activations."
    )


def guard_finite_steps(trainer: SAETrainer[Any, Any], checkpoint_path: str | None) -> None:
    """Make every ``trainer.step`` end with :func:`check_step_finite` (SAELens's per-batch seam;
    ``n_training_steps`` is the index of the step being taken)."""
    step = trainer.step

    def finite_step(batch: Any) -> TrainStepOutput:
        output = step(batch)
        check_step_finite(trainer.sae, output, trainer.n_training_steps, checkpoint_path)
        return output

    trainer.step = finite_step  # type: ignore[method-assign]


def check_finite_parameters(sae: torch.nn.Module, where: str) -> None:
    """:class:`NonFiniteTrainingError` naming every parameter or buffer of ``sae`` holding a NaN
    or inf (checked before a trained SAE is written)."""
    tensors = {**dict(sae.named_parameters()), **dict(sae.named_buffers())}
    bad = [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise NonFiniteTrainingError(
            f"{where}: the trained SAE holds non-finite values in {', '.join(bad)}; "
            "nothing was written"
        )

"""Train an architecture at a target L0 by calibrating its sparsity knob, then evaluate it.

Comparisons between SAEs only mean something at matched sparsity. :func:`train_at_target_l0`
trains, measures L0 on held-out text (64 contexts, a few seconds), and re-trains with the knob (``l1_coefficient`` by default)
moved by a power-law step, ``L0 ~ knob^-s`` with ``s`` estimated from the attempts so far, until
L0 is within ``tolerance`` of the target. Every attempt is recorded, so the calibration is part of
the report. The chosen attempt then gets the full evaluation (cached beside it). An attempt whose
folder already holds an SAE trained from the identical request (the request is written next to it
as ``train_request.json``) is not retrained, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sae_lens import HookedSAETransformer

from sae_variants.integrations.comparison.result_cache import load_result, store_result
from sae_variants.integrations.evaluation.evaluate import EvalResult, evaluate_sae, heldout_l0
from sae_variants.integrations.training.pipeline import train_sae
from sae_variants.integrations.training.presets import DEMO_SAE_OPTIONS
from sae_variants.integrations.training.request import (
    TrainRequest,
    build_runner_config,
    config_fields,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Attempt:
    knob_value: float
    l0: float
    path: str


@dataclass
class MatchedRun:
    architecture: str
    knob: str
    target_l0: float
    result: EvalResult
    tolerance: float
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return abs(self.result.metrics["l0"] / self.target_l0 - 1.0) <= self.tolerance


def _next_value(attempts: list[Attempt], target_l0: float, prior_slope: float = 1.0) -> float:
    last = attempts[-1]
    slope = prior_slope
    if len(attempts) >= 2:
        prev = attempts[-2]
        if prev.knob_value != last.knob_value and prev.l0 > 0 and last.l0 > 0:
            measured = -math.log(last.l0 / prev.l0) / math.log(last.knob_value / prev.knob_value)
            if measured > 0.05:  # only trust a slope with the expected sign
                slope = measured
    return last.knob_value * (max(last.l0, 1e-3) / target_l0) ** (1.0 / slope)


def calibrate(
    measure: Callable[[float], tuple[float, T]],
    target_l0: float,
    *,
    initial_value: float,
    tolerance: float = 0.10,
    max_attempts: int = 4,
    history: Sequence[Attempt] = (),
    integer_knob: bool = False,
    l0_rises_with_knob: bool = False,
    prior_slope: float = 1.0,
) -> tuple[list[Attempt], T]:
    """Call ``measure(knob) -> (L0, result)`` until L0 is within ``tolerance`` of ``target_l0``.

    ``history`` holds earlier attempts (other targets of a sweep, or an earlier comparison's):
    the first value tried is the one among them whose L0 was closest to the target when that was
    within ``tolerance``, else the one they predict, instead of ``initial_value``. Integer knobs
    (TopK's ``k``) are rounded; ``l0_rises_with_knob`` says L0 grows with the knob (``k``) instead of falling (an L1 weight);
    ``prior_slope`` is the ``s`` of ``L0 ~ knob^-s`` assumed until two attempts measure it.
    Returns the attempts of this calibration and the last attempt's result.
    """
    if target_l0 <= 0:
        raise ValueError(f"target_l0 must be positive, got {target_l0}")
    if initial_value <= 0:
        raise ValueError(f"the knob's initial_value must be positive, got {initial_value}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")

    def predict(tried: list[Attempt]) -> float:
        if not l0_rises_with_knob:
            return _next_value(tried, target_l0, prior_slope)
        # The power law in 1/knob falls with L0 like an L1 weight does.
        inverted = [Attempt(1.0 / a.knob_value, a.l0, a.path) for a in tried]
        return 1.0 / _next_value(inverted, target_l0, prior_slope)

    attempts: list[Attempt] = []
    within = [a for a in history if abs(a.l0 / target_l0 - 1.0) <= tolerance]
    if within:  # a value already measured on target: training is deterministic, so reuse it
        value = min(within, key=lambda a: abs(a.l0 / target_l0 - 1.0)).knob_value
    else:
        value = predict(list(history)) if history else initial_value
    while True:
        if integer_knob:
            value = float(max(1, round(value)))
        l0, result = measure(value)
        attempts.append(Attempt(value, l0, ""))
        if abs(l0 / target_l0 - 1.0) <= tolerance or len(attempts) == max_attempts:
            return attempts, result
        following = predict([*history, *attempts])
        if integer_knob and round(following) == value:
            return (
                attempts,
                result,
            )  # the nearest integer is already tried: nothing closer is reachable
        value = following


REQUEST_FILENAME = "train_request.json"
TRAINING_TIME_FILENAME = "training_seconds.txt"
EVALUATION_FILENAME = "evaluation.json"


_RUN_FLAGS = frozenset(
    {
        "context_size",
        "lr_warm_up_steps",
        "autocast",
        "autocast_lm",
        "wandb_project",
        "wandb_run_name",
        "runner_options",
    }
)
"""Request fields whose default keeps the behaviour from before they existed: they enter a
fingerprint only when set, so runs recorded before them stay reusable."""


def request_fingerprint(request: TrainRequest) -> str:
    """The request as canonical JSON (paths as strings, ``overwrite`` and unset run flags left
    out, the device as resolved), with the SAE config it resolves to: a changed default of an
    architecture makes finished runs stale."""
    defaults = TrainRequest()
    fields = {
        k: v
        for k, v in dataclasses.asdict(request).items()
        if k != "overwrite" and not (k in _RUN_FLAGS and v == getattr(defaults, k))
    }
    runner_cfg, _ = build_runner_config(request)
    fields["device"] = runner_cfg.device  # "auto" is where the run would go on this machine
    fields["resolved_sae_config"] = config_fields(runner_cfg.sae)
    return json.dumps(fields, sort_keys=True, default=str)


def train_or_reuse(request: TrainRequest, model: HookedSAETransformer | None = None) -> bool:
    """Train ``request`` (on ``model`` if given, else loading ``request.model_name``) unless its
    output folder holds an SAE from the same request.

    Returns True when a finished run was reused. The request is recorded only after the SAE is
    saved, so an interrupted run is never mistaken for a finished one. The wall time of the
    training is written beside it (``training_seconds.txt``) for reports.
    """
    output = Path(request.output_path)
    recorded = output / REQUEST_FILENAME
    fingerprint = request_fingerprint(request)
    if recorded.exists() and (output / "cfg.json").exists() and recorded.read_text() == fingerprint:
        logger.info("reusing the finished run in %s", output)
        return True
    recorded.unlink(missing_ok=True)
    (output / EVALUATION_FILENAME).unlink(missing_ok=True)  # it described the SAE being replaced
    start = time.perf_counter()
    train_sae(dataclasses.replace(request, overwrite=True), model=model)
    (output / TRAINING_TIME_FILENAME).write_text(f"{time.perf_counter() - start:.1f}\n")
    recorded.write_text(fingerprint)
    return False


def training_seconds(path: str | Path) -> float | None:
    """The recorded training wall time of the run in ``path`` (None if it was not recorded)."""
    file = Path(path) / TRAINING_TIME_FILENAME
    return float(file.read_text()) if file.exists() else None


def evaluate_or_reuse(
    path: str | Path, *, model: HookedSAETransformer | None = None, n_batches: int = 8
) -> EvalResult:
    """``evaluate_sae`` for the run in ``path``, read back from ``evaluation.json`` when that was
    written for the same trained SAE (its recorded request) and the same number of batches."""
    path = Path(path)
    request_file = path / REQUEST_FILENAME
    if not request_file.exists():  # not trained by train_or_reuse: nothing to key a cache on
        return evaluate_sae(path, model=model, n_batches=n_batches)
    key = {"n_batches": n_batches, "request": request_file.read_text()}
    stored = load_result(path / EVALUATION_FILENAME, key)
    if stored is not None:
        return EvalResult(**stored)
    result = evaluate_sae(path, model=model, n_batches=n_batches)
    store_result(path / EVALUATION_FILENAME, key, dataclasses.asdict(result))
    return result


def train_at_target_l0(
    request: TrainRequest,
    target_l0: float | None,
    *,
    knob: str = "l1_coefficient",
    initial_value: float,
    tolerance: float = 0.10,
    max_attempts: int = 4,
    model: HookedSAETransformer | None = None,
    eval_batches: int = 8,
    history: Sequence[Attempt] = (),
    integer_knob: bool = False,
    l0_rises_with_knob: bool = False,
    prior_slope: float = 1.0,
) -> MatchedRun:
    """Train ``request`` with ``knob`` calibrated so held-out L0 lands within ``tolerance``.

    With ``target_l0=None`` the run trains once at ``initial_value`` and its own L0 is the target
    (the reference a comparison matches the others to). ``history``: attempts for other targets
    of the same request (see :func:`calibrate`).
    """
    if target_l0 is not None and target_l0 <= 0:
        raise ValueError(f"target_l0 must be positive, got {target_l0}")
    if initial_value <= 0:
        raise ValueError(f"initial_value of {knob} must be positive, got {initial_value}")

    def path_of(value: float) -> Path:
        return (
            Path(request.output_path) / f"{knob}={int(value) if integer_knob else f'{value:.5g}'}"
        )

    def train(value: float) -> Path:
        train_or_reuse(
            dataclasses.replace(
                request,
                sae_options={**request.sae_options, knob: int(value) if integer_knob else value},
                output_path=path_of(value),
                overwrite=True,
            ),
            model=model,
        )
        return path_of(value)

    def measure(value: float) -> tuple[float, Path]:
        # Steer by the few-second L0 on 64 held-out contexts; only the chosen attempt gets the
        # full evaluation, whose L0 (within about 2% of this one) is what the report judges the
        # match by, so a calibration can stop just outside the tolerance.
        path = train(value)
        l0 = heldout_l0(path, model)
        logger.info(
            "%s %s=%.5g -> L0 %.1f (target %s)", request.architecture, knob, value, l0, target_l0
        )
        return l0, path

    if target_l0 is None:
        path = train(initial_value)
        result = evaluate_or_reuse(path, model=model, n_batches=eval_batches)
        attempts = [Attempt(initial_value, result.metrics["l0"], str(path))]
        target_l0 = result.metrics["l0"]
    else:
        attempts, path = calibrate(
            measure,
            target_l0,
            initial_value=initial_value,
            tolerance=tolerance,
            max_attempts=max_attempts,
            history=history,
            integer_knob=integer_knob,
            l0_rises_with_knob=l0_rises_with_knob,
            prior_slope=prior_slope,
        )
        attempts = [dataclasses.replace(a, path=str(path_of(a.knob_value))) for a in attempts]
        result = evaluate_or_reuse(path, model=model, n_batches=eval_batches)
    return MatchedRun(request.architecture, knob, target_l0, result, tolerance, attempts)


def train_standard_reference(
    work_dir: Path,
    training_tokens: int,
    model: HookedSAETransformer | None = None,
    l1_coefficient: float | None = None,
    layer: int | None = None,
) -> MatchedRun:
    """SAELens ``standard`` at the demo's L1 settings (or ``l1_coefficient``) in
    ``work_dir / "standard"``, on the residual stream after block ``layer`` (None: the middle
    one): the reference whose L0 a comparison matches every variant to (reused when already
    trained)."""
    return train_at_target_l0(
        TrainRequest(
            architecture="standard",
            output_path=Path(work_dir) / "standard",
            sae_options={"l1_warm_up_steps": int(DEMO_SAE_OPTIONS["l1_warm_up_steps"])},
            training_tokens=training_tokens,
            expansion_factor=8,
            layer=layer,
        ),
        target_l0=None,
        model=model,
        initial_value=float(DEMO_SAE_OPTIONS["l1_coefficient"])
        if l1_coefficient is None
        else l1_coefficient,
    )


def summary_row(run: MatchedRun) -> dict[str, Any]:
    """The figures a comparison table shows for one matched run."""
    m = run.result.metrics
    return {
        "architecture": run.architecture,
        run.knob: run.attempts[-1].knob_value,
        "l0": m["l0"],
        "explained_variance": m["explained_variance"],
        "ce_loss_score": m["ce_loss_score"],
        "kl_div_score": m["kl_div_score"],
        "dead_fraction": m["dead_fraction"],
        "mean_max_decoder_cosine": m["mean_max_decoder_cosine"],
        "path": run.result.path,
    }

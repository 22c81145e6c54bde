"""Train an architecture at a target L0 by calibrating its sparsity knob, then evaluate it.

Comparisons between SAEs only mean something at matched sparsity. :func:`train_at_target_l0`
trains, measures L0 on held-out text, and re-trains with the knob (``l1_coefficient`` by default)
moved by a power-law step, ``L0 ~ knob^-s`` with ``s`` estimated from the attempts so far, until
L0 is within ``tolerance`` of the target. Every attempt is recorded, so the calibration is part of
the report. An attempt whose folder already holds an SAE trained from the identical request (the
request is written next to it as ``train_request.json``) is evaluated, not retrained, so an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens import HookedSAETransformer

from sae_variants.integrations.evaluation import EvalResult, evaluate_sae
from sae_variants.integrations.presets import DEMO_SAE_OPTIONS
from sae_variants.integrations.training import TrainRequest, train_sae

logger = logging.getLogger(__name__)


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


def _next_value(attempts: list[Attempt], target_l0: float) -> float:
    last = attempts[-1]
    slope = 1.0
    if len(attempts) >= 2:
        prev = attempts[-2]
        if prev.knob_value != last.knob_value and prev.l0 > 0 and last.l0 > 0:
            measured = -math.log(last.l0 / prev.l0) / math.log(last.knob_value / prev.knob_value)
            if measured > 0.05:  # only trust a slope with the expected sign
                slope = measured
    return last.knob_value * (max(last.l0, 1e-3) / target_l0) ** (1.0 / slope)


REQUEST_FILENAME = "train_request.json"


def request_fingerprint(request: TrainRequest) -> str:
    """The request as canonical JSON (paths as strings, ``overwrite`` left out)."""
    fields = {k: v for k, v in dataclasses.asdict(request).items() if k != "overwrite"}
    return json.dumps(fields, sort_keys=True, default=str)


def train_or_reuse(request: TrainRequest) -> bool:
    """Train ``request`` unless its output folder holds an SAE from the same request.

    Returns True when a finished run was reused. The request is recorded only after the SAE is
    saved, so an interrupted run is never mistaken for a finished one.
    """
    output = Path(request.output_path)
    recorded = output / REQUEST_FILENAME
    fingerprint = request_fingerprint(request)
    if recorded.exists() and (output / "cfg.json").exists() and recorded.read_text() == fingerprint:
        logger.info("reusing the finished run in %s", output)
        return True
    recorded.unlink(missing_ok=True)
    train_sae(dataclasses.replace(request, overwrite=True))
    recorded.write_text(fingerprint)
    return False


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
) -> MatchedRun:
    """Train ``request`` with ``knob`` calibrated so held-out L0 lands within ``tolerance``.

    With ``target_l0=None`` the run trains once at ``initial_value`` and its own L0 is the target
    (the reference a comparison matches the others to).
    """
    if target_l0 is not None and target_l0 <= 0:
        raise ValueError(f"target_l0 must be positive, got {target_l0}")
    if initial_value <= 0:
        raise ValueError(f"initial_value of {knob} must be positive, got {initial_value}")
    attempts: list[Attempt] = []
    value = initial_value
    result: EvalResult | None = None
    for _ in range(max_attempts):
        path = Path(request.output_path) / f"{knob}={value:.5g}"
        attempt_request = dataclasses.replace(
            request, sae_options={**request.sae_options, knob: value}, output_path=path, overwrite=True
        )
        train_or_reuse(attempt_request)
        result = evaluate_sae(path, model=model, n_batches=eval_batches)
        attempts.append(Attempt(value, result.metrics["l0"], str(path)))
        if target_l0 is None:
            target_l0 = result.metrics["l0"]
        logger.info("%s %s=%.4g -> L0 %.1f (target %.1f)", request.architecture, knob, value,
                    result.metrics["l0"], target_l0)
        if abs(result.metrics["l0"] / target_l0 - 1.0) <= tolerance:
            break
        value = _next_value(attempts, target_l0)
    assert result is not None
    assert target_l0 is not None
    return MatchedRun(request.architecture, knob, target_l0, result, tolerance, attempts)


def train_standard_reference(work_dir: Path, training_tokens: int,
                             model: HookedSAETransformer | None = None) -> MatchedRun:
    """SAELens ``standard`` at the demo's L1 settings in ``work_dir / "standard"``: the reference
    whose L0 a comparison matches every variant to (reused when already trained)."""
    return train_at_target_l0(
        TrainRequest(architecture="standard", output_path=Path(work_dir) / "standard",
                     sae_options={"l1_warm_up_steps": int(DEMO_SAE_OPTIONS["l1_warm_up_steps"])},
                     training_tokens=training_tokens, expansion_factor=8),
        target_l0=None, initial_value=float(DEMO_SAE_OPTIONS["l1_coefficient"]), model=model,
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

"""Start each knob's calibration from the attempts an earlier comparison recorded.

A comparison's ``report.json`` keeps every calibration attempt (knob value and the L0 it gave).
Re-running the comparison in a new work directory (a fresh machine, more attempts, a deleted
work folder) would otherwise repeat the search from the plan's first guess; seeded with those
attempts, the first value tried is the one they predict. Seeding only changes where the search
starts: every SAE in the new report is trained and evaluated by the new run. Attempts are only
reused from a report whose L0-relevant settings (model, hook, width, tokens, batch; for the
synthetic part its whole ground truth) equal this run's, because L0 at a knob value depends on
all of them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_variants.integrations.comparison.matched_l0 import Attempt
from sae_variants.integrations.comparison.settings import ComparisonSettings, batch_tokens_for

logger = logging.getLogger(__name__)

_MODEL_FIELDS = ("model_name", "training_tokens", "batch_tokens")
"""Settings that move the L0 a knob value gives on the model (besides hook and width)."""
_SYNTHETIC_IGNORED = ("max_attempts",)
"""Synthetic settings that do not change what a knob value gives."""


@dataclass(frozen=True)
class SeededAttempts:
    """Earlier attempts per architecture, for the model part and the synthetic part."""

    model: dict[str, list[Attempt]] = field(default_factory=dict)
    synthetic: dict[str, list[Attempt]] = field(default_factory=dict)


def _attempts(rows: list[dict[str, Any]]) -> dict[str, list[Attempt]]:
    seeded: dict[str, list[Attempt]] = {}
    for row in rows:
        tried = [Attempt(a["knob_value"], a["l0"], a.get("path", "")) for a in row["attempts"]]
        seeded.setdefault(row["architecture"], []).extend(tried)
    return seeded


def _mismatches(earlier: dict[str, Any], now: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    return [
        f"{n}: {earlier.get(n)!r} there, {now[n]!r} here" for n in names if earlier.get(n) != now[n]
    ]


def load_seeded_attempts(
    report_file: Path, settings: ComparisonSettings, hook_name: str, d_sae: int
) -> SeededAttempts:
    """The attempts of ``report_file`` (a comparison's ``report.json``) this run may start from.

    Raises ValueError, naming each difference, when the report was made with other L0-relevant
    settings: its knob values would steer the search wrong.
    """
    path = Path(report_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"--calibration-from expects a comparison's report.json, but {path} is not a file"
        )
    try:
        report = json.loads(path.read_text())
        earlier = report["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a comparison report.json ({error})") from error

    earlier_model = {
        **earlier,
        "batch_tokens": batch_tokens_for(
            earlier.get("model_name", ""), earlier.get("train_batch_size_tokens")
        ),
        "from_cache": bool(earlier.get("activations_path")),
    }
    now_model = {
        **{n: getattr(settings, n) for n in _MODEL_FIELDS},
        "from_cache": settings.activations_path is not None,
    }
    problems = _mismatches(earlier_model, now_model, (*_MODEL_FIELDS, "from_cache"))
    problems += _mismatches(
        report, {"hook_name": hook_name, "d_sae": d_sae}, ("hook_name", "d_sae")
    )
    if problems:
        raise ValueError(
            f"{path} was made with other settings, so its knob values would not give the same "
            f"L0 here ({'; '.join(problems)}); pass the report of a matching comparison"
        )

    synthetic: dict[str, list[Attempt]] = {}
    if settings.synthetic is not None and earlier.get("synthetic"):
        now_synthetic = dataclasses.asdict(settings.synthetic)
        names = tuple(n for n in now_synthetic if n not in _SYNTHETIC_IGNORED)
        earlier_synthetic = {
            **earlier["synthetic"],
            # JSON has no tuples
            "hierarchy_branching": tuple(earlier["synthetic"].get("hierarchy_branching", ())),
        }
        differences = _mismatches(earlier_synthetic, now_synthetic, names)
        if differences:
            logger.warning(
                "%s used another synthetic ground truth (%s): the synthetic calibration starts "
                "from the plan's first values",
                path,
                "; ".join(differences),
            )
        else:
            synthetic = _attempts([r for r in report.get("synthetic", []) if r.get("attempts")])
    try:
        model = _attempts(report.get("embedded", []))
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a comparison report.json ({error!r} in its runs)"
        ) from error
    return SeededAttempts(model, synthetic)

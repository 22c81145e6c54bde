"""--calibration-from: earlier attempts steer the first value tried, only from a matching report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sae_variants.integrations.comparison.calibration_seed import load_seeded_attempts
from sae_variants.integrations.comparison.matched_l0 import Attempt, calibrate
from sae_variants.integrations.comparison.settings import ComparisonSettings, SyntheticSettings

HOOK = "blocks.1.hook_resid_post"


def _report(tmp_path: Path, settings: ComparisonSettings, **top: object) -> Path:
    report = {
        "settings": {
            **dataclasses.asdict(settings),
            "synthetic": dataclasses.asdict(settings.synthetic) if settings.synthetic else None,
        },
        "hook_name": HOOK,
        "d_sae": 2048,
        "embedded": [
            {
                "architecture": "standard",
                "attempts": [
                    {"knob_value": 1.0, "l0": 64.0, "path": "a"},
                    {"knob_value": 2.0, "l0": 40.0, "path": "b"},
                ],
            }
        ],
        "synthetic": [
            {"architecture": "standard", "attempts": [{"knob_value": 3.0, "l0": 9.0}]},
            {"architecture": "seq_contrastive", "attempts": []},
        ],
        **top,
    }
    file = tmp_path / "report.json"
    file.write_text(json.dumps(report, default=list))
    return file


def test_a_matching_report_seeds_both_parts(tmp_path: Path) -> None:
    settings = ComparisonSettings()
    seeded = load_seeded_attempts(_report(tmp_path, settings), settings, HOOK, 2048)
    assert [(a.knob_value, a.l0) for a in seeded.model["standard"]] == [(1.0, 64.0), (2.0, 40.0)]
    assert [(a.knob_value, a.l0) for a in seeded.synthetic["standard"]] == [(3.0, 9.0)]
    assert "seq_contrastive" not in seeded.synthetic


def test_seeded_attempts_choose_the_first_value_tried() -> None:
    # L0 = 64 / knob^(log2(64/40)): the two seeded attempts measure the slope, so the first
    # value tried lands on the target, where an unseeded search starts at initial_value.
    slope = 0.678071905
    tried: list[float] = []

    def measure(value: float) -> tuple[float, None]:
        tried.append(value)
        return 64.0 / value**slope, None

    history = [Attempt(1.0, 64.0, ""), Attempt(2.0, 40.0, "")]
    attempts, _ = calibrate(measure, 32.0, initial_value=1.0, history=history, max_attempts=3)
    assert len(attempts) == 1
    assert attempts[0].l0 == pytest.approx(32.0, rel=1e-3)
    calibrate(measure, 32.0, initial_value=1.0, max_attempts=1)
    assert tried[-1] == 1.0


def test_a_report_of_other_settings_is_refused_naming_the_differences(tmp_path: Path) -> None:
    earlier = _report(tmp_path, dataclasses.replace(ComparisonSettings(), training_tokens=200_000))
    with pytest.raises(ValueError, match=r"training_tokens: 200000 there, 1000000 here"):
        load_seeded_attempts(earlier, ComparisonSettings(), HOOK, 2048)
    with pytest.raises(ValueError, match=r"d_sae: 2048 there, 4096 here"):
        load_seeded_attempts(
            _report(tmp_path, ComparisonSettings()), ComparisonSettings(), HOOK, 4096
        )


def test_another_synthetic_ground_truth_seeds_only_the_model_part(tmp_path: Path) -> None:
    earlier = dataclasses.replace(
        ComparisonSettings(), synthetic=SyntheticSettings(num_features=256, max_attempts=2)
    )
    seeded = load_seeded_attempts(_report(tmp_path, earlier), ComparisonSettings(), HOOK, 2048)
    assert seeded.synthetic == {}
    assert "standard" in seeded.model
    # max_attempts does not change what a knob value gives, so it does not block seeding
    same = dataclasses.replace(ComparisonSettings(), synthetic=SyntheticSettings(max_attempts=9))
    assert load_seeded_attempts(_report(tmp_path, same), ComparisonSettings(), HOOK, 2048).synthetic


def test_a_missing_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"report\.json"):
        load_seeded_attempts(tmp_path / "none.json", ComparisonSettings(), HOOK, 2048)
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match=r"is not a comparison report\.json"):
        load_seeded_attempts(tmp_path / "other.json", ComparisonSettings(), HOOK, 2048)


def test_an_earlier_value_on_target_is_tried_again_first() -> None:
    # The 2.5 attempt hit the target: the search re-trains it (a finished run is then reused
    # from its folder) instead of moving to the value the last two attempts predict.
    tried: list[float] = []

    def measure(value: float) -> tuple[float, None]:
        tried.append(value)
        return 80.0 / value, None

    history = [Attempt(2.5, 32.0, ""), Attempt(1.0, 80.0, ""), Attempt(4.0, 20.0, "")]
    attempts, _ = calibrate(measure, 33.0, initial_value=1.0, history=history, max_attempts=3)
    assert tried == [2.5]
    assert len(attempts) == 1

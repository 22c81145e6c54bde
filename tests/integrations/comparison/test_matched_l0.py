"""The L0 calibration step of matched_l0 (the training loop itself runs in the examples)."""

import dataclasses
from pathlib import Path

import pytest

from sae_variants.integrations.comparison import matched_l0
from sae_variants.integrations.comparison.matched_l0 import Attempt, _next_value, train_at_target_l0
from sae_variants.integrations.evaluation.evaluate import EvalResult
from sae_variants.integrations.training.request import TrainRequest


def test_first_step_assumes_l0_inversely_proportional_to_the_knob() -> None:
    assert _next_value([Attempt(2.0, 80.0, "")], target_l0=40.0) == pytest.approx(4.0)


def test_later_steps_use_the_measured_power_law() -> None:
    # L0 = 100 * knob^-0.5: from (1, 100) and (4, 50), reaching 25 needs knob 16.
    attempts = [Attempt(1.0, 100.0, ""), Attempt(4.0, 50.0, "")]
    assert _next_value(attempts, target_l0=25.0) == pytest.approx(16.0)


def test_a_slope_with_the_wrong_sign_is_not_trusted() -> None:
    attempts = [Attempt(1.0, 50.0, ""), Attempt(2.0, 60.0, "")]
    assert _next_value(attempts, target_l0=30.0) == pytest.approx(4.0)


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="target_l0 must be positive"):
        train_at_target_l0(TrainRequest(), target_l0=0.0, initial_value=1.0)
    with pytest.raises(ValueError, match="initial_value of l1_coefficient must be positive"):
        train_at_target_l0(TrainRequest(), target_l0=10.0, initial_value=0.0)


def test_finished_runs_are_reused_and_changed_or_interrupted_ones_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[TrainRequest] = []

    def fake_train(request: TrainRequest, **_: object) -> None:
        trained.append(request)
        Path(request.output_path).mkdir(parents=True, exist_ok=True)
        (Path(request.output_path) / "cfg.json").write_text("{}")

    monkeypatch.setattr(matched_l0, "train_sae", fake_train)
    request = TrainRequest(
        architecture="qucl", output_path=tmp_path / "run", sae_options={"l1_coefficient": 2.0}
    )
    assert matched_l0.train_or_reuse(request) is False
    assert matched_l0.train_or_reuse(request) is True
    assert len(trained) == 1
    changed = dataclasses.replace(request, sae_options={"l1_coefficient": 3.0})
    assert matched_l0.train_or_reuse(changed) is False
    assert len(trained) == 2
    (tmp_path / "run" / matched_l0.REQUEST_FILENAME).unlink()  # as if killed before finishing
    assert matched_l0.train_or_reuse(changed) is False
    assert len(trained) == 3


def test_calibration_steers_by_the_quick_l0_and_fully_evaluates_only_the_chosen_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_train(request: TrainRequest, **_: object) -> None:
        Path(request.output_path).mkdir(parents=True, exist_ok=True)
        (Path(request.output_path) / "cfg.json").write_text("{}")

    evaluated: list[str] = []

    def fake_evaluate(path: Path, **_: object) -> EvalResult:
        evaluated.append(Path(path).name)
        return EvalResult(str(path), "standard", "hook", "model", {"l0": 41.0}, {})

    monkeypatch.setattr(matched_l0, "train_sae", fake_train)

    def quick_l0(path: Path, _model: object) -> float:
        return 80.0 / float(Path(path).name.split("=")[1])  # 80 at l1 = 1, 40 at l1 = 2

    monkeypatch.setattr(matched_l0, "heldout_l0", quick_l0)
    monkeypatch.setattr(matched_l0, "evaluate_sae", fake_evaluate)
    run = train_at_target_l0(
        TrainRequest(output_path=tmp_path / "std"), target_l0=40.0, initial_value=1.0
    )
    assert [(a.knob_value, a.l0) for a in run.attempts] == [(1.0, 80.0), (2.0, 40.0)]
    assert [Path(a.path).name for a in run.attempts] == ["l1_coefficient=1", "l1_coefficient=2"]
    assert evaluated == ["l1_coefficient=2"]
    assert run.result.metrics["l0"] == 41.0
    assert run.matched  # judged on the full evaluation's L0: 41 is within 10% of 40

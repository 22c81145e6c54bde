"""A run never ends "successfully" with a broken SAE: non-finite settings are refused before any
work, a step that goes non-finite stops the run naming the step and the terms, final weights are
checked before anything is written, and a zero is refused, never replaced by a default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainStepOutput

from sae_variants.integrations.cli import main
from sae_variants.integrations.training.finite_guard import (
    NonFiniteTrainingError,
    check_finite_parameters,
    check_step_finite,
    refuse_non_finite_config,
)
from sae_variants.integrations.training.request import TrainRequest, build_runner_config

SMALL = [
    "--training-tokens",
    "8192",
    "--batch-size",
    "1024",
    "--d-sae",
    "256",
    "--lr-warm-up-steps",
    "0",
]


@pytest.mark.parametrize("architecture", ["standard", "qucl", "position_aware"])
def test_a_diverging_run_stops_at_its_step_and_writes_nothing(
    architecture: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    argv = ["train", "--architecture", architecture, *SMALL, "--lr", "1e30"]
    assert main([*argv, "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "training stopped at step " in err
    assert "non-finite" in err
    assert "Nothing was saved" in err
    assert not (output / "cfg.json").exists()
    assert not (output / "sae_weights.safetensors").exists()


@pytest.mark.parametrize("architecture", ["standard", "position_aware", "cubic_ortho"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_settings_are_refused_before_any_work(
    architecture: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--architecture", architecture, *SMALL, "--output", str(tmp_path / "x")]
    assert main([*argv, "--dry-run", "--set", f"l1_coefficient={value}"]) == 2
    assert "l1_coefficient must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--training-tokens", "training_tokens must be positive, got 0"),
        ("--batch-size", "train_batch_size_tokens must be positive, got 0"),
        ("--lr", "lr must be a positive number, got 0"),
    ],
)
def test_a_zero_is_refused_not_replaced_by_the_preset(
    flag: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--architecture", "standard", "--output", str(tmp_path / "x"), "--dry-run"]
    assert main([*argv, flag, "0"]) == 2
    assert message in capsys.readouterr().err


def test_a_nested_non_finite_field_is_named() -> None:
    cfg, _ = build_runner_config(TrainRequest(architecture="standard", d_sae=64))
    refuse_non_finite_config(cfg)  # the defaults are finite
    cfg.logger.__dict__["eval_every_n_wandb_logs"] = float("nan")
    with pytest.raises(ValueError, match=r"logger.eval_every_n_wandb_logs must be a finite"):
        refuse_non_finite_config(cfg)


def _output(loss: float, **terms: float) -> TrainStepOutput:
    x = torch.zeros(2, 4)
    return TrainStepOutput(
        sae_in=x,
        sae_out=x,
        feature_acts=x,
        hidden_pre=x,
        loss=torch.tensor(loss),
        losses={name: torch.tensor(value) for name, value in terms.items()},
    )


def test_the_step_check_names_terms_parameters_and_the_last_checkpoint(tmp_path: Path) -> None:
    sae: Any = torch.nn.Linear(4, 4)
    check_step_finite(sae, _output(1.0, mse_loss=1.0), step=3, checkpoint_path=None)
    with pytest.raises(NonFiniteTrainingError, match=r"step 7: non-finite loss terms loss, l1"):
        check_step_finite(
            sae, _output(float("nan"), mse_loss=1.0, l1=float("inf")), 7, checkpoint_path=None
        )
    (tmp_path / "4096").mkdir()
    with torch.no_grad():
        sae.bias[1] = float("nan")
    with pytest.raises(NonFiniteTrainingError, match=r"parameters bias after .*4096"):
        check_step_finite(sae, _output(1.0), step=9, checkpoint_path=str(tmp_path))


def test_final_weights_are_checked_before_saving() -> None:
    sae = torch.nn.Linear(4, 4)
    check_finite_parameters(sae, "saving to out")
    with torch.no_grad():
        sae.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match=r"saving to out: .* in weight; nothing"):
        check_finite_parameters(sae, "saving to out")


def test_a_learning_rate_whose_first_adam_step_overflows_is_refused() -> None:
    from sae_variants.integrations.training.request import TrainRequest, build_runner_config
    from sae_variants.integrations.training.runner import bind_run

    cfg, _ = build_runner_config(TrainRequest(d_sae=64, lr=1e37))
    bind_run(cfg)  # its first step, 1e38, still fits in float32
    cfg.lr = 1e38
    with pytest.raises(ValueError, match=r"lr=1e\+38 is too large: .* = 1e\+39, beyond"):
        bind_run(cfg)

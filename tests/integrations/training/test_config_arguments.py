"""Every SAE and runner config field is a typed, documented ``train`` flag; SAELens's own CLI
parses every variant's config."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.llm_sae_training_runner import _parse_cfg_args

from sae_variants.integrations import cli
from sae_variants.integrations.training.config_arguments import (
    UNSET,
    flag_name,
    value_reader,
)
from sae_variants.integrations.training.request import (
    MANAGED_SAE_FIELDS,
    REQUEST_RUNNER_FIELDS,
    TrainRequest,
    build_runner_config,
    training_config_class,
)
from sae_variants.registry import registered_variants


def _train_parser(architecture: str):
    argv = ["train", "--architecture", architecture]
    parser = cli.build_parser(argv)
    return parser._subparsers._group_actions[0].choices["train"]


def test_values_are_read_with_their_annotated_types() -> None:
    assert value_reader(int)("12") == 12
    assert value_reader(float)("0.5") == 0.5
    assert value_reader(bool)("false") is False
    assert value_reader(bool)("yes") is True
    assert value_reader(int | None)("none") is None
    assert value_reader(int | None)("3") == 3
    assert value_reader(list[float])("1, 2.5") == [1.0, 2.5]
    assert value_reader(tuple[int | None, ...])("5,none") == (5, None)
    assert value_reader(bool | list[int])("true") is True
    assert value_reader(bool | list[int])("1,2") == [1, 2]  # "1,2" is not a bool
    assert value_reader(dict[str, int])('{"a": 1}') == {"a": 1}
    assert value_reader(Literal["a", "b"])("b") == "b"
    with pytest.raises(ValueError, match=r"'c' is not a one of 'a', 'b'"):
        value_reader(Literal["a", "b"])("c")
    with pytest.raises(ValueError, match=r"'maybe' is not a bool"):
        value_reader(bool)("maybe")
    with pytest.raises(ValueError, match=r"is not a int or none"):
        value_reader(int | None)("1.5")


@pytest.mark.parametrize("architecture", [v.name for v in registered_variants()])
def test_every_field_of_a_variant_is_a_documented_flag(architecture: str) -> None:
    parser = _train_parser(architecture)
    cfg_class = training_config_class(architecture)
    flags = parser.get_default("config_flags")
    by_name = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    own = [f.name for f in dataclasses.fields(cfg_class) if f.name not in MANAGED_SAE_FIELDS]
    assert sorted(flags.sae.fields.values()) == sorted(own)
    # the variant's own fields carry their docstrings, not just the default
    declared = [n for n in cfg_class.__annotations__ if n in own]
    assert declared
    for name in declared:
        help_text = by_name[flag_name(name)].help
        assert help_text, name
        assert not help_text.startswith("("), (name, help_text)


def test_every_runner_field_the_request_leaves_open_is_a_flag() -> None:
    flags = _train_parser("standard").get_default("config_flags")
    runner = {f.name for f in dataclasses.fields(LanguageModelSAERunnerConfig)}
    logging = {f.name for f in dataclasses.fields(LoggingConfig)}
    assert set(flags.runner.fields.values()) == runner - REQUEST_RUNNER_FIELDS
    assert set(flags.logging.fields.values()) == logging - REQUEST_RUNNER_FIELDS


def test_flags_reach_the_resolved_runner_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--architecture", "cubic_ortho", "--ortho-coefficient", "0.5"]
    argv += ["--act-mode", "sigmoid", "--adam-beta2", "0.99", "--exclude-special-tokens", "false"]
    argv += ["--n-batches-in-buffer", "40", "--dry-run", "--json"]
    assert cli.main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["sae"]["ortho_coefficient"] == 0.5
    assert cfg["sae"]["act_mode"] == "sigmoid"
    assert (cfg["adam_beta2"], cfg["exclude_special_tokens"], cfg["n_batches_in_buffer"]) == (
        0.99,
        False,
        40,
    )


def test_flags_left_out_leave_the_request_unchanged() -> None:
    parser = cli.build_parser(["train"])
    args = parser.parse_args(["train"])
    flags = args.config_flags
    assert all(getattr(args, dest) is UNSET for dest in flags.dests())
    assert flags.sae_options(args) == {}
    assert flags.runner_options(args) == {}


def test_bad_values_and_double_settings_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--architecture", "cubic_ortho", "--act-mode", "cubic"])
    assert "invalid one of 'none'" in capsys.readouterr().err
    argv = ["train", "--set", "l1_coefficient=1", "--l1-coefficient", "2", "--dry-run"]
    assert cli.main(argv) == 2
    assert "given both with --set and with its own flag" in capsys.readouterr().err
    assert cli.main(["train", "--wandb-entity", "me", "--dry-run"]) == 2
    assert "W&B logging, which is off" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # abbreviations could name another field
        cli.main(["train", "--ortho-coef", "1", "--architecture", "cubic_ortho"])


def test_runner_options_refuse_fields_the_request_decides() -> None:
    with pytest.raises(ValueError, match=r"'lr' is decided by the training request"):
        build_runner_config(TrainRequest(runner_options={"lr": 1.0}))
    with pytest.raises(ValueError, match=r"has no field 'adam_beta3'.*adam_beta2"):
        build_runner_config(TrainRequest(runner_options={"adam_beta3": 1.0}))


def test_config_refuses_a_flag_even_at_its_default(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.json"
    config.write_text("{}")
    assert cli.main(["train", "--config", str(config), "--seed", "42"]) == 2
    assert "--seed would be ignored" in capsys.readouterr().err
    argv = ["train", "--config", str(config), "--architecture", "qucl", "--multiscale", "false"]
    assert cli.main(argv) == 2
    assert "--architecture, --multiscale would be ignored" in capsys.readouterr().err


@pytest.mark.parametrize("architecture", [v.name for v in registered_variants()])
def test_saelens_own_command_line_builds_every_variant(architecture: str) -> None:
    cfg = _parse_cfg_args(
        ["--architecture", architecture, "--model_name", "x", "--d_in", "64", "--d_sae", "128"]
    )
    assert type(cfg.sae) is training_config_class(architecture)
    assert (cfg.sae.d_in, cfg.sae.d_sae) == (64, 128)

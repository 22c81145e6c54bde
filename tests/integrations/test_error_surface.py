"""One error surface on the command line, and outputs checked before the work: every user error
is one line naming the file or flag, exit status 2, no traceback (``--debug`` shows one); an
output that cannot take the result is refused before any model loads; a run that fails leaves
nothing that looks like an SAE; ``--overwrite`` replaces the whole folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_variants.integrations import output_folders
from sae_variants.integrations.cli import main
from sae_variants.integrations.training import pipeline
from sae_variants.integrations.training.pipeline import TrainResult
from sae_variants.integrations.training.request import TrainRequest
from sae_variants.integrations.training.runner import VariantTrainingRunner

TINY = ["--training-tokens", "8192", "--batch-size", "1024", "--d-sae", "128"]
TINY += ["--lr-warm-up-steps", "0"]


def _fails_with(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("sae-variants ")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(pipeline, "load_model", refuse)


def test_an_output_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = ["train", "--architecture", "standard", *TINY]
    _fails_with([*argv, "--output", str(afile)], capsys, str(afile), "is a file")
    _fails_with([*argv, "--output", str(afile / "sub")], capsys, "is a file, not a folder")


def test_an_unwritable_output_is_refused_before_any_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_model: None,
) -> None:
    # As root every folder is writable, so the permission answer is what this test varies.
    monkeypatch.setattr(output_folders.os, "access", lambda *_args: False)
    argv = ["train", "--architecture", "standard", *TINY, "--output", str(tmp_path / "o")]
    _fails_with(argv, capsys, "cannot write in", "permission denied")


def test_a_folder_of_other_files_is_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("the user's")
    argv = ["train", "--architecture", "standard", *TINY, "--output", str(notes), "--overwrite"]
    _fails_with(argv, capsys, "holds files but no a trained SAE")
    assert (notes / "mine.txt").read_text() == "the user's"


def test_a_failed_run_leaves_no_sae_and_overwrite_replaces_the_whole_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "run"
    argv = ["train", "--architecture", "standard", *TINY, "--output", str(output)]
    assert main(argv) == 0
    (output / "stale.txt").write_text("from an earlier run")
    _fails_with(argv, capsys, "already holds a trained SAE", "--overwrite")

    def crash(self: VariantTrainingRunner) -> Any:
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(VariantTrainingRunner, "run", crash)
    with pytest.raises(RuntimeError, match="went away"):
        main([*argv, "--overwrite"])
    assert (output / "stale.txt").exists()  # the previous SAE is untouched
    assert not (tmp_path / "run.partial").exists()  # no checkpoint: nothing to resume, none left
    monkeypatch.undo()
    shutil.rmtree(output)
    checkpoint = tmp_path / "run.partial" / "checkpoints" / "step-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "sae_variants_resume.pt").write_bytes(b"")
    _fails_with(argv, capsys, "run.partial holds an interrupted run", "--resume")
    assert main([*argv, "--overwrite"]) == 0
    assert not (output / "stale.txt").exists()
    assert (output / "cfg.json").is_file()
    assert not (tmp_path / "run.partial").exists()


@pytest.fixture(scope="module")
def saved_sae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "sae"
    argv = ["train", "--architecture", "standard", *TINY, "--output", str(folder)]
    assert main(argv) == 0
    return folder


def _corrupt(kind: str, folder: Path) -> None:
    weights, cfg = folder / "sae_weights.safetensors", folder / "cfg.json"
    if kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif kind == "garbage weights":
        weights.write_bytes(b"not a safetensors file at all" * 10)
    elif kind == "wrong shape":
        tensors = load_file(weights)
        tensors["W_dec"] = tensors["W_dec"][:, :7].contiguous()
        save_file(tensors, weights)
    elif kind == "NaN weights":
        tensors = load_file(weights)
        tensors["b_enc"][3] = float("nan")
        save_file(tensors, weights)
    elif kind == "cfg is a list":
        cfg.write_text("[1, 2]")
    elif kind == "cfg lacks d_sae":
        saved = json.loads(cfg.read_text())
        del saved["d_sae"]
        cfg.write_text(json.dumps(saved))
    elif kind == "cfg is not JSON":
        cfg.write_text("{not json")
    elif kind == "hook the model lacks":
        saved = json.loads(cfg.read_text())
        saved["metadata"]["hook_name"] = "blocks.9.hook_resid_post"
        cfg.write_text(json.dumps(saved))
    elif kind == "a training checkpoint":
        torch.save({}, folder / "trainer_state.pt")
    elif kind == "no weights":
        weights.unlink()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated weights", "is not a readable safetensors file"),
        ("garbage weights", "is not a readable safetensors file"),
        ("wrong shape", "do not match the 'standard' architecture"),
        ("NaN weights", "holds NaN/inf values in b_enc"),
        ("cfg is a list", "must hold a JSON object, found a list"),
        ("cfg lacks d_sae", "lacks the integer field(s) d_sae"),
        ("cfg is not JSON", "is not valid JSON"),
        ("hook the model lacks", "reads hook 'blocks.9.hook_resid_post'"),
        ("a training checkpoint", "sae-variants train --resume"),
        ("no weights", "has a cfg.json but no sae_weights.safetensors"),
    ],
)
def test_a_broken_saved_sae_is_one_line_and_exit_2(
    saved_sae: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(saved_sae, broken)
    _corrupt(kind, broken)
    _fails_with(["evaluate", str(broken), "--batches", "1"], capsys, message)
    _fails_with(["export", str(broken), str(tmp_path / "out")], capsys)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no saved SAE"):
        main(["--debug", "evaluate", str(tmp_path)])


def test_a_missing_folder_names_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with(["evaluate", str(tmp_path / "nowhere")], capsys, "nowhere", "holds no saved SAE")


def test_train_result_names_the_requested_folder_not_the_staging_one(tmp_path: Path) -> None:
    result: TrainResult = pipeline.train_sae(
        TrainRequest(
            architecture="standard",
            d_sae=64,
            training_tokens=4096,
            train_batch_size_tokens=1024,
            lr_warm_up_steps=0,
            output_path=tmp_path / "r",
        )
    )
    assert result.output_path == tmp_path / "r"
    assert result.runner_config.output_path == str(tmp_path / "r")


def test_a_run_never_writes_into_the_activation_cache_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "acts"
    assert main(["cache", "--tokens", "2048", "--output", str(cache)]) == 0
    capsys.readouterr()
    argv = ["train", "--activations", str(cache), "--architecture", "standard", "--d-sae", "64"]
    argv += ["--lr-warm-up-steps", "0"]
    _fails_with([*argv, "--output", str(cache / "sae")], capsys, "is the input", str(cache))

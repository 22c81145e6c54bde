"""Dataset resolution: the bundled Austen text with any tokenizer, local files and saved datasets,
and clear errors for what cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from sae_variants.integrations.models.tiny_gemma2 import austen_dataset
from sae_variants.integrations.models.tiny_gemma2.model import load_tokenizer
from sae_variants.integrations.training.datasets import (
    AUSTEN,
    is_local_dataset,
    local_dataset,
    resolve_dataset,
)
from sae_variants.integrations.training.request import TrainRequest, build_runner_config


def test_austen_with_the_embedded_tokenizer_is_the_embedded_training_set() -> None:
    ours = resolve_dataset(None, load_tokenizer(), 64, default=AUSTEN)
    assert isinstance(ours, Dataset)
    assert ours["tokens"] == austen_dataset("train", 64)["tokens"]


def test_text_and_jsonl_files_load_with_a_text_column(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    (tmp_path / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ["one", "two", "three"])
    )
    assert local_dataset(tmp_path / "a.txt")["text"] == ["first line", "second line"]
    assert local_dataset(tmp_path / "b.jsonl")["text"] == ["one", "two", "three"]


def test_a_saved_dataset_folder_loads(tmp_path: Path) -> None:
    Dataset.from_dict({"tokens": [[2, 5, 6], [2, 7, 8]]}).save_to_disk(tmp_path / "saved")
    assert resolve_dataset(str(tmp_path / "saved"), None, 3, default=AUSTEN)["tokens"] == [
        [2, 5, 6],
        [2, 7, 8],
    ]


def test_unreadable_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        resolve_dataset(str(tmp_path / "missing.jsonl"), None, 8, default=AUSTEN)
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected one of"):
        local_dataset(tmp_path / "notes.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a saved Hugging Face dataset"):
        local_dataset(tmp_path / "folder")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match="needs one of"):
        local_dataset(tmp_path / "c.jsonl")


def test_hub_names_pass_through_and_paths_do_not() -> None:
    assert not is_local_dataset("monology/pile-uncopyrighted")
    assert is_local_dataset("./data.jsonl")
    assert resolve_dataset("monology/pile-uncopyrighted", None, 8, default=AUSTEN) == (
        "monology/pile-uncopyrighted"
    )


def test_a_local_dataset_is_recorded_by_its_absolute_path_and_not_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg, _ = build_runner_config(TrainRequest(dataset_path="x.jsonl"))
    assert (cfg.dataset_path, cfg.streaming) == (str(tmp_path / "x.jsonl"), False)
    cfg, _ = build_runner_config(TrainRequest())
    assert (cfg.dataset_path, cfg.streaming) == ("sae-variants:austen", False)
    cfg, _ = build_runner_config(TrainRequest(model_name="gemma-2-2b", layer=12))
    assert (cfg.dataset_path, cfg.streaming) == ("monology/pile-uncopyrighted", True)

"""Where a run's text comes from: the bundled Austen novels, a local file or saved dataset, or a hub
dataset name, resolved to what SAELens's activation store takes.

The Austen text ships with the package, so the embedded model and ``gemma-3-270m`` train and
evaluate offline by default: it is tokenized with the model's own tokenizer into ``[BOS] + text``
contexts (rows never straddle two novels). A local file or saved dataset is loaded with
``datasets`` and handed to SAELens, which tokenizes a ``text`` column itself; anything else is
passed on as a hub dataset name.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedTokenizerBase

from sae_variants.integrations.models.tiny_gemma2.corpus import (
    contexts_dataset,
    corpus_split,
    token_contexts,
)

AUSTEN = "austen"
"""The dataset name of the bundled Austen novels (train split; evaluation uses the held-out one)."""

_FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_COLUMNS = ("text", "tokens", "input_ids")


def austen_contexts(split: str, tokenizer: PreTrainedTokenizerBase, context_size: int) -> Dataset:
    """The Austen ``"train"`` or ``"held_out"`` split as pretokenized contexts (column ``tokens``)."""
    return contexts_dataset(token_contexts(corpus_split(split), tokenizer, context_size))


def is_local_dataset(spec: str) -> bool:
    """Whether ``spec`` names a local file or folder rather than a hub dataset."""
    return (
        spec.startswith((".", "/", "~"))
        or Path(spec).suffix in _FILE_BUILDERS
        or Path(spec).expanduser().exists()
    )


def _check_columns(dataset: Dataset, source: str) -> Dataset:
    if not any(column in dataset.column_names for column in _COLUMNS):
        raise ValueError(
            f"{source} has columns {dataset.column_names}; a training dataset needs one of "
            f"{list(_COLUMNS)} ('text' is tokenized by the model's tokenizer)"
        )
    return dataset


def local_dataset(path: Path) -> Dataset:
    """A text/JSONL/JSON/parquet file, or a folder written by ``Dataset.save_to_disk``."""
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path} (expected a file or a saved dataset folder)")
    if path.is_dir():
        try:
            loaded = load_from_disk(str(path))
        except FileNotFoundError as err:
            raise ValueError(
                f"{path} is a folder but not a saved Hugging Face dataset "
                "(Dataset.save_to_disk writes dataset_info.json and state.json)"
            ) from err
        if isinstance(loaded, DatasetDict):
            if "train" not in loaded:
                raise ValueError(
                    f"{path} holds splits {list(loaded)}; a training dataset needs a 'train' split"
                )
            loaded = loaded["train"]
        return _check_columns(loaded, str(path))
    builder = _FILE_BUILDERS.get(path.suffix)
    if builder is None:
        raise ValueError(
            f"cannot read {path}: expected one of {sorted(_FILE_BUILDERS)} or a saved dataset folder"
        )
    loaded = load_dataset(builder, data_files=str(path), split="train")
    return _check_columns(loaded, str(path))


def resolve_dataset(
    spec: str | None,
    tokenizer: PreTrainedTokenizerBase | None,
    context_size: int,
    default: str,
) -> Dataset | str:
    """The dataset ``spec`` names, as a ``Dataset`` or a hub name for SAELens.

    ``None`` means ``default`` (:data:`AUSTEN` for models that ship offline, the papers' hub dataset
    otherwise). :data:`AUSTEN` needs the model's tokenizer; a path must exist.
    """
    name = default if spec is None else spec
    if name == AUSTEN:
        if tokenizer is None:
            raise ValueError("the Austen dataset is tokenized by the model, which has no tokenizer")
        return austen_contexts("train", tokenizer, context_size)
    if is_local_dataset(name):
        return local_dataset(Path(name).expanduser())
    return name

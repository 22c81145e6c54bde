"""Activation caches: `sae-variants cache` writes SAELens's format with whole contexts (the ones
live training reads), and every architecture trains from one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens import SAE, ActivationsStore, HookedSAETransformer

from sae_variants.integrations import cli
from sae_variants.integrations.training import activation_cache
from sae_variants.integrations.training.activation_cache import (
    CACHE_INFO_FILENAME,
    CacheRequest,
    cache_activations,
    open_cache,
)
from sae_variants.integrations.training.pipeline import train_sae
from sae_variants.integrations.training.request import (
    TrainRequest,
    build_runner_config,
    request_from_cache,
)

HOOK = "blocks.1.hook_resid_post"
CONTEXTS = 320  # 20 model batches of 16 contexts of 128 tokens (more than a sequence pool)


@pytest.fixture(scope="module")
def embedded_cache(
    tmp_path_factory: pytest.TempPathFactory, embedded_model: HookedSAETransformer
) -> Path:
    output = tmp_path_factory.mktemp("cache") / "acts"
    cache_activations(
        CacheRequest(output_path=output, training_tokens=CONTEXTS * 128 - 100),
        model=embedded_model,
    )
    return output


def test_the_cache_holds_whole_contexts_with_their_tokens(embedded_cache: Path) -> None:
    dataset, info = open_cache(embedded_cache)
    # The requested tokens are rounded up to whole model batches, not to SAELens's 2 GB shards.
    assert (info.contexts, info.context_size, info.d_in) == (CONTEXTS, 128, 256)
    assert (info.model_name, info.hook_name, info.dataset) == ("tiny-gemma2-austen", HOOK, "austen")
    assert info.usable_tokens == CONTEXTS * 127  # one BOS per context
    assert dataset.features[HOOK].shape == (128, 256)
    assert dataset.column_names == [HOOK, "token_ids"]
    recorded = json.loads((embedded_cache / CACHE_INFO_FILENAME).read_text())
    assert recorded["written_by"].startswith("sae-variants ")
    # SAELens's temporary shards are consolidated and the partial folder moved into place.
    assert not (embedded_cache / ".tmp_shards").exists()
    assert not embedded_cache.with_name("acts.partial").exists()


def test_cached_contexts_are_the_live_ones_and_their_activations(
    embedded_cache: Path, embedded_model: HookedSAETransformer
) -> None:
    dataset, _ = open_cache(embedded_cache)
    rows = dataset.with_format("torch")[:CONTEXTS]
    cached_tokens = rows["token_ids"].long()
    runner_cfg, _ = build_runner_config(TrainRequest())
    live = ActivationsStore.from_config(
        embedded_model,
        runner_cfg,
        override_dataset=activation_cache.austen_contexts("train", embedded_model.tokenizer, 128),
    )
    assert torch.equal(cached_tokens, live.get_batch_tokens(CONTEXTS).cpu())
    _, model_cache = embedded_model.run_with_cache(cached_tokens[:8], names_filter=[HOOK])
    torch.testing.assert_close(rows[HOOK][:8], model_cache[HOOK], rtol=1e-5, atol=1e-5)


def test_bad_requests_fail_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(activation_cache, "load_model", no_model)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(
        FileExistsError, match="not empty; choose another --output or pass --overwrite"
    ):
        cache_activations(CacheRequest(output_path=taken, training_tokens=4096))
    with pytest.raises(ValueError, match="layer 9"):
        cache_activations(CacheRequest(output_path=tmp_path / "a", training_tokens=4096, layer=9))
    with pytest.raises(ValueError, match="less than one context"):
        cache_activations(CacheRequest(output_path=tmp_path / "a", training_tokens=100))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        cache_activations(CacheRequest(output_path=afile, training_tokens=4096, overwrite=True))
    assert (taken / "something").exists()


def test_overwrite_replaces_the_whole_folder_of_a_previous_cache(
    tmp_path: Path, embedded_model: HookedSAETransformer
) -> None:
    output = tmp_path / "acts"
    cache_activations(
        CacheRequest(output_path=output, training_tokens=8 * 128), model=embedded_model
    )
    (output / "stale.txt").write_text("from an earlier run")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        cache_activations(
            CacheRequest(output_path=output, training_tokens=16 * 128), model=embedded_model
        )
    cache_activations(
        CacheRequest(output_path=output, training_tokens=16 * 128, overwrite=True),
        model=embedded_model,
    )
    assert not (output / "stale.txt").exists()
    assert open_cache(output)[1].contexts == 16
    assert not output.with_name("acts.partial").exists()


def test_overwrite_never_deletes_a_folder_that_is_not_a_cache(
    tmp_path: Path, embedded_model: HookedSAETransformer
) -> None:
    output = tmp_path / "acts"
    output.mkdir()
    (output / "notes.txt").write_text("the user's own file")
    with pytest.raises(FileExistsError, match="holds no activation cache"):
        cache_activations(
            CacheRequest(output_path=output, training_tokens=16 * 128, overwrite=True),
            model=embedded_model,
        )
    assert (output / "notes.txt").read_text() == "the user's own file"


def test_a_folder_that_is_not_a_cache_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no activation cache"):
        open_cache(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no saved dataset"):
        open_cache(tmp_path)
    datasets.Dataset.from_dict({"tokens": [[1, 2, 3]]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(ValueError, match="exactly one hook's activations"):
        open_cache(tmp_path / "text")


def test_a_request_must_match_the_cache(embedded_cache: Path) -> None:
    request = request_from_cache(
        embedded_cache, architecture="standard", train_batch_size_tokens=128
    )
    cfg, _ = build_runner_config(request)
    assert (cfg.hook_name, cfg.use_cached_activations) == (HOOK, True)
    assert cfg.cached_activations_path == str(embedded_cache)
    # --tokens defaults to one pass over the cache's usable tokens, in whole batches.
    assert cfg.training_tokens == CONTEXTS * 127 // 128 * 128
    # the run records the dataset the cache was written from, and takes no other
    assert (cfg.dataset_path, cfg.streaming) == ("sae-variants:austen", False)
    with pytest.raises(ValueError, match="trains on the cached contexts"):
        build_runner_config(request_from_cache(embedded_cache, dataset_path="other.jsonl"))
    with pytest.raises(ValueError, match="holds contexts of 128 tokens"):
        build_runner_config(request_from_cache(embedded_cache, context_size=64))
    with pytest.raises(ValueError, match=r"holds blocks\.1\.hook_resid_post .* asks for blocks\.2"):
        build_runner_config(request_from_cache(embedded_cache, layer=2))
    with pytest.raises(ValueError, match="was written with 'tiny-gemma2-austen'"):
        build_runner_config(
            TrainRequest(model_name="gemma-2-2b", activations_path=str(embedded_cache))
        )


TRAIN_FROM_CACHE = {
    "standard": {},
    "topk": {"k": 16},
    "matryoshka_batchtopk": {"k": 16, "matryoshka_widths": [128, 256]},
    "cubic_ortho": {},
    "qucl": {},
    "multiscale_norm": {},
    "seq_contrastive": {},
    "position_aware": {},
}


@pytest.mark.parametrize("architecture", list(TRAIN_FROM_CACHE))
def test_every_architecture_trains_from_a_cache(
    architecture: str, embedded_cache: Path, tmp_path: Path
) -> None:
    result = train_sae(
        request_from_cache(
            embedded_cache,
            architecture=architecture,
            d_sae=256,
            # 50 steps (the demo preset's warm-up): over a pass and a quarter of the cache.
            training_tokens=50 * 1024,
            train_batch_size_tokens=1024,
            sae_options=TRAIN_FROM_CACHE[architecture],
            output_path=tmp_path / "sae",
        )
    )
    assert result.runner_config.use_cached_activations
    saved = SAE.load_from_disk(str(tmp_path / "sae"))
    assert saved.cfg.metadata.hook_name == HOOK
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def test_cache_then_train_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts = tmp_path / "acts"
    assert cli.main(["cache", "--tokens", str(320 * 128), "--output", str(acts)]) == 0
    out = capsys.readouterr().out
    assert f"cached 320 contexts x 128 tokens of {HOOK}" in out
    assert cli.main(["cache", "--tokens", "2048", "--output", str(acts)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    sae = tmp_path / "seq"
    code = cli.main(
        [
            "train",
            "--activations",
            str(acts),
            "--architecture",
            "seq_contrastive",
            "--batch-size",
            "1024",
            "--tokens",
            str(50 * 1024),
            "--d-sae",
            "256",
            "--output",
            str(sae),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"activations from the cache at {acts}" in out
    assert f"hook {HOOK}" in out
    assert SAE.load_from_disk(str(sae)).cfg.architecture() == "seq_contrastive"


def test_overwrite_refuses_a_folder_that_is_not_a_cache(tmp_path: Path) -> None:
    precious = tmp_path / "runs"
    precious.mkdir()
    (precious / "cfg.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds no activation cache"):
        cache_activations(CacheRequest(output_path=precious, training_tokens=4096, overwrite=True))
    assert (precious / "cfg.json").exists()


def test_a_dataset_that_runs_out_is_reported_not_hidden(
    tmp_path: Path, embedded_model: HookedSAETransformer
) -> None:
    few = datasets.Dataset.from_dict({"tokens": [[2] + [100 + i] * 127 for i in range(20)]})
    info = cache_activations(
        CacheRequest(output_path=tmp_path / "acts", training_tokens=32 * 128),
        model=embedded_model,
        dataset=few,
    ).info
    assert (info.contexts, info.distinct_contexts) == (32, 20)


def test_a_cache_smaller_than_the_sequence_pool_is_refused(
    tmp_path: Path, embedded_model: HookedSAETransformer
) -> None:
    small = tmp_path / "small"
    cache_activations(
        CacheRequest(output_path=small, training_tokens=16 * 128), model=embedded_model
    )
    request = request_from_cache(
        small,
        architecture="seq_contrastive",
        d_sae=256,
        training_tokens=50 * 1024,
        train_batch_size_tokens=1024,
        output_path=tmp_path / "sae",
    )
    with pytest.raises(ValueError, match="fewer than the pool's"):
        train_sae(request, model=embedded_model)

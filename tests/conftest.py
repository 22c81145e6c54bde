"""Shared fixtures. Tests never touch the network: the hub flags are set before anything imports
huggingface_hub, and every model is built locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path

import pytest
import torch
from sae_lens import HookedSAETransformer

from sae_variants.integrations.tiny_gemma2 import load_tiny_gemma2, random_tiny_gemma2_config
from sae_variants.integrations.tiny_gemma2.model import build_model
from sae_variants.integrations.training import TrainRequest, TrainResult, train_sae


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def random_gemma2() -> HookedSAETransformer:
    """A random-weight Gemma-2-architecture model (d_model 64, vocab 512): fast, no tokenizer."""
    cfg = random_tiny_gemma2_config(seed=0)
    model = build_model(cfg)
    with torch.no_grad():
        model.embed.W_E.mul_(cfg.d_model**0.5)
    return model


@pytest.fixture(scope="session")
def embedded_model() -> HookedSAETransformer:
    return load_tiny_gemma2()


@pytest.fixture(scope="session")
def trained_standard_sae(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A small standard SAE trained on the embedded model through the full pipeline (~20 s)."""
    output = tmp_path_factory.mktemp("sae") / "standard"
    request = TrainRequest(
        architecture="standard",
        d_sae=512,
        training_tokens=163_840,
        train_batch_size_tokens=2048,
        sae_options={"l1_coefficient": 2.0},
        output_path=Path(output),
    )
    return train_sae(request)

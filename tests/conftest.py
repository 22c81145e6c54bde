"""Shared fixtures. Tests never touch the network: the hub flags are set before anything imports
huggingface_hub, and every model is built locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from sae_lens import (
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    LoggingConfig,
)
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

from sae_variants.integrations.models.tiny_gemma2 import load_tiny_gemma2, random_tiny_gemma2_config
from sae_variants.integrations.models.tiny_gemma2.model import build_model
from sae_variants.integrations.training.pipeline import TrainResult, train_sae
from sae_variants.integrations.training.request import TrainRequest
from sae_variants.integrations.training.runner import VariantTrainingRunner


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


class CheckpointedRuns:
    """24 steps of 128 tokens through the variant runner (SAELens's, bound to the run and the
    optimizer) on the random model, writing one mid-run checkpoint under ``tmp_path / "ckpt"``,
    optionally resuming from a checkpoint."""

    def __init__(self, model: HookedSAETransformer, tmp_path: Path) -> None:
        self.model, self.tmp_path = model, tmp_path
        self.tokens = torch.randint(
            1, model.cfg.d_vocab, (256, 16), generator=torch.Generator().manual_seed(2)
        )

    def run(
        self, sae_cfg: TrainingSAEConfig, output: str, resume_from: str | None = None
    ) -> TrainingSAE[Any]:
        cfg = LanguageModelSAERunnerConfig(
            sae=sae_cfg,
            model_name="random-tiny-gemma2",
            hook_name="blocks.1.hook_resid_post",
            is_dataset_tokenized=True,
            streaming=False,
            context_size=16,
            training_tokens=24 * 128,
            train_batch_size_tokens=128,
            store_batch_size_prompts=8,
            n_batches_in_buffer=8,
            lr=1e-3,
            n_checkpoints=1,
            logger=LoggingConfig(log_to_wandb=False),
            checkpoint_path=str(self.tmp_path / "ckpt"),
            output_path=str(self.tmp_path / output),
            exclude_special_tokens=False,
            verbose=False,
            model_from_pretrained_kwargs={},
            resume_from_checkpoint=resume_from,
        )
        runner = VariantTrainingRunner(
            cfg,
            override_dataset=Dataset.from_dict({"tokens": self.tokens.tolist()}),
            override_model=self.model,
        )
        runner.run()
        return runner.sae

    def mid_run_checkpoints(self) -> list[Path]:
        """The checkpoint folders written so far, oldest first (not the final one)."""
        return sorted(
            p.parent
            for p in (self.tmp_path / "ckpt").rglob("sae_weights.safetensors")
            if not p.parent.name.startswith("final")
        )


@pytest.fixture
def checkpointed_runs(random_gemma2: HookedSAETransformer, tmp_path: Path) -> CheckpointedRuns:
    return CheckpointedRuns(random_gemma2, tmp_path)

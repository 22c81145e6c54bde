"""The shared variant contract, parametrized over every architecture this package registers.

SAELens's own ``standard`` runs through the same checks so the contract is proven before the
first variant lands. Each check is one a spliced or evaluated SAE relies on:

- encode works on ``[batch, d_in]`` and ``[batch, pos, d_in]``;
- in eval mode, encode is deterministic and never mixes rows of a batch;
- ``decode(encode(x))`` is the full reconstruction (SAELens splicing and evals call exactly that);
- save -> ``SAE.load_from_disk`` gives identical outputs;
- splicing with the error term reproduces the clean logits (and without it, changes them);
- a few steps through SAELens's runner (the variant runner, its subclass) give a finite,
  decreasing loss.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from sae_lens import (
    SAE,
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    LoggingConfig,
)
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAE
from training_steps import step_input

import sae_variants
from sae_variants.integrations.training.runner import VariantTrainingRunner

HOOK = "blocks.1.hook_resid_post"
D_IN = 64
D_SAE = 256
CONTEXT = 32

CONTRACT_ARCHITECTURES = ["standard", *(v.name for v in sae_variants.registered_variants())]


PROBE_POSITIONS = torch.arange(8 * CONTEXT) % CONTEXT
"""The probe is 8 whole contexts, row-major: these are its rows' positions."""


def _takes_positions(sae: Any) -> bool:
    return "positions" in inspect.signature(sae.encode).parameters


def _encode(sae: Any, x: torch.Tensor, rows: Any = slice(None)) -> torch.Tensor:
    """``sae.encode`` on 2-D rows, with their positions for SAEs whose documented rule for
    [batch, d_in] input is that the caller passes positions (position-aware variants)."""
    if _takes_positions(sae):
        return sae.encode(x, positions=PROBE_POSITIONS[rows])
    return sae.encode(x)


def _loss(sae: TrainingSAE[Any], x: torch.Tensor) -> float:
    sae.eval()
    with torch.no_grad():
        return sae.training_forward_pass(step_input(sae, x, CONTEXT)).loss.item()


@pytest.fixture(scope="module", params=CONTRACT_ARCHITECTURES)
def trained(
    request: pytest.FixtureRequest,
    random_gemma2: HookedSAETransformer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Train each architecture briefly through SAELens's runner, then load what it saved."""
    architecture: str = request.param
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, random_gemma2.cfg.d_vocab, (512, CONTEXT), generator=generator)
    _, cache = random_gemma2.run_with_cache(tokens[:8], names_filter=HOOK)
    probe = cache[HOOK].reshape(-1, D_IN)

    training_cfg_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    output = tmp_path_factory.mktemp(architecture)
    cfg = LanguageModelSAERunnerConfig(
        sae=training_cfg_class(d_in=D_IN, d_sae=D_SAE),
        model_name="random-tiny-gemma2",
        hook_name=HOOK,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=CONTEXT,
        training_tokens=40 * 256,
        train_batch_size_tokens=256,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        lr=3e-3,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=str(output / "ckpt"),
        output_path=str(output / "sae"),
        exclude_special_tokens=False,
        verbose=False,
        model_from_pretrained_kwargs={},
    )
    # No override_sae: SAELens itself builds the SAE from the config through its registry; the
    # variant runner binds the config to the run and, for a sequence layout, serves its batches.
    runner = VariantTrainingRunner(
        cfg,
        override_dataset=Dataset.from_dict({"tokens": tokens.tolist()}),
        override_model=random_gemma2,
    )
    sae = runner.sae
    assert type(sae) is SAE_TRAINING_CLASS_REGISTRY[architecture][0]
    loss_before = _loss(sae, probe)
    runner.run()
    return {
        "architecture": architecture,
        "training_sae": sae,
        "probe": probe,
        "tokens": tokens[:4],
        "loss_before": loss_before,
        "loss_after": _loss(sae, probe),
        "path": output / "sae",
        "loaded": SAE.load_from_disk(str(output / "sae")).eval(),
    }


def test_training_loss_is_finite_and_decreases(trained: dict[str, Any]) -> None:
    before, after = trained["loss_before"], trained["loss_after"]
    assert torch.isfinite(torch.tensor([before, after])).all()
    assert after < 0.9 * before, f"loss went {before:.4f} -> {after:.4f}"


def test_encode_accepts_2d_and_3d(trained: dict[str, Any]) -> None:
    sae, probe = trained["loaded"], trained["probe"]
    flat = _encode(sae, probe)
    assert flat.shape == (probe.shape[0], D_SAE)
    stacked = sae.encode(probe.reshape(8, CONTEXT, D_IN))
    assert stacked.shape == (8, CONTEXT, D_SAE)
    torch.testing.assert_close(stacked.reshape(-1, D_SAE), flat)
    if _takes_positions(sae):  # never guess positions for 2-D input
        with pytest.raises(ValueError, match="positions"):
            sae.encode(probe)


def test_eval_encode_is_deterministic_and_row_independent(trained: dict[str, Any]) -> None:
    sae, probe = trained["loaded"], trained["probe"]
    full = _encode(sae, probe)
    torch.testing.assert_close(_encode(sae, probe), full, rtol=0, atol=0)
    for rows in (slice(0, 1), slice(5, 9), slice(100, 101)):
        torch.testing.assert_close(_encode(sae, probe[rows], rows), full[rows])
    shuffled = torch.randperm(probe.shape[0])
    torch.testing.assert_close(_encode(sae, probe[shuffled], shuffled), full[shuffled])


def test_decode_of_encode_is_the_full_reconstruction(trained: dict[str, Any]) -> None:
    sae, probe = trained["training_sae"], trained["probe"]
    contexts = probe.reshape(8, CONTEXT, D_IN)  # what splicing passes
    sae.eval()
    with torch.no_grad():
        out = sae.training_forward_pass(step_input(sae, probe, CONTEXT))
        torch.testing.assert_close(out.sae_out, sae.decode(_encode(sae, probe)))
        torch.testing.assert_close(sae(contexts), sae.decode(sae.encode(contexts)))
        torch.testing.assert_close(sae(contexts).reshape(-1, D_IN), out.sae_out)
    loaded = trained["loaded"]
    torch.testing.assert_close(loaded(contexts), loaded.decode(loaded.encode(contexts)))


def test_saved_sae_loads_with_identical_outputs(trained: dict[str, Any], tmp_path: Path) -> None:
    training_sae, loaded, probe = trained["training_sae"], trained["loaded"], trained["probe"]
    training_sae.eval()
    with torch.no_grad():
        torch.testing.assert_close(_encode(loaded, probe), _encode(training_sae, probe))
        torch.testing.assert_close(
            loaded.decode(_encode(loaded, probe)), training_sae.decode(_encode(training_sae, probe))
        )
    loaded.save_model(str(tmp_path))
    again = SAE.load_from_disk(str(tmp_path)).eval()
    assert type(again) is type(loaded)
    torch.testing.assert_close(_encode(again, probe), _encode(loaded, probe), rtol=0, atol=0)


def test_splicing_with_error_term_reproduces_clean_logits(
    trained: dict[str, Any], random_gemma2: HookedSAETransformer
) -> None:
    sae, tokens = trained["loaded"], trained["tokens"]
    assert sae.cfg.metadata.hook_name == HOOK
    with torch.no_grad():
        clean = random_gemma2(tokens)
        spliced = random_gemma2.run_with_saes(tokens, saes=[sae], use_error_term=True)
        replaced = random_gemma2.run_with_saes(tokens, saes=[sae], use_error_term=False)
    torch.testing.assert_close(spliced, clean, atol=1e-4, rtol=1e-4)
    assert (replaced - clean).abs().max() > 1e-3, "without the error term the SAE must matter"

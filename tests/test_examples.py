"""The example a user copies first runs as written: a plain SAELens runner config with a variant
inside, for a per-token and a sequence-aware variant."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from sae_lens import SAE

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("architecture", ["cubic_ortho", "seq_contrastive"])
def test_training_from_a_plain_saelens_config_runs_as_written(
    architecture: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / architecture
    _example("train_with_saelens").main(
        ["--architecture", architecture, "--tokens", str(10 * 4096), "--output", str(output)]
    )
    saved_as = "standard" if architecture == "cubic_ortho" else architecture
    assert (
        f"({saved_as} on tiny-gemma2-austen @ blocks.1.hook_resid_post)" in capsys.readouterr().out
    )
    sae = SAE.load_from_disk(str(output))
    assert sae.cfg.architecture() == saved_as
    # The runner bound the config to the run: the paper's warm-up follows the LR warm-up (2 steps).
    details = sae.cfg.metadata.training_architecture_details
    warm_up = (
        "ortho_warm_up_steps" if architecture == "cubic_ortho" else "contrastive_warm_up_steps"
    )
    assert details[warm_up] == 2

"""``sae-variants export``: every variant saved at the embedded model's hook becomes a stock SAELens
SAE that SAELens loads without this package, measured on held-out rows; paths are checked first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainingSAEConfig

from sae_variants import (
    MultiScaleNormTrainingSAE,
    MultiScaleNormTrainingSAEConfig,
    PositionAwareTrainingSAE,
    PositionAwareTrainingSAEConfig,
    QuCLTrainingSAE,
    QuCLTrainingSAEConfig,
    SeqContrastiveTrainingSAE,
    SeqContrastiveTrainingSAEConfig,
)
from sae_variants.integrations import cli
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME

HOOK = "blocks.1.hook_resid_post"
VARIANTS: dict[str, tuple[type, TrainingSAEConfig]] = {
    "qucl": (QuCLTrainingSAE, QuCLTrainingSAEConfig(d_in=256, d_sae=512, quantization_bits=16)),
    "multiscale_norm": (
        MultiScaleNormTrainingSAE,
        MultiScaleNormTrainingSAEConfig(d_in=256, d_sae=512),
    ),
    "seq_contrastive": (
        SeqContrastiveTrainingSAE,
        SeqContrastiveTrainingSAEConfig(d_in=256, d_sae=512),
    ),
    "position_aware": (
        PositionAwareTrainingSAE,
        PositionAwareTrainingSAEConfig(d_in=256, d_sae=512, position_context=128),
    ),
}


def _saved(path: Path, architecture: str) -> Path:
    sae_class, cfg = VARIANTS[architecture]
    cfg.metadata.model_name = EMBEDDED_MODEL_NAME
    cfg.metadata.hook_name = HOOK
    cfg.metadata.context_size = 128
    torch.manual_seed(0)
    sae = sae_class(cfg)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    sae.save_inference_model(path)
    return path


def _export(*argv: str) -> int:
    return cli.main(["export", *argv, "--contexts", "8", "--json"])


@pytest.mark.parametrize("architecture", list(VARIANTS))
def test_every_variant_exports_to_a_stock_sae_with_its_figures(
    architecture: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved(tmp_path / architecture, architecture)
    assert _export(str(source), str(tmp_path / "stock"), "--tolerance", "1") == 0
    summary = json.loads(capsys.readouterr().out)
    expected = "standard" if architecture == "qucl" else "jumprelu"
    assert summary["architecture"] == expected
    assert summary["method"] == ("fold" if architecture == "qucl" else "distilled")
    saved = json.loads((tmp_path / "stock" / "cfg.json").read_text())
    assert saved["architecture"] == expected
    assert saved["metadata"]["sae_variants_export"]["from_architecture"] == architecture
    assert saved["metadata"]["hook_name"] == HOOK
    assert summary["evaluated_rows"] > 100
    assert not list(tmp_path.glob(".stock.*")), "no staging folder is left behind"


def test_saelens_alone_loads_an_export(tmp_path: Path) -> None:
    source = _saved(tmp_path / "msn", "multiscale_norm")
    assert _export(str(source), str(tmp_path / "stock"), "--tolerance", "1") == 0
    probe = (
        "import sys; from sae_lens import SAE; "
        f"sae = SAE.load_from_disk({str(tmp_path / 'stock')!r}); "
        "assert 'sae_variants' not in sys.modules; print(type(sae).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "JumpReLUSAE"


def test_export_standard_is_export_to_standard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved(tmp_path / "seq", "seq_contrastive")
    argv = ["export-standard", str(source), str(tmp_path / "std"), "--contexts", "8"]
    assert cli.main([*argv, "--tolerance", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "standard"


def test_beyond_the_tolerance_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved(tmp_path / "pa", "position_aware")
    assert _export(str(source), str(tmp_path / "stock"), "--tolerance", "0") == 2
    assert "changes explained variance by" in capsys.readouterr().err
    assert not (tmp_path / "stock").exists()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("same", "is the input SAE"),
        ("file", "is a file"),
        ("other", "holds no SAE"),
        ("sae", "pass --overwrite"),
    ],
)
def test_outputs_are_checked_before_any_work(
    output: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved(tmp_path / "qucl", "qucl")
    targets: dict[str, Any] = {
        "same": source,
        "file": tmp_path / "afile",
        "other": tmp_path / "notes",
        "sae": _saved(tmp_path / "existing", "seq_contrastive"),
    }
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert _export(str(source), str(targets[output])) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "notes" / "a.txt").exists()


def test_overwrite_replaces_an_sae(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _saved(tmp_path / "qucl", "qucl")
    existing = _saved(tmp_path / "existing", "seq_contrastive")
    argv = [str(source), str(existing), "--tolerance", "1", "--overwrite"]
    assert _export(*argv) == 0
    capsys.readouterr()
    assert json.loads((existing / "cfg.json").read_text())["architecture"] == "standard"


def test_a_standard_sae_has_nothing_to_export(
    trained_standard_sae, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _export(str(trained_standard_sae.output_path), str(tmp_path / "x")) == 2
    assert "already SAELens 'standard'" in capsys.readouterr().err

"""``sae-variants export-standard`` on a QuCL SAE attached to the embedded model's hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.standard_sae import StandardSAE

from sae_variants import QuCLTrainingSAE, QuCLTrainingSAEConfig
from sae_variants.integrations import cli
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME


def _saved_qucl(path: Path, bits: int) -> Path:
    cfg = QuCLTrainingSAEConfig(d_in=256, d_sae=512, quantization_bits=bits)
    cfg.metadata.model_name = EMBEDDED_MODEL_NAME
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    cfg.metadata.context_size = 128
    sae = QuCLTrainingSAE(cfg)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    sae.save_inference_model(path)
    return path


def test_export_standard_saves_a_standard_sae_and_reports_the_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved_qucl(tmp_path / "qucl", bits=16)
    assert cli.main(["export-standard", str(source), str(tmp_path / "std"), "--contexts", "2"]) == 0
    assert "explained variance" in capsys.readouterr().out
    assert isinstance(SAE.load_from_disk(str(tmp_path / "std")), StandardSAE)
    saved = json.loads((tmp_path / "std" / "cfg.json").read_text())
    assert saved["metadata"]["load_with"].startswith("sae_lens alone")


def test_export_standard_refuses_beyond_the_tolerance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved_qucl(tmp_path / "qucl", bits=1)
    code = cli.main(
        [
            "export-standard",
            str(source),
            str(tmp_path / "std"),
            "--contexts",
            "2",
            "--tolerance",
            "0",
        ]
    )
    assert code == 2
    assert "changes explained variance by" in capsys.readouterr().err
    assert not (tmp_path / "std").exists()


def test_export_standard_refuses_other_architectures(
    trained_standard_sae, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["export-standard", str(trained_standard_sae.output_path), str(tmp_path / "x")])
    assert code == 2
    assert "takes a 'qucl' SAE" in capsys.readouterr().err

"""`sae-variants evaluate`: SAELens run_evals on held-out Austen, and the load errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sae_variants.integrations import cli
from sae_variants.integrations.evaluation.evaluate import evaluate_sae, load_sae

EXPECTED = {
    "explained_variance",
    "l0",
    "l1",
    "dead_fraction",
    "dense_fraction",
    "ce_loss_score",
    "kl_div_score",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_zero_ablated",
}


def test_evaluation_reports_every_metric(trained_standard_sae, embedded_model) -> None:
    result = evaluate_sae(trained_standard_sae.output_path, model=embedded_model, n_batches=2)
    assert set(result.metrics) >= EXPECTED
    assert all(math.isfinite(v) for v in result.metrics.values())
    m = result.metrics
    assert 0.0 < m["explained_variance"] <= 1.0
    assert 0.0 < m["l0"] < 512
    assert 0.0 <= m["dead_fraction"] <= 1.0
    # Clean < spliced < zero-ablated CE, and the score is their documented ratio.
    assert m["ce_loss_clean"] < m["ce_loss_spliced"] < m["ce_loss_zero_ablated"]
    ratio = (m["ce_loss_zero_ablated"] - m["ce_loss_spliced"]) / (
        m["ce_loss_zero_ablated"] - m["ce_loss_clean"]
    )
    assert m["ce_loss_score"] == pytest.approx(ratio, rel=1e-3)


def test_cli_json_output(trained_standard_sae, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.main(["evaluate", str(trained_standard_sae.output_path), "--json", "--batches", "1"])
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["metrics"]) >= EXPECTED
    assert payload["hook_name"] == "blocks.1.hook_resid_post"


def test_a_path_without_an_sae_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match="holds no saved SAE"):
        load_sae(tmp_path)
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "holds no saved SAE" in capsys.readouterr().err


def test_an_unregistered_architecture_is_a_clear_error(
    trained_standard_sae, tmp_path: Path
) -> None:
    source = trained_standard_sae.output_path
    for item in source.iterdir():
        if item.is_file():
            (tmp_path / item.name).write_bytes(item.read_bytes())
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["architecture"] = "made_up_arch"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'made_up_arch', which is not registered"):
        load_sae(tmp_path)
    # what a variant's cfg.json records is quoted, so the user learns which package to install
    cfg["metadata"]["load_with"] = "pip install 'sae-variants>=0.1.0', then `import sae_variants`"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"its cfg.json says: pip install 'sae-variants>=0\.1\.0'"):
        load_sae(tmp_path)

"""SAEBench's core evaluation of every architecture saved here, offline on the embedded model.

The route itself is marked ``saebench`` (out of the default suite): it needs SAEBench installed
without its pins (``pip install --no-deps sae-bench==0.6.0 && pip install tabulate pandas
pydantic``). Without it, the command says how to install it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from sae_variants.integrations import cli
from sae_variants.integrations.evaluation import evaluate_sae
from sae_variants.integrations.training.pipeline import train_sae
from sae_variants.integrations.training.request import TrainRequest

ARCHITECTURES = ["cubic_ortho", "qucl", "multiscale_norm", "seq_contrastive", "position_aware"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("saebench") / request.param
    train_sae(
        TrainRequest(
            architecture=request.param,
            d_sae=512,
            training_tokens=65_536,
            lr_warm_up_steps=8,
            train_batch_size_tokens=1024,
            output_path=output,
        )
    )
    return output


@pytest.mark.saebench
def test_saebench_core_eval_runs_offline_and_agrees_with_saelens(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["evaluate", str(trained), "--saebench", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    metrics = out["metrics"]
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    saved = json.loads(Path(out["result_file"]).read_text())
    assert (saved["sae_lens_release_id"], saved["sae_lens_id"]) == ("sae_variants", trained.name)
    assert saved["sae_bench_commit_hash"] == "unknown"
    # The same SAE on the same held-out text through SAELens's run_evals: the sparsity agrees.
    ours = evaluate_sae(trained, n_batches=8).metrics
    assert metrics["l0"] == pytest.approx(ours["l0"], rel=0.05)
    assert metrics["ce_loss_score"] == pytest.approx(ours["ce_loss_score"], abs=0.02)


def test_without_saebench_the_command_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sae_bench", None)
    monkeypatch.setitem(sys.modules, "sae_bench.evals.core", None)
    (tmp_path / "sae").mkdir()
    assert cli.main(["evaluate", str(tmp_path / "sae"), "--saebench", str(tmp_path / "o")]) == 2
    assert "pip install --no-deps sae-bench==0.6.0" in capsys.readouterr().err

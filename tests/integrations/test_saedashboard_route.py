"""The route from a trained variant to an SAEDashboard page: train, export to a stock SAELens SAE,
render it in the second environment SAEDashboard needs (``examples/saedashboard_env.sh``).

Marked ``dashboard`` (out of the default suite): building the environment takes about three
minutes and 2 GB. ``SAE_VARIANTS_DASHBOARD_ENV=DIR`` reuses an environment already built.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from sae_variants.integrations.evaluation.evaluate import load_sae
from sae_variants.integrations.export import export_saved_sae
from sae_variants.integrations.models import load_model
from sae_variants.integrations.training.datasets import austen_contexts
from sae_variants.integrations.training.pipeline import train_sae
from sae_variants.integrations.training.request import TrainRequest

pytestmark = pytest.mark.dashboard

ROOT = Path(__file__).resolve().parents[2]
FEATURES = [0, 1, 2, 3, 100]


@pytest.fixture(scope="module")
def dashboard_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reused = os.environ.get("SAE_VARIANTS_DASHBOARD_ENV")
    env_dir = Path(reused) if reused else tmp_path_factory.mktemp("dash") / "env"
    if not reused:
        subprocess.run(
            ["bash", str(ROOT / "examples" / "saedashboard_env.sh"), str(env_dir)], check=True
        )
    return env_dir / "bin" / "python"


def test_a_trained_variant_becomes_a_feature_page(dashboard_python: Path, tmp_path: Path) -> None:
    run = train_sae(
        TrainRequest(
            architecture="multiscale_norm",
            d_sae=512,
            training_tokens=65_536,
            train_batch_size_tokens=1024,
            output_path=tmp_path / "msn",
        )
    )
    export = export_saved_sae(
        run.output_path, tmp_path / "stock", n_contexts=64, max_explained_variance_change=1.0
    )
    assert export.sae.cfg.architecture() == "jumprelu"
    page = tmp_path / "page.html"
    features = ",".join(map(str, FEATURES))
    refused = subprocess.run(
        [
            str(dashboard_python),
            str(ROOT / "examples" / "saedashboard_feature_page.py"),
            str(run.output_path),
            str(page),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert refused.returncode != 0
    assert "run `sae-variants export" in refused.stderr
    done = subprocess.run(
        [
            str(dashboard_python),
            str(ROOT / "examples" / "saedashboard_feature_page.py"),
            str(tmp_path / "stock"),
            str(page),
            "--features",
            features,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["architecture"] == "jumprelu"
    assert summary["features"] == FEATURES
    html = page.read_text()
    assert "DASHBOARD_DATA" in html

    # Each feature's strongest activation, encoded here independently, is on its page (top
    # examples come from positions 6 .. seq-5, where SAEDashboard's 5-token context fits).
    stock = load_sae(tmp_path / "stock")
    model = load_model(stock.cfg.metadata.model_name)
    held_out = torch.as_tensor(austen_contexts("held_out", model.tokenizer, 128)["tokens"])
    tokens = held_out[torch.linspace(0, len(held_out) - 1, 64).long()]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=stock.cfg.metadata.hook_name)
        acts = stock.encode(cache[stock.cfg.metadata.hook_name])[..., FEATURES]
    acts[tokens == model.tokenizer.bos_token_id] = 0
    acts = acts[:, 6:-5]
    for i, feature in enumerate(FEATURES):
        top = round(float(acts[..., i].max()), 4)
        if top > 0:
            assert f'"featAct": {top}' in html or f'"featAct":{top}' in html, (feature, top)

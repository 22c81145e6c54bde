"""The README demo, end to end (slow: several minutes). Run with `python -m pytest -m slow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae_variants.integrations import cli


@pytest.mark.slow
def test_demo_meets_the_quality_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["l0"] <= 64
    assert metrics["explained_variance"] >= 0.80
    assert metrics["ce_loss_score"] >= 0.90

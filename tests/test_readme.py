"""The README's quickstart runs as written: its Python blocks, in order, in a fresh folder (only
the token budget is cut, so the test takes seconds rather than minutes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BUDGET = "training_tokens=1_000_000"


def quickstart_blocks() -> list[str]:
    """The ```python blocks of the README's "Quickstart" section."""
    text = README.read_text()
    section = re.search(r"^## Quickstart\n(.*?)^## ", text, flags=re.S | re.M)
    assert section, "the README has no '## Quickstart' section"
    return re.findall(r"^```python\n(.*?)^```", section.group(1), flags=re.S | re.M)


def test_the_quickstart_trains_splices_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = quickstart_blocks()
    assert len(blocks) >= 2, "the quickstart trains a variant and splices it"
    assert BUDGET in blocks[0], f"the training block's budget ({BUDGET}) is what this test cuts"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    # 50 steps of 4096 tokens: longer than the block's 48-step warm-up, as the full run is.
    exec(blocks[0].replace(BUDGET, "training_tokens=204_800"), namespace)
    for block in blocks[1:]:
        exec(block, namespace)
    assert (tmp_path / "sae_runs" / "quickstart" / "cfg.json").is_file()
    clean = namespace["model"](namespace["tokens"])  # type: ignore[operator]
    torch.testing.assert_close(namespace["logits"], clean, atol=1e-4, rtol=1e-4)
    assert not torch.equal(namespace["ablated"], clean)  # type: ignore[arg-type]

"""Results kept as JSON beside the work that produced them, reused only under the same key.

The comparison keeps three kinds (an SAE's evaluation, a synthetic score, the benchmark table);
each is read back when its key (the resolved configs and settings that produced it) is unchanged,
so an interrupted or repeated comparison redoes nothing, and a changed setting redoes its part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _canonical(key: Any) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def load_result(file: Path, key: Any) -> Any | None:
    """The value stored in ``file`` under ``key`` (compared as canonical JSON), or None."""
    if not file.exists():
        return None
    stored = json.loads(file.read_text())
    return stored["value"] if stored.get("key") == _canonical(key) else None


def store_result(file: Path, key: Any, value: Any) -> None:
    """Write ``value`` (JSON-able; tensors and numpy scalars as floats) to ``file`` under ``key``."""
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"key": _canonical(key), "value": value}, indent=1, default=float))

"""The dependency floors in ``pyproject.toml`` are the versions ``.ci/run-lowest`` tests: every
direct dependency has a floor, and ``.ci/lowest-constraints.txt`` pins exactly that floor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Python 3.10 (the lowest-versions job) has no tomllib; the default job (3.11) runs this test.
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)$")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _floors() -> dict[str, str | None]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    floors: dict[str, str | None] = {}
    for requirement in requirements:
        name, spec = REQUIREMENT.match(requirement).groups()  # type: ignore[union-attr]
        if "==" in spec:  # pinned (ruff): nothing lower is allowed, nothing to test
            continue
        floor = re.search(r">=\s*([\w.]+)", spec)
        floors[_normalized(name)] = floor.group(1) if floor else None
    return floors


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normalized(name)] = version.strip()
    return pins


def test_every_dependency_has_a_floor_and_the_lowest_job_tests_exactly_it() -> None:
    floors = _floors()
    assert all(floors.values()), {name for name, floor in floors.items() if not floor}
    assert _constraints() == floors

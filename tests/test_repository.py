"""The repository refers only to itself: every file a comment, docstring or doc page cites exists
in it, and nothing cites the issue tracker (history belongs in commit messages and docs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("docs", "examples", "integrations", "sae_variants", "tests", ".ci")
# This module's own examples of bad citations are left out.
CODE = [
    p
    for top in ("sae_variants", "integrations", "examples", "docs", "tests")
    for p in (ROOT / top).rglob("*.py")
    if p != Path(__file__).resolve()
]
PAGES = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]

# A repository path: a top-level folder of this repo, then path characters, ending in a file name
# with an extension (placeholders such as <name> or {arch} are not citations).
_TOPS = "|".join(map(re.escape, TOP_LEVEL))
REPO_PATH = re.compile(rf"(?<![\w./:-])((?:\.\./)*(?:{_TOPS})/[\w./=-]*\w\.\w+)")
OUTSIDE = re.compile(r"\.\./shared|(?<![\w/])shared/(?:spec|seeds)")
BARE_MODULE = re.compile(r"``(\w+\.py)``")
ISSUE = re.compile(r"\bissues? \d+|#\d{2,}\b(?![\w-])")


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


MODULE_NAMES = {p.name for p in CODE}


@pytest.mark.parametrize("path", CODE + PAGES, ids=_relative)
def test_every_cited_file_is_in_the_repository(path: Path) -> None:
    text = path.read_text()
    missing = [
        m for m in REPO_PATH.findall(text) if not (ROOT / re.sub(r"^(?:\.\.?/)+", "", m)).exists()
    ]
    assert not missing, f"{_relative(path)} cites files that are not in the repository: {missing}"
    assert not OUTSIDE.findall(text), f"{_relative(path)} cites the workplace's shared/ folder"
    if path.suffix == ".py":
        unknown = [m for m in BARE_MODULE.findall(text) if m not in MODULE_NAMES]
        assert not unknown, f"{_relative(path)} cites modules that do not exist: {unknown}"


@pytest.mark.parametrize("path", [p for p in CODE if "tests" not in p.parts], ids=_relative)
def test_code_never_cites_an_issue(path: Path) -> None:
    found = ISSUE.findall(path.read_text())
    assert not found, f"{_relative(path)} refers to the issue tracker: {found}"


def test_the_checks_would_see_a_bad_citation() -> None:
    assert REPO_PATH.findall("see ``docs/nowhere.md`` and docs/spec.md") == [
        "docs/nowhere.md",
        "docs/spec.md",
    ]
    assert OUTSIDE.findall("from ../shared/spec/seed-algorithms.md")
    assert ISSUE.findall("as issue 7 measured")
    assert not ISSUE.findall("an issue with 7 runs")


def test_the_config_tables_of_the_variant_pages_are_current() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "generate_config_tables", ROOT / "docs" / "generate_config_tables.py"
    )
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.main(["--check"]) == 0, "run python docs/generate_config_tables.py"
    pages = {p.stem: p.read_text() for p in (ROOT / "docs" / "variants").glob("*.md")}
    import sae_variants

    for variant in sae_variants.registered_variants():
        assert f"<!-- config-fields:start {variant.name} -->" in pages[variant.name], variant.name
        assert "| `l1_coefficient` |" in pages[variant.name]


# "docs/spec.md §3 d11" or "docs/spec.md §1.3 ... O6": a section, then an optional lettered
# subsection, resolution (dN) or component label (B/C/O/S/P + number).
SPEC_CITATION = re.compile(r"docs/spec\.md §(\d+(?:\.\d+)?)(?: ([a-g]\b|d\d+|[BCOSP]\d+))?")


def spec_labels(spec_text: str) -> set[str]:
    """Every label the spec defines, as "N", "N.M", "N x", "N dK" or "N Xk" (section-qualified,
    because resolution numbers restart in every section)."""
    labels: set[str] = set()
    section = ""
    for line in spec_text.splitlines():
        heading = re.match(r"#{2,3} §(\d+)(?:\.(\d+))?(?: ([a-g]) —)?", line)
        if heading:
            section = heading.group(1)
            labels.add(section)
            if heading.group(2):
                labels.add(f"{section}.{heading.group(2)}")
            if heading.group(3):
                labels.add(f"{section} {heading.group(3)}")
            continue
        item = re.match(r"\*\*(d\d+|[BCOSP]\d+)\b", line)
        if item and section:
            labels.add(f"{section} {item.group(1)}")
    return labels


SPEC_LABELS = spec_labels((ROOT / "docs" / "spec.md").read_text())


@pytest.mark.parametrize("path", CODE + PAGES, ids=_relative)
def test_every_cited_spec_label_exists(path: Path) -> None:
    cited = {" ".join(filter(None, m)) for m in SPEC_CITATION.findall(path.read_text())}
    missing = sorted(cited - SPEC_LABELS)
    assert not missing, f"{_relative(path)} cites docs/spec.md labels it does not define: {missing}"


def test_the_spec_label_check_would_see_a_bad_label() -> None:
    labels = spec_labels("## §3 X\n### §3 d — Res\n**d2 (§3) — thing.** text\n**C4 — y.**\n")
    assert labels == {"3", "3 d", "3 d2", "3 C4"}
    cited = {" ".join(filter(None, m)) for m in SPEC_CITATION.findall("see docs/spec.md §3 d9")}
    assert cited - labels == {"3 d9"}

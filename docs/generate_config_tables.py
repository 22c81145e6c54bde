"""Write the configuration tables of ``docs/variants/*.md`` from the configs' own docstrings.

    python docs/generate_config_tables.py           # rewrite the tables
    python docs/generate_config_tables.py --check   # exit 1 if a table is out of date

A page holds a block ``<!-- config-fields:start ARCH -->`` ... ``<!-- config-fields:end -->``;
the table lists every field of ARCH's training config beyond SAELens's shared ones, its default,
whether the saved SAE keeps it, and its docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

import sae_variants  # noqa: F401  (registers the variants)
from sae_variants.integrations.training.config_fields import (
    config_field_docs,
    is_architecture_field,
)

PAGES = Path(__file__).parent / "variants"
BLOCK = re.compile(
    r"(<!-- config-fields:start (\w+) -->\n).*?(<!-- config-fields:end -->)", re.DOTALL
)


def config_table(architecture: str) -> str:
    cfg_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    lines = ["| field | default | saved with the SAE | meaning |", "|---|---|---|---|"]
    for field in config_field_docs(cfg_class):
        default = "required" if field.default is dataclasses.MISSING else f"`{field.default!r}`"
        kept = "yes" if is_architecture_field(cfg_class, field.name) else "no (training)"
        lines.append(
            f"| `{field.name}` | {default} | {kept} | {field.doc.replace('|', chr(92) + '|')} |"
        )
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + config_table(m.group(2)) + m.group(3), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="report stale tables instead of writing"
    )
    args = parser.parse_args(argv)
    stale = []
    for page in sorted(PAGES.glob("*.md")):
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(
            "out of date: "
            + ", ".join(map(str, stale))
            + " (run python docs/generate_config_tables.py)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every variant against SAELens's standard, topk and matryoshka_batchtopk: the script form of
`sae-variants compare` (same arguments, same API).

    python examples/compare_variants.py                 # one target L0 (32), about 50 minutes
    python examples/compare_variants.py --quick         # smoke run, under 10 minutes
    python examples/compare_variants.py --sweep         # L0 16, 32 and 64: Pareto curves

Writes examples/results/compare[-quick]/report.{md,json} and PNG figures; trained SAEs and cached
results go to sae_runs/compare[-quick] and are reused on a re-run.
"""

from __future__ import annotations

import argparse
import sys

from sae_variants.integrations.comparison.command import add_compare_arguments, run_from_args
from sae_variants.integrations.comparison.report import variant_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_compare_arguments(parser)
    raw = sys.argv[1:] if argv is None else argv
    report = run_from_args(
        parser.parse_args(raw), " ".join(["python examples/compare_variants.py", *raw])
    )
    print(variant_table(report))


if __name__ == "__main__":
    main()

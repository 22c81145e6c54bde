"""How faithful each variant's export to a stock SAELens architecture is, on trained SAEs.

    python docs/experiments/export_fidelity.py [--report docs/experiments/results/compare/report.json]

Each exportable variant is trained on the embedded model as the comparison trained it (its
report's matched L1 coefficient, token budget and width: L0 about 32), then exported with
``sae-variants export``'s defaults (256 held-out contexts, the last quarter of the rows measure).
The table gives the explained variance before and after, the L0s, and the mean Jaccard index of
each token's firing features. Finished runs under ``--work-dir`` are reused. Results go to
docs/experiments/results/export_fidelity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from sae_variants.integrations.export import DEFAULT_CONTEXTS, export_saved_sae
from sae_variants.integrations.training.pipeline import train_sae
from sae_variants.integrations.training.request import TrainRequest

RESULTS = Path(__file__).parent / "results"
EXPORTABLE = ("qucl", "multiscale_norm", "seq_contrastive", "position_aware")


def matched_settings(report_path: Path) -> tuple[dict[str, float], int, int]:
    """Each variant's matched L1 coefficient, and the report's token budget and width."""
    report = json.loads(report_path.read_text())
    values = {
        row["architecture"]: row["knob_value"]
        for row in report["embedded"]
        if row["architecture"] in EXPORTABLE and row["knob"] == "l1_coefficient"
    }
    missing = sorted(set(EXPORTABLE) - set(values))
    if missing:
        raise SystemExit(f"{report_path} has no L1 calibration for {missing}")
    return values, report["settings"]["training_tokens"], report["d_sae"]


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, default=RESULTS / "compare" / "report.json")
    parser.add_argument("--work-dir", type=Path, default=Path("sae_runs/export_fidelity"))
    parser.add_argument("--contexts", type=int, default=DEFAULT_CONTEXTS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    l1, tokens, d_sae = matched_settings(args.report)
    rows = []
    for architecture in EXPORTABLE:
        run = args.work_dir / architecture
        if not (run / "cfg.json").is_file():
            train_sae(
                TrainRequest(
                    architecture=architecture,
                    d_sae=d_sae,
                    training_tokens=tokens,
                    sae_options={"l1_coefficient": l1[architecture]},
                    output_path=run,
                )
            )
        report = export_saved_sae(
            run,
            args.work_dir / f"{architecture}-stock",
            n_contexts=args.contexts,
            max_explained_variance_change=1.0,  # measure every export, refuse none
            overwrite=True,
        )
        rows.append(
            {
                "variant": architecture,
                "l1_coefficient": l1[architecture],
                "exported_as": report.sae.cfg.architecture(),
                **report.as_metadata(),
                "explained_variance_change": report.change,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    command = "python docs/experiments/export_fidelity.py " + " ".join(argv or sys.argv[1:])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "export_fidelity.json").write_text(
        json.dumps({"command": command.strip(), "date": str(date.today()), "rows": rows}, indent=2)
        + "\n"
    )
    lines = [
        "# Export fidelity: each variant as a stock SAELens SAE",
        "",
        f"`{command.strip()}`, {date.today()}: the embedded model, `blocks.1.hook_resid_post`, "
        f"d_sae {d_sae}, {tokens:,} training tokens per SAE at the comparison's matched L1 "
        f"coefficient; {args.contexts} held-out contexts, the last quarter of the rows measure.",
        "",
        "| variant | exported as | method | EV variant | EV export | change | L0 variant | L0 export | active-set Jaccard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['variant']}` | `{r['exported_as']}` | {r['method']} | "
        f"{r['explained_variance_source']:.4f} | {r['explained_variance_export']:.4f} | "
        f"{r['explained_variance_change']:+.4f} | {r['l0_source']:.1f} | {r['l0_export']:.1f} | "
        f"{r['active_set_jaccard']:.3f} |"
        for r in rows
    ]
    (args.results / "export_fidelity.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()

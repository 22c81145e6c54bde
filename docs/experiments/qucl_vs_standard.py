"""QuCLSAE against SAELens's standard SAE on the embedded model, at matched L0.

    python docs/experiments/qucl_vs_standard.py [--tokens 2000000]

Both train on blocks.1.hook_resid_post with d_sae 2048 and the same token budget. The standard SAE
trains at the demo's L1 coefficient; each QuCL configuration's lambda0 is then calibrated until
its held-out L0 is within 10% of the standard's. Two QuCL configurations run:

- ``paper``: every default (the spec's resolution of the paper), so the curriculum's FVU threshold
  comes from activation diversity, clipped to [0.05, 0.2];
- ``fvu-0.05``: the same with ``threshold_max=0.05``, i.e. the curriculum holds the FVU between
  0.025 and 0.05 instead of between 0.1 and 0.2;
- ``full-rank``: as ``fvu-0.05`` but starting at the largest rank (90% of d_in), which separates
  what the quantized projection costs from what the short run's slow rank growth costs.

The report shows explained variance, CE loss score and each run's rank trajectory (from the
``qucl_curriculum.json`` the SAE writes beside itself). Finished runs are reused on a re-run.
Results go to docs/experiments/results/qucl.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from sae_variants.architectures.qucl import CURRICULUM_LOG_FILENAME
from sae_variants.integrations.comparison.matched_l0 import (
    summary_row,
    train_at_target_l0,
    train_standard_reference,
)
from sae_variants.integrations.comparison.report import markdown_table
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.presets import DEMO_SAE_OPTIONS
from sae_variants.integrations.training.request import TrainRequest

RESULTS = Path(__file__).parent / "results"
COLUMNS = (
    "architecture",
    "l1_coefficient",
    "l0",
    "explained_variance",
    "ce_loss_score",
    "kl_div_score",
    "dead_fraction",
    "final_rank",
)
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "paper": {},
    "fvu-0.05": {"threshold_max": 0.05},
    "full-rank": {"threshold_max": 0.05, "initial_rank_fraction": 0.9},
}


def rank_table(log: dict[str, Any]) -> str:
    lines = [
        "| step | rank before | rank after | windowed FVU | threshold |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {e['step']} | {e['rank_before']} | {e['rank_after']} | {e['windowed_fvu']:.4f} | {e['threshold']:.3f} |"
        for e in log["decisions"]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens per SAE")
    parser.add_argument(
        "--qucl-initial-l1",
        type=float,
        default=2.0,
        help="first lambda0 tried for each QuCL configuration",
    )
    parser.add_argument(
        "--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS)
    )
    parser.add_argument("--work-dir", type=Path, default=Path("sae_runs/vs_standard"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    model = load_model(EMBEDDED_MODEL_NAME)
    base = dict(training_tokens=args.tokens, expansion_factor=8)
    warm_up = int(DEMO_SAE_OPTIONS["l1_warm_up_steps"])
    standard = train_standard_reference(args.work_dir, args.tokens, model)
    target = standard.result.metrics["l0"]
    rows = [summary_row(standard) | {"final_rank": "-"}]
    runs: dict[str, Any] = {}
    for name in args.configurations:
        run = train_at_target_l0(
            TrainRequest(
                architecture="qucl",
                output_path=args.work_dir / f"qucl-{name}",
                sae_options={"l1_warm_up_steps": warm_up, **CONFIGURATIONS[name]},
                **base,
            ),
            target_l0=target,
            initial_value=args.qucl_initial_l1,
            model=model,
        )
        log = json.loads((Path(run.result.path) / CURRICULUM_LOG_FILENAME).read_text())
        row = summary_row(run) | {"architecture": f"qucl ({name})", "final_rank": log["final_rank"]}
        rows.append(row)
        runs[name] = {
            "options": CONFIGURATIONS[name],
            "calibration": [vars(a) for a in run.attempts],
            "l0_matched_within_10pct": run.matched,
            "explained_variance_gap": row["explained_variance"] - rows[0]["explained_variance"],
            "ce_loss_score_gap": row["ce_loss_score"] - rows[0]["ce_loss_score"],
            "curriculum": log,
        }
    report = {
        "date": date.today().isoformat(),
        "command": " ".join(
            [
                "python docs/experiments/qucl_vs_standard.py",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "training_tokens": args.tokens,
        "rows": rows,
        "qucl": runs,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "qucl.json").write_text(json.dumps(report, indent=2) + "\n")
    sections = [
        f"# QuCLSAE vs standard ({report['date']})",
        f"`{report['command'].strip()}`",
        markdown_table(rows, COLUMNS),
    ]
    for name, run in runs.items():
        sections.append(
            f"## qucl ({name}): EV gap {run['explained_variance_gap']:+.4f}, CE-score gap "
            f"{run['ce_loss_score_gap']:+.4f}, L0 matched within 10%: {run['l0_matched_within_10pct']}\n\n"
            f"Rank bounds {run['curriculum']['rank_bounds']}; threshold {run['curriculum']['threshold']:.3f}\n\n"
            + rank_table(run["curriculum"])
        )
    (args.results / "qucl.md").write_text("\n\n".join(sections) + "\n")
    print(markdown_table(rows, COLUMNS))
    for name, run in runs.items():
        print(
            f"{name}: EV gap {run['explained_variance_gap']:+.4f}, CE gap {run['ce_loss_score_gap']:+.4f}"
        )
    return report


if __name__ == "__main__":
    main()

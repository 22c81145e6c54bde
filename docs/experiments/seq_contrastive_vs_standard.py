"""SeqContrastiveSAE against SAELens's standard SAE on the embedded model, at matched L0.

    python docs/experiments/seq_contrastive_vs_standard.py [--tokens 2000000] [--initial-value 1.0] [--layer 2]

Both SAEs train on blocks.1.hook_resid_post (``--layer``: another block's) with d_sae 2048 and
the same token budget; the standard SAE at the demo's L1 coefficient, the sequence-contrastive SAE through the
sequence-aware pipeline with its lambda calibrated until held-out L0 is within 10% of the
standard's. Both are evaluated with `sae-variants evaluate`'s metrics, which include contextual
consistency (integrations/evaluation/consistency.py: mean Jaccard of active feature sets of tokens at most 8
positions apart in one context, over that of random tokens from different contexts).

Variants at the calibrated lambda (``--variants``) separate what each ingredient does: the
contrastive term off (layer normalization only) and a lower temperature. Their L0 is reported,
not re-matched.

Finished runs are reused on a re-run. Results go to docs/experiments/results/seq_contrastive.{json,md}
(``seq_contrastive-layer{N}.{json,md}`` with ``--layer N``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sae_variants.integrations.comparison.matched_l0 import (
    summary_row,
    train_at_target_l0,
    train_or_reuse,
    train_standard_reference,
)
from sae_variants.integrations.comparison.report import markdown_table
from sae_variants.integrations.evaluation.evaluate import evaluate_sae
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.presets import DEMO_SAE_OPTIONS
from sae_variants.integrations.training.request import TrainRequest

RESULTS = Path(__file__).parent / "results"
ARCHITECTURE = "seq_contrastive"
VARIANTS: dict[str, dict[str, Any]] = {
    "no contrastive term (layer norm only)": {"contrastive_coefficient": 0.0},
    "temperature 0.1 (the paper's first run)": {"temperature": 0.1},
    "temperature 0.1, weight 1.0": {"temperature": 0.1, "contrastive_coefficient": 1.0},
}
CONSISTENCY = ("contextual_consistency", "window_jaccard", "cross_sequence_jaccard")
COLUMNS = (
    "architecture",
    "l1_coefficient",
    "l0",
    "explained_variance",
    "ce_loss_score",
    "kl_div_score",
    "dead_fraction",
    *CONSISTENCY,
)
VARIANT_COLUMNS = (
    "variant",
    "l0",
    "explained_variance",
    "ce_loss_score",
    "dead_fraction",
    *CONSISTENCY,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens per SAE")
    parser.add_argument("--initial-value", type=float, default=1.0, help="first lambda tried")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="train on the residual stream after this block (default: the middle one, 1)",
    )
    # Shares its standard reference (same request, so it is reused) with the other comparisons.
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="default sae_runs/vs_standard, or sae_runs/layer{N}_vs_standard with --layer",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = Path(
            "sae_runs/vs_standard"
            if args.layer is None
            else f"sae_runs/layer{args.layer}_vs_standard"
        )
    stem = ARCHITECTURE if args.layer is None else f"{ARCHITECTURE}-layer{args.layer}"

    model = load_model(EMBEDDED_MODEL_NAME)
    warm_up = int(DEMO_SAE_OPTIONS["l1_warm_up_steps"])
    standard = train_standard_reference(args.work_dir, args.tokens, model, layer=args.layer)
    target = standard.result.metrics["l0"]
    options = {"l1_warm_up_steps": warm_up}
    matched = train_at_target_l0(
        TrainRequest(
            architecture=ARCHITECTURE,
            output_path=args.work_dir / ARCHITECTURE,
            sae_options=options,
            training_tokens=args.tokens,
            expansion_factor=8,
            layer=args.layer,
        ),
        target_l0=target,
        initial_value=args.initial_value,
        model=model,
    )
    l1 = matched.attempts[-1].knob_value
    rows = []
    for run in (standard, matched):
        row = summary_row(run)
        row.update({k: run.result.metrics[k] for k in CONSISTENCY})
        rows.append(row)

    variant_rows = []
    for name in tqdm(args.variants, desc="variants", unit="run"):
        path = (
            args.work_dir
            / f"{ARCHITECTURE}_variants"
            / name.split(" (")[0].replace(" ", "_").replace(",", "")
        )
        request = TrainRequest(
            architecture=ARCHITECTURE,
            output_path=path,
            overwrite=True,
            training_tokens=args.tokens,
            expansion_factor=8,
            layer=args.layer,
            sae_options={**options, "l1_coefficient": l1, **VARIANTS[name]},
        )
        train_or_reuse(request)
        metrics = evaluate_sae(path, model=model, n_batches=8).metrics
        variant_rows.append({"variant": name, **{k: metrics[k] for k in VARIANT_COLUMNS[1:]}})

    report = {
        "date": date.today().isoformat(),
        "command": shlex.join(
            [
                "python",
                "docs/experiments/seq_contrastive_vs_standard.py",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "hook_name": standard.result.hook_name,
        "training_tokens": args.tokens,
        "rows": rows,
        "calibration": [vars(a) for a in matched.attempts],
        "l0_matched_within_10pct": matched.matched,
        "consistency_over_standard": rows[1]["contextual_consistency"]
        / rows[0]["contextual_consistency"],
        "explained_variance_gap": rows[1]["explained_variance"] - rows[0]["explained_variance"],
        "ce_loss_score_gap": rows[1]["ce_loss_score"] - rows[0]["ce_loss_score"],
        "variants": variant_rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    sections = [
        f"# SeqContrastiveSAE vs standard, {report['hook_name']} ({report['date']})",
        f"`{report['command'].strip()}`",
        markdown_table(rows, COLUMNS),
        f"contextual consistency / standard's: {report['consistency_over_standard']:.3f}; "
        f"EV gap {report['explained_variance_gap']:+.4f}, CE-score gap {report['ce_loss_score_gap']:+.4f}, "
        f"L0 matched within 10%: {report['l0_matched_within_10pct']}",
        f"## Variants at lambda = {l1:.4g} ({args.tokens} tokens each, L0 not re-matched)",
        markdown_table(variant_rows, VARIANT_COLUMNS),
    ]
    (args.results / f"{stem}.md").write_text("\n\n".join(sections) + "\n")
    print("\n\n".join(sections[2:]))
    return report


if __name__ == "__main__":
    main()

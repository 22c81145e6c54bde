"""SeqContrastiveSAE: what the contrastive term's form and strength do to contextual consistency.

    python docs/experiments/seq_contrastive_sweep.py [--tokens 1000000] [--l1 0.8]

Every run trains the sequence-contrastive SAE on the embedded model (blocks.1.hook_resid_post,
d_sae 2048, the demo preset) at one fixed lambda, so the rows differ only in the contrastive term:
off (the control), the paper's cosine of codes or the cosine of soft supports
(``contrastive_similarity="support"``), temperature 0.1, weight 1 or 5, 64 or 256 pairs per
step, all strangers or only the 16 hardest in the denominator (``hard_negatives``). L0 is reported, not re-matched: a term that changes L0 changes both Jaccard overlaps, so read
the consistency ratio next to L0. Finished runs and evaluations are reused on a re-run.

Results go to docs/experiments/results/seq_contrastive_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sae_variants.integrations.comparison.matched_l0 import evaluate_or_reuse, train_or_reuse
from sae_variants.integrations.comparison.report import markdown_table
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.presets import DEMO_SAE_OPTIONS
from sae_variants.integrations.training.request import TrainRequest

RESULTS = Path(__file__).parent / "results"
SWEEP: dict[str, dict[str, Any]] = {
    "no_contrastive": {"contrastive_coefficient": 0.0},
    "support_t0.1_w1": {
        "contrastive_similarity": "support",
        "temperature": 0.1,
        "contrastive_coefficient": 1.0,
    },
    "support_t0.1_w1_p256": {
        "contrastive_similarity": "support",
        "temperature": 0.1,
        "contrastive_coefficient": 1.0,
        "contrastive_pairs": 256,
    },
    "codes_t0.1_w1_p256": {
        "temperature": 0.1,
        "contrastive_coefficient": 1.0,
        "contrastive_pairs": 256,
    },
    "support_t0.1_w5_p256": {
        "contrastive_similarity": "support",
        "temperature": 0.1,
        "contrastive_coefficient": 5.0,
        "contrastive_pairs": 256,
    },
    "support_t0.1_w1_p256_hard16": {
        "contrastive_similarity": "support",
        "temperature": 0.1,
        "contrastive_coefficient": 1.0,
        "contrastive_pairs": 256,
        "hard_negatives": 16,
    },
    "codes_t0.1_w1_p256_hard16": {
        "temperature": 0.1,
        "contrastive_coefficient": 1.0,
        "contrastive_pairs": 256,
        "hard_negatives": 16,
    },
}
COLUMNS = (
    "run",
    "l0",
    "explained_variance",
    "ce_loss_score",
    "dead_fraction",
    "contextual_consistency",
    "window_jaccard",
    "cross_sequence_jaccard",
)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per SAE")
    parser.add_argument("--l1", type=float, default=0.8, help="lambda of every run")
    parser.add_argument("--runs", nargs="*", default=list(SWEEP), choices=list(SWEEP))
    parser.add_argument("--work-dir", type=Path, default=Path("sae_runs/sc_sweep"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    model = load_model(EMBEDDED_MODEL_NAME)
    rows = []
    for name in tqdm(args.runs, desc="contrastive variants", unit="run"):
        path = args.work_dir / name
        options = {
            "l1_warm_up_steps": int(DEMO_SAE_OPTIONS["l1_warm_up_steps"]),
            "l1_coefficient": args.l1,
            **SWEEP[name],
        }
        train_or_reuse(
            TrainRequest(
                architecture="seq_contrastive",
                output_path=path,
                overwrite=True,
                training_tokens=args.tokens,
                expansion_factor=8,
                sae_options=options,
            )
        )
        metrics = evaluate_or_reuse(path, model=model).metrics
        rows.append({"run": name, "options": SWEEP[name], **{k: metrics[k] for k in COLUMNS[1:]}})

    command = " ".join(
        [
            "python docs/experiments/seq_contrastive_sweep.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    args.results.mkdir(parents=True, exist_ok=True)
    report = {
        "date": date.today().isoformat(),
        "command": command,
        "training_tokens": args.tokens,
        "l1_coefficient": args.l1,
        "rows": rows,
    }
    (args.results / "seq_contrastive_sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    options = "\n".join(f"- `{row['run']}`: {row['options']}" for row in rows)
    text = (
        f"# SeqContrastiveSAE contrastive-term sweep ({report['date']})\n\n`{command.strip()}` "
        f"({args.tokens} tokens each, lambda {args.l1}, L0 not re-matched)\n\n"
        f"{markdown_table(rows, COLUMNS)}\n\n{options}\n"
    )
    (args.results / "seq_contrastive_sweep.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()

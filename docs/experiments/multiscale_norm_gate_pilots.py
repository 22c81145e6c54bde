"""The runs behind MultiScaleNormSAE's defaults (centred input, gate at z = 1): dead features
against the gate's z and the centring, at 1 M tokens on the embedded model.

    python docs/experiments/multiscale_norm_gate_pilots.py

Each configuration trains once (lambda1 fixed, not L0-matched: the point is the dead fraction the
gate leaves) on blocks.1.hook_resid_post with d_sae 2048, reactivation every 100 steps, and is
evaluated with `sae-variants evaluate`'s metrics. Finished runs in sae_runs/msn_pilot are reused.
Results go to docs/experiments/results/multiscale_norm_gate_pilots.{md,json}.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sae_variants.integrations.comparison.matched_l0 import evaluate_or_reuse, train_or_reuse
from sae_variants.integrations.comparison.report import markdown_table
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.request import TrainRequest

RESULTS = Path(__file__).parent / "results"
WORK_DIR = Path("sae_runs/msn_pilot")
TOKENS = 1_000_000
PILOTS: list[tuple[str, float, dict[str, Any]]] = [
    (
        "the spec as written: uncentred, z = 2",
        0.2,
        {"apply_b_dec_to_input": False, "z_threshold": 2.0},
    ),
    ("centred, z = 2", 0.2, {"apply_b_dec_to_input": True, "z_threshold": 2.0}),
    ("centred, z = 1.6", 0.2, {"apply_b_dec_to_input": True, "z_threshold": 1.6}),
    ("centred, z = 1 (the default)", 0.2, {"apply_b_dec_to_input": True, "z_threshold": 1.0}),
    ("centred, no gate (plain ReLU)", 0.2, {"apply_b_dec_to_input": True, "z_gating": False}),
    ("centred, z = 1, lambda1 = 1", 1.0, {"apply_b_dec_to_input": True, "z_threshold": 1.0}),
]
COLUMNS = (
    "configuration",
    "lambda1",
    "l0",
    "explained_variance",
    "ce_loss_score",
    "dead_fraction",
    "mean_max_decoder_cosine",
)


def main() -> dict[str, Any]:
    model = load_model(EMBEDDED_MODEL_NAME)
    rows = []
    for name, l1, options in tqdm(PILOTS, desc="pilots", unit="run"):
        label = "_".join(f"{k}={v}" for k, v in options.items())
        path = WORK_DIR / f"t{TOKENS}_l1{l1}_{label}"
        train_or_reuse(
            TrainRequest(
                architecture="multiscale_norm",
                output_path=path,
                training_tokens=TOKENS,
                sae_options={
                    "l1_coefficient": l1,
                    "l1_warm_up_steps": 100,
                    "dead_window_steps": 100,
                    **options,
                },
            )
        )
        metrics = evaluate_or_reuse(path, model=model).metrics
        rows.append({"configuration": name, "lambda1": l1, **{k: metrics[k] for k in COLUMNS[2:]}})
    report = {
        "date": date.today().isoformat(),
        "command": "python docs/experiments/multiscale_norm_gate_pilots.py",
        "training_tokens": TOKENS,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multiscale_norm_gate_pilots.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(rows, COLUMNS)
    (RESULTS / "multiscale_norm_gate_pilots.md").write_text(
        f"# MultiScaleNormSAE gate pilots ({report['date']})\n\n`{report['command']}`\n\n{table}\n"
    )
    print(table)
    return report


if __name__ == "__main__":
    main()

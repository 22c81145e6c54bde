"""The comparison report: raw JSON, a markdown page with the PNG figures, and two generated
tables for documentation pages (the full variant table, and the README's summary with each
variant's verdict). Everything here formats figures the comparison measured; nothing is computed
twice, and a report is re-rendered from its ``report.json`` alone (``sae-variants report``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_variants.integrations.comparison.claims import ClaimRow, claim_verdict
from sae_variants.integrations.comparison.embedded import EmbeddedRun
from sae_variants.integrations.comparison.performance import PerformanceRow
from sae_variants.integrations.comparison.settings import ARCHITECTURE_PLANS
from sae_variants.integrations.comparison.synthetic import SyntheticRun
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
README_START = "<!-- compare-table:start (written by `sae-variants compare --readme FILE`) -->"
README_END = "<!-- compare-table:end -->"
SUMMARY_START = "<!-- variants-table:start (written by `sae-variants compare --readme FILE`) -->"
SUMMARY_END = "<!-- variants-table:end -->"


def model_of(report: ComparisonReport) -> str:
    """The language model the report's first part trained on (older reports: the embedded one)."""
    return report.settings.get("model_name", EMBEDDED_MODEL_NAME)


def _model_label(report: ComparisonReport) -> str:
    name = model_of(report)
    return "the embedded model" if name == EMBEDDED_MODEL_NAME else name


def block_markers(start: str, end: str, model_name: str) -> tuple[str, str]:
    """A generated block's markers for ``model_name``: the plain ones for the embedded model, and
    ``<!-- compare-table gemma-3-270m:start ...`` style ones for another, so a page holds one
    table per model."""
    if model_name == EMBEDDED_MODEL_NAME:
        return start, end
    name, _, rest = start.partition(":start")
    return f"{name} {model_name}:start{rest}", end.replace(":end", f" {model_name}:end")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns`` (floats to 4 significant digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass
class ComparisonReport:
    date: str
    command: str
    settings: dict[str, Any]
    hook_name: str
    d_in: int
    d_sae: int
    wall_seconds: float
    phase_seconds: dict[str, float]
    embedded: list[EmbeddedRun]
    claims: list[ClaimRow]
    synthetic: list[SyntheticRun]
    performance: list[PerformanceRow]
    plots: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComparisonReport:
        """The report :meth:`to_json` wrote (``report.json``)."""
        rows = {
            "embedded": EmbeddedRun,
            "claims": ClaimRow,
            "synthetic": SyntheticRun,
            "performance": PerformanceRow,
        }
        fields = {
            **data,
            **{name: [kind(**row) for row in data[name]] for name, kind in rows.items()},
        }
        return cls(**fields)


def nonfinite_values(value: Any, where: str = "report") -> list[str]:
    """Paths of every float in a JSON-like structure that is NaN or infinite."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nonfinite_values(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nonfinite_values(v, f"{where}[{i}]")]
    return []


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _embedded_rows(runs: list[EmbeddedRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        m = run.metrics
        rows.append(
            {
                "architecture": run.architecture,
                "source": ARCHITECTURE_PLANS[run.architecture].source,
                "knob": f"{run.knob}={run.knob_value:.4g}",
                "target L0": f"{run.target_l0:g}",
                "L0": m["l0"],
                "matched": "yes" if run.matched else "**no**",
                "attempts": len(run.attempts),
                "EV": m["explained_variance"],
                "CE score": m["ce_loss_score"],
                "KL score": m["kl_div_score"],
                "dead": f"{m['dead_fraction']:.1%}",
                "max dec cos": m["mean_max_decoder_cosine"],
                "consistency": m["contextual_consistency"],
                "train time": _minutes(run.training_seconds),
            }
        )
    return rows


def _claim_rows(rows: list[ClaimRow]) -> list[dict[str, Any]]:
    return [
        {
            "variant": r.architecture,
            "target L0": f"{r.target_l0:g}",
            "metric": r.metric,
            "variant value": r.variant,
            "standard": r.standard,
            "improvement": f"{r.relative_improvement:+.1%}",
            "better": "yes" if r.better else "**no**",
            "EV gap": f"{r.explained_variance_gap:+.4f}",
            "CE gap": f"{r.ce_loss_score_gap:+.4f}",
        }
        for r in rows
    ]


def _synthetic_rows(runs: list[SyntheticRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        if run.skipped is not None:
            rows.append(
                {
                    "architecture": run.architecture,
                    "knob": "-",
                    "L0": "-",
                    "matched": "-",
                    "MCC": "-",
                    "F1": "-",
                    "uniqueness": "-",
                    "EV": "-",
                    "dead": f"n/a: {run.skipped}",
                }
            )
            continue
        m = run.metrics
        rows.append(
            {
                "architecture": run.architecture,
                "knob": f"{run.knob}={run.knob_value:.4g}",
                "L0": f"{m['sae_l0']:.2f} / {run.true_l0:.2f}",
                "matched": "yes" if run.matched else "**no**",
                "MCC": m["mcc"],
                "F1": m["f1_score"],
                "uniqueness": m["uniqueness"],
                "EV": m["explained_variance"],
                "dead": f"{m['dead_latents']:.0f}",
            }
        )
    return rows


def _performance_rows(rows: list[PerformanceRow]) -> list[dict[str, Any]]:
    def optional(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return [
        {
            "architecture": r.architecture,
            "shape": f"{r.d_in} x {r.d_sae}, batch {r.batch_size}",
            "standard s/step": r.standard_seconds,
            "variant s/step": r.variant_seconds,
            "step-time ratio": f"{r.step_time_ratio:.2f}",
            "peak MiB (std / var)": f"{optional(r.standard_peak_mib, '.0f')} / {optional(r.variant_peak_mib, '.0f')}",
            "memory ratio": optional(r.memory_ratio, ".2f"),
            "pipeline throughput ratio": optional(r.pipeline_throughput_ratio, ".2f"),
        }
        for r in rows
    ]


def _table(rows: list[dict[str, Any]]) -> str:
    """Formatted rows as a markdown table with their own columns."""
    return markdown_table(rows, list(rows[0])) if rows else "(none)"


def performance_table(rows: list[PerformanceRow]) -> str:
    """The performance rows as a markdown table (also what `sae-variants benchmark --all` prints)."""
    return _table(_performance_rows(rows))


def _synthetic_structure(syn: dict[str, Any]) -> str:
    """The hierarchy and correlation of a synthetic setting, in words (older reports had none)."""
    parts = []
    if syn.get("hierarchy_roots"):
        low, high = syn["hierarchy_branching"]
        parts.append(
            f"a hierarchy of {syn['hierarchy_roots']} trees (depth {syn['hierarchy_depth']}, "
            f"{low}-{high} children, {syn['mutually_exclusive_portion']:.0%} of sibling groups "
            "mutually exclusive)"
        )
    if syn.get("correlation_rank"):
        parts.append(
            f"rank-{syn['correlation_rank']} firing correlation (scale {syn['correlation_scale']})"
        )
    return (", " + " and ".join(parts)) if parts else ", independent flat features"


def _seed_note(settings: dict[str, Any]) -> str:
    source = settings.get("calibration_from")
    return f", each starting from the attempts recorded in `{source}`" if source else ""


def render_markdown(report: ComparisonReport) -> str:
    s = report.settings
    sections = [
        f"# sae-variants comparison ({report.date})",
        f"`{report.command}`",
        f"{model_of(report)}, `{report.hook_name}` (d_in {report.d_in}), d_sae {report.d_sae}, "
        f"{s['training_tokens']:,} training tokens per SAE (the model's default recipe"
        f"{', from an activation cache' if s.get('activations_path') else ''}), target L0 "
        f"{', '.join(f'{t:g}' for t in s['target_l0s'])} within {s['tolerance']:.0%} "
        f"({s['max_attempts']} calibration attempt(s) at most{_seed_note(s)}), "
        f"{s['eval_batches']} held-out eval batches. "
        f"Wall time of this invocation: {_minutes(report.wall_seconds)} "
        f"({', '.join(f'{k} {_minutes(v)}' for k, v in report.phase_seconds.items())}; finished runs "
        "are reused, so a re-run is faster than the first).",
        f"## {_model_label(report).removeprefix('the ').capitalize()} at matched L0",
        _table(_embedded_rows(report.embedded)),
        "EV: explained variance; CE/KL score: SAELens `run_evals`; consistency: mean Jaccard of active "
        "sets within 8 positions of one context over that across contexts; train time: wall time of the "
        "final attempt's training. Unmatched rows (achieved L0 outside the tolerance) are not "
        "like-for-like comparisons.",
    ]
    if "quality" in report.plots:
        sections.append(f"![quality against L0]({report.plots['quality']})")
    if report.claims:
        sections += [
            "## Each paper's claim against SAELens standard",
            _table(_claim_rows(report.claims)),
        ]
        if "claims" in report.plots:
            sections.append(f"![claim metrics]({report.plots['claims']})")
    if report.synthetic:
        syn = s["synthetic"]
        sections += [
            "## Ground-truth features (`sae_lens.synthetic`)",
            f"{syn['num_features']} features in {syn['hidden_dim']} dimensions, Zipfian firing "
            f"{syn['min_firing']}-{syn['max_firing']}, magnitudes N({syn['magnitude']}, {syn['magnitude_std']})"
            f"{_synthetic_structure(syn)}; "
            f"{syn['training_samples']:,} training samples per SAE, {syn['num_features']} latents, each "
            f"calibrated to the true L0 ({syn['max_attempts']} attempt(s) at most); metrics from "
            f"`eval_sae_on_synthetic_data` on {syn['eval_samples']:,} samples.",
            _table(_synthetic_rows(report.synthetic)),
        ]
        if "synthetic" in report.plots:
            sections.append(f"![feature recovery]({report.plots['synthetic']})")
    if report.performance:
        sections += [
            "## Performance against SAELens standard (measured side by side in one run)",
            performance_table(report.performance),
            "Step time: median over interleaved repeats of a full SAELens training step (forward, "
            "backward, clipping, Adam) with each SAE's bias set to fire 64 features per row. Peak "
            "memory: resident high-water mark of a fresh process building and training the SAE. "
            "Pipeline: steady-state tokens/s of the sequence-aware pipeline over SAELens's store.",
        ]
        if "step_time" in report.plots:
            sections.append(f"![step time]({report.plots['step_time']})")
    return "\n\n".join(sections) + "\n"


def headline_claims(report: ComparisonReport, target: float) -> dict[str, ClaimRow]:
    """Each variant's claim row at ``target``; of several (PositionAware's four quarters), the
    one where the variant does best, as its claim is "better in at least one range"."""
    claims: dict[str, ClaimRow] = {}
    for row in report.claims:
        best = claims.get(row.architecture)
        if row.target_l0 == target and (
            best is None or row.relative_improvement > best.relative_improvement
        ):
            claims[row.architecture] = row
    return claims


def variant_table(report: ComparisonReport) -> str:
    """The README's variant table: one row per architecture at the first target L0."""
    target = report.settings["target_l0s"][0]
    claims = headline_claims(report, target)
    synthetic = {r.architecture: r for r in report.synthetic}
    performance = {r.architecture: r for r in report.performance}
    rows = []
    for run in (r for r in report.embedded if r.target_l0 == target):
        claim = claims.get(run.architecture)
        syn = synthetic.get(run.architecture)
        perf = performance.get(run.architecture)
        rows.append(
            {
                "architecture": f"`{run.architecture}`",
                "source": ARCHITECTURE_PLANS[run.architecture].source,
                "L0": f"{run.metrics['l0']:.1f}" + ("" if run.matched else " (unmatched)"),
                "EV": f"{run.metrics['explained_variance']:.3f}",
                "CE score": f"{run.metrics['ce_loss_score']:.3f}",
                "dead": f"{run.metrics['dead_fraction']:.1%}",
                "claim metric (variant vs standard)": "-"
                if claim is None
                else f"{claim.metric} {claim.variant:.3g} vs {claim.standard:.3g} ({claim.relative_improvement:+.0%})",
                "synthetic MCC": "-"
                if syn is None or syn.skipped
                else f"{syn.metrics['mcc']:.3f}" + ("" if syn.matched else " (unmatched)"),
                "step-time ratio": "1"
                if run.architecture == "standard"
                else ("-" if perf is None else f"{perf.step_time_ratio:.2f}"),
            }
        )
    header = (
        f"Generated {report.date} by `{report.command}` "
        f"(report: `{report.settings.get('report_dir', '')}`; {report.settings['training_tokens']:,} "
        f"tokens per SAE, target L0 {target:g})."
    )
    return header + "\n\n" + _table(rows)


def summary_table(report: ComparisonReport) -> str:
    """The README's table: each variant's paper, saved architecture, quality against SAELens
    ``standard`` at the first target L0, its claim's metric, and its verdict."""
    target = report.settings["target_l0s"][0]
    runs = {r.architecture: r for r in report.embedded if r.target_l0 == target}
    claims = headline_claims(report, target)
    reference = runs["standard"].metrics
    rows = []
    embedded = model_of(report) == EMBEDDED_MODEL_NAME
    for name, run in runs.items():
        plan = ARCHITECTURE_PLANS[name]
        if not plan.verdict:
            continue
        claim = claims.get(name)
        m = run.metrics
        row = {
            "variant": f"`{name}`",
            "paper": plan.source,
            "L0": f"{m['l0']:.1f}",
            "EV / CE score vs standard": f"{m['explained_variance'] - reference['explained_variance']:+.3f} / "
            f"{m['ce_loss_score'] - reference['ce_loss_score']:+.3f}",
            "dead": f"{m['dead_fraction']:.1%}",
            "claim": "-"
            if claim is None
            else f"{claim.metric} {claim.variant:.3g} vs {claim.standard:.3g} "
            f"({claim.relative_improvement:+.0%})",
            "verdict": "-"
            if claim is None
            else claim_verdict(claim, run.matched and runs["standard"].matched),
        }
        if embedded:
            # Written from the embedded model's figures; another model's table has only the
            # measured verdict.
            row["good for / not for"] = plan.verdict
        rows.append(row)
    header = (
        f"{report.settings['training_tokens']:,} tokens per SAE on {_model_label(report)} "
        f"`{report.hook_name}` at target L0 "
        f"{target:g}; standard: L0 {reference['l0']:.1f}, EV {reference['explained_variance']:.3f}, "
        f"CE score {reference['ce_loss_score']:.3f} (`{report.command}`, {report.date})."
    )
    return header + "\n\n" + _table(rows)


def update_readme(readme: Path, report: ComparisonReport) -> None:
    """Replace the generated blocks ``readme`` holds: the full variant table between
    :data:`README_START` / :data:`README_END` and the summary between :data:`SUMMARY_START` /
    :data:`SUMMARY_END` (at least one must be present)."""
    text = readme.read_text()
    found = False
    model_name = model_of(report)
    for plain_start, plain_end, render in (
        (README_START, README_END, variant_table),
        (SUMMARY_START, SUMMARY_END, summary_table),
    ):
        start, end = block_markers(plain_start, plain_end, model_name)
        # Any start marker of this block (its explanatory text may differ) up to its end marker.
        opening = re.escape(start.split(" (", 1)[0]) + r"[^>]*-->"
        # Markers on a line of their own: a page that mentions one in its prose keeps its text.
        pattern = re.compile(r"^" + opening + r".*?" + re.escape(end), re.DOTALL | re.MULTILINE)
        if pattern.search(text):
            table = render(report)
            text = pattern.sub(
                lambda _, start=start, end=end, table=table: f"{start}\n{table}\n{end}", text
            )
            found = True
    if not found:
        table_start, table_end = block_markers(README_START, README_END, model_name)
        summary_start, summary_end = block_markers(SUMMARY_START, SUMMARY_END, model_name)
        raise ValueError(
            f"{readme} has no comparison block for {model_name}; add the two lines\n"
            f"{table_start}\n{table_end}\n(the full table) or\n{summary_start}\n{summary_end}\n"
            "(the summary)"
        )
    readme.write_text(text)


def read_report(report_dir: Path) -> ComparisonReport:
    """The report saved in ``report_dir`` (its ``report.json``), with a clear error if none."""
    file = report_dir / REPORT_JSON
    if not file.is_file():
        raise FileNotFoundError(f"{report_dir} holds no comparison report (expected {REPORT_JSON})")
    return ComparisonReport.from_json(json.loads(file.read_text()))


def write_report(report: ComparisonReport, report_dir: Path) -> Path:
    """Write ``report.json`` and ``report.md`` into ``report_dir``; returns the markdown path."""
    problems = nonfinite_values(report.to_json())
    if problems:
        raise RuntimeError(f"the comparison produced non-finite figures: {problems[:10]}")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / REPORT_JSON).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    markdown = report_dir / REPORT_MARKDOWN
    markdown.write_text(render_markdown(report))
    return markdown

"""The comparison's PNG figures (matplotlib, headless). Each function draws one file from the
report's rows and returns its path; none computes a figure of its own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or servers

import matplotlib.pyplot as plt

from sae_variants.integrations.comparison.claims import ClaimRow
from sae_variants.integrations.comparison.embedded import EmbeddedRun
from sae_variants.integrations.comparison.performance import PerformanceRow
from sae_variants.integrations.comparison.synthetic import SyntheticRun

STEP_TIME_BAR = 1.3
"""The step-time ratio every variant issue sets as its bar."""


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_quality_vs_l0(runs: Sequence[EmbeddedRun], path: Path, model_name: str) -> Path:
    """Explained variance and CE loss score against achieved L0, one line per architecture."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for architecture in dict.fromkeys(r.architecture for r in runs):
        points = sorted(
            (r.metrics["l0"], r.metrics["explained_variance"], r.metrics["ce_loss_score"])
            for r in runs
            if r.architecture == architecture
        )
        l0s = [p[0] for p in points]
        for axis, column in zip(axes, (1, 2), strict=True):
            axis.plot(l0s, [p[column] for p in points], marker="o", label=architecture)
    for axis, label in zip(axes, ("explained variance", "CE loss score"), strict=True):
        axis.set_xlabel("L0 (held out)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"Quality against sparsity on {model_name}")
    return _save(figure, path)


def plot_claims(rows: Sequence[ClaimRow], path: Path) -> Path:
    """Each variant's claim metric beside the standard SAE's, one panel per variant."""
    variants = list(dict.fromkeys(r.architecture for r in rows))
    figure, axes = plt.subplots(
        1, max(1, len(variants)), figsize=(3.2 * max(1, len(variants)), 3.8), squeeze=False
    )
    for axis, variant in zip(axes[0], variants, strict=False):
        mine = [r for r in rows if r.architecture == variant]
        labels = [f"{r.metric}\nL0 {r.target_l0:g}" for r in mine]
        positions = range(len(mine))
        axis.bar(
            [p - 0.2 for p in positions], [r.standard for r in mine], width=0.4, label="standard"
        )
        axis.bar([p + 0.2 for p in positions], [r.variant for r in mine], width=0.4, label=variant)
        axis.set_xticks(list(positions), labels, fontsize=6, rotation=30, ha="right")
        direction = "higher" if mine[0].higher_is_better else "lower"
        axis.set_title(f"{variant} ({direction} is better)", fontsize=9)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle("Each paper's claim metric against SAELens standard at matched L0")
    return _save(figure, path)


def plot_step_time(rows: Sequence[PerformanceRow], path: Path) -> Path:
    """Training-step time over SAELens standard's, with the issues' 1.3 bar."""
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    axis.barh([r.architecture for r in rows], [r.step_time_ratio for r in rows])
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.axvline(STEP_TIME_BAR, color="red", linestyle="--", label=f"bar {STEP_TIME_BAR}")
    axis.set_xlabel("training-step time / SAELens standard's")
    if rows:
        r = rows[0]
        axis.set_title(f"d_in {r.d_in}, d_sae {r.d_sae}, batch {r.batch_size}")
    axis.legend()
    return _save(figure, path)


def plot_synthetic(runs: Sequence[SyntheticRun], path: Path) -> Path:
    """MCC, F1 and uniqueness of feature recovery per architecture (trained ones only)."""
    trained = [r for r in runs if r.skipped is None]
    metrics = ("mcc", "f1_score", "uniqueness")
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(trained) + 2), 4))
    for offset, metric in enumerate(metrics):
        axis.bar(
            [i + 0.27 * (offset - 1) for i in range(len(trained))],
            [r.metrics[metric] for r in trained],
            width=0.27,
            label=metric,
        )
    axis.set_xticks(range(len(trained)), [r.architecture for r in trained], fontsize=8, rotation=20)
    axis.set_ylim(0, 1.05)
    axis.legend()
    axis.set_title("Ground-truth feature recovery (sae_lens.synthetic)")
    return _save(figure, path)

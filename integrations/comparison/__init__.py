"""`sae-variants compare`: every variant against SAELens's built-ins, as a report people can read.

    from sae_variants.integrations.comparison import ComparisonSettings, run_comparison
    report = run_comparison(ComparisonSettings(), work_dir=Path("sae_runs/compare"),
                            report_dir=Path("sae_runs/compare/report"))

Three parts, each in its own module: a language model (the embedded one, or gemma-3-270m with
``settings.model_name``) at matched L0 (``embedded.py``, with the per-paper claims in ``claims.py``), ground-truth feature recovery (``synthetic.py``) and the
performance table (``performance.py``); ``plots.py`` and ``report.py`` turn them into PNGs,
markdown, JSON and the generated tables of the documentation pages. The calibration to a target
L0 (``matched_l0.py``) and the cache of finished results (``result_cache.py``) serve the
research drivers in ``docs/experiments/`` too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from sae_variants.integrations.comparison.calibration_seed import (
    SeededAttempts,
    load_seeded_attempts,
)
from sae_variants.integrations.comparison.claims import claim_rows
from sae_variants.integrations.comparison.embedded import run_embedded, train_request
from sae_variants.integrations.comparison.performance import run_performance
from sae_variants.integrations.comparison.plots import (
    plot_claims,
    plot_quality_vs_l0,
    plot_step_time,
    plot_synthetic,
)
from sae_variants.integrations.comparison.report import (
    ComparisonReport,
    update_readme,
    write_report,
)
from sae_variants.integrations.comparison.settings import (
    ALL_ARCHITECTURES,
    QUICK,
    SWEEP_L0S,
    BenchmarkSettings,
    ComparisonSettings,
    SyntheticSettings,
)
from sae_variants.integrations.comparison.synthetic import run_synthetic
from sae_variants.integrations.models import load_model
from sae_variants.integrations.training.devices import AUTO, resolve_device
from sae_variants.integrations.training.request import build_runner_config

__all__ = [
    "ALL_ARCHITECTURES",
    "QUICK",
    "SWEEP_L0S",
    "BenchmarkSettings",
    "ComparisonReport",
    "ComparisonSettings",
    "SyntheticSettings",
    "run_comparison",
]


def run_comparison(
    settings: ComparisonSettings,
    *,
    work_dir: Path,
    report_dir: Path,
    command: str = "",
    readmes: Sequence[Path] = (),
    remeasure: bool = False,
) -> ComparisonReport:
    """Run (or resume) the comparison and write its report into ``report_dir``.

    Trained SAEs, evaluations, synthetic scores and the benchmark table are kept under
    ``work_dir`` and reused when the settings match. ``readmes``: pages whose generated blocks
    are rewritten (see :func:`~.report.update_readme`).
    """
    started = time.perf_counter()
    phases: dict[str, float] = {}
    # The model goes where every request's "auto" device resolves, so model and SAEs share it.
    model = load_model(settings.model_name, device=resolve_device(AUTO))
    reference, _ = build_runner_config(train_request(settings, "standard", work_dir, 1))
    hook_name, d_in = reference.hook_name, reference.sae.d_in
    seeded = SeededAttempts()
    if settings.calibration_from is not None:
        d_sae = settings.d_sae or settings.expansion_factor * d_in
        seeded = load_seeded_attempts(Path(settings.calibration_from), settings, hook_name, d_sae)

    clock = time.perf_counter()
    embedded = run_embedded(settings, work_dir, model, d_in, seeded.model)
    phases[settings.model_name] = time.perf_counter() - clock
    synthetic, performance = [], []
    if settings.synthetic is not None:
        clock = time.perf_counter()
        synthetic = run_synthetic(
            settings.architectures, settings.synthetic, work_dir, seeded.synthetic
        )
        phases["synthetic"] = time.perf_counter() - clock
    if settings.benchmark is not None:
        clock = time.perf_counter()
        performance = run_performance(
            settings.architectures, settings.benchmark, work_dir, remeasure
        )
        phases["benchmark"] = time.perf_counter() - clock

    claims = claim_rows(embedded)
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "quality": plot_quality_vs_l0(
            embedded, report_dir / "quality_vs_l0.png", settings.model_name
        ).name
    }
    if claims:
        plots["claims"] = plot_claims(claims, report_dir / "claims.png").name
    if synthetic:
        plots["synthetic"] = plot_synthetic(synthetic, report_dir / "synthetic.png").name
    if performance:
        plots["step_time"] = plot_step_time(performance, report_dir / "step_time.png").name

    report = ComparisonReport(
        date=date.today().isoformat(),
        command=command,
        settings={
            **dataclasses.asdict(settings),
            "work_dir": str(work_dir),
            "report_dir": str(report_dir),
        },
        hook_name=hook_name,
        d_in=d_in,
        d_sae=settings.d_sae or settings.expansion_factor * d_in,
        wall_seconds=time.perf_counter() - started,
        phase_seconds=phases,
        embedded=embedded,
        claims=claims,
        synthetic=synthetic,
        performance=performance,
        plots=plots,
    )
    write_report(report, report_dir)
    for readme in readmes:
        update_readme(readme, report)
    return report

"""`sae-variants compare`: the whole pipeline end to end on a tiny setting, its resumption, and
the pieces (claims, calibration, arguments, README block) on their own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from sae_variants.integrations import cli
from sae_variants.integrations.comparison import (
    ALL_ARCHITECTURES,
    BenchmarkSettings,
    ComparisonReport,
    ComparisonSettings,
    SyntheticSettings,
    matched_l0,
    performance,
    run_comparison,
    synthetic,
)
from sae_variants.integrations.comparison.claims import ClaimRow, claim_rows, claim_verdict
from sae_variants.integrations.comparison.command import add_compare_arguments, settings_from_args
from sae_variants.integrations.comparison.embedded import EmbeddedRun
from sae_variants.integrations.comparison.matched_l0 import Attempt, calibrate
from sae_variants.integrations.comparison.report import (
    README_END,
    README_START,
    REPORT_JSON,
    SUMMARY_END,
    SUMMARY_START,
    block_markers,
    summary_table,
    update_readme,
    variant_table,
)
from sae_variants.integrations.comparison.settings import ARCHITECTURE_PLANS
from sae_variants.integrations.training import sequence_batches
from sae_variants.integrations.training.activation_cache import CacheRequest, cache_activations

ROOT_REPORT = Path(__file__).resolve().parents[3] / "docs/experiments/results/compare"

TINY = ComparisonSettings(
    training_tokens=60 * 512,
    train_batch_size_tokens=512,
    expansion_factor=1,
    eval_batches=1,
    max_attempts=1,
    name="tiny",
    synthetic=SyntheticSettings(
        num_features=32,
        hidden_dim=16,
        hierarchy_roots=4,
        correlation_rank=2,
        training_samples=20_000,
        eval_samples=2_000,
        max_attempts=1,
    ),
    benchmark=BenchmarkSettings(
        d_in=32, d_sae=64, batch_size=256, repeats=1, steps=1, memory=False, pipeline=False
    ),
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_comparison(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ComparisonReport, Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    readme = root / "README.md"
    readme.write_text(
        f"# title\n\nbefore\n\n{README_START}\nold table\n{README_END}\n\n"
        f"{SUMMARY_START}\nold summary\n{SUMMARY_END}\n\nafter\n"
    )
    report = run_comparison(
        TINY,
        work_dir=root / "work",
        report_dir=root / "report",
        command="pytest tiny comparison",
        readmes=[readme],
    )
    return report, root, readme


def _finite_numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _finite_numbers(v)]
    return []


def test_the_tiny_comparison_reports_every_architecture_with_finite_metrics(
    tiny_comparison,
) -> None:
    report, root, _ = tiny_comparison
    data = json.loads((root / "report" / REPORT_JSON).read_text())
    assert {
        "date",
        "command",
        "settings",
        "embedded",
        "claims",
        "synthetic",
        "performance",
        "plots",
        "wall_seconds",
        "phase_seconds",
    } <= set(data)
    assert [r["architecture"] for r in data["embedded"]] == list(ALL_ARCHITECTURES)
    for run in data["embedded"]:
        for metric in (
            "l0",
            "explained_variance",
            "ce_loss_score",
            "kl_div_score",
            "dead_fraction",
            "mean_max_decoder_cosine",
            "contextual_consistency",
            "fvu_positions_3",
        ):
            assert math.isfinite(run["metrics"][metric]), (run["architecture"], metric)
        assert run["attempts"]
        assert run["training_seconds"] > 0
    assert all(math.isfinite(x) for x in _finite_numbers(data))
    # TopK's knob is k itself: one attempt lands exactly on the target.
    topk = next(r for r in data["embedded"] if r["architecture"] == "topk")
    assert topk["metrics"]["l0"] == pytest.approx(32.0)
    assert topk["matched"]
    assert (
        next(r for r in data["embedded"] if r["architecture"] == "qucl")["metrics"]["final_rank"]
        > 0
    )

    claims = {(c["architecture"], c["metric"]) for c in data["claims"]}
    assert claims == {
        ("cubic_ortho", "mean_max_decoder_cosine"),
        ("qucl", "final_rank_fraction"),
        ("multiscale_norm", "dead_fraction"),
        ("seq_contrastive", "contextual_consistency"),
        *{("position_aware", f"fvu_positions_{r}") for r in range(4)},
    }

    by_arch = {r["architecture"]: r for r in data["synthetic"]}
    for architecture in ("seq_contrastive", "position_aware"):
        assert by_arch[architecture]["skipped"]
        assert not by_arch[architecture]["metrics"]
    for architecture in (
        "standard",
        "topk",
        "matryoshka_batchtopk",
        "cubic_ortho",
        "qucl",
        "multiscale_norm",
    ):
        metrics = by_arch[architecture]["metrics"]
        assert 0.0 <= metrics["mcc"] <= 1.0
        assert 0.0 < metrics["uniqueness"] <= 1.0

    assert [r["architecture"] for r in data["performance"]] == list(ALL_ARCHITECTURES[1:])
    assert all(r["step_time_ratio"] > 0 for r in data["performance"])
    for name in data["plots"].values():
        assert (root / "report" / name).read_bytes()[:8] == PNG_MAGIC
    markdown = (root / "report" / "report.md").read_text()
    for heading in (
        "## Embedded model at matched L0",
        "## Each paper's claim",
        "## Ground-truth features",
        "## Performance against SAELens standard",
    ):
        assert heading in markdown
    assert report.claims
    assert report.performance


def test_the_readme_block_is_replaced_by_the_variant_table(tiny_comparison) -> None:
    report, _, readme = tiny_comparison
    text = readme.read_text()
    assert "old table" not in text
    assert "old summary" not in text
    assert text.startswith("# title\n\nbefore")
    assert text.endswith("after\n")
    assert variant_table(report) in text
    assert summary_table(report) in text
    assert all(f"`{a}`" in text for a in ALL_ARCHITECTURES)
    # The summary lists the five variants (the baselines have no verdict) with theirs.
    summary = summary_table(report)
    assert "`standard`" not in summary.split("\n\n", 1)[1]
    for name in ("cubic_ortho", "qucl", "multiscale_norm", "seq_contrastive", "position_aware"):
        assert ARCHITECTURE_PLANS[name].verdict in summary


def test_a_report_re_renders_from_its_json_alone(tiny_comparison, tmp_path: Path) -> None:
    report, root, _ = tiny_comparison
    again = ComparisonReport.from_json(json.loads((root / "report" / REPORT_JSON).read_text()))
    assert again.to_json() == json.loads(json.dumps(report.to_json()))  # tuples come back as lists
    assert again.embedded == report.embedded
    assert again.claims == report.claims
    page = tmp_path / "page.md"
    page.write_text(f"{SUMMARY_START}\n{SUMMARY_END}\n")
    copy = tmp_path / "report"
    copy.mkdir()
    (copy / REPORT_JSON).write_text((root / "report" / REPORT_JSON).read_text())
    assert cli.main(["report", str(copy), "--readme", str(page)]) == 0
    assert summary_table(report) in page.read_text()
    assert (copy / "report.md").read_text() == (root / "report" / "report.md").read_text()


def test_a_rerun_reuses_every_finished_part(
    tiny_comparison, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root, _ = tiny_comparison

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a finished part was redone")

    monkeypatch.setattr(matched_l0, "train_sae", must_not_run)
    monkeypatch.setattr(matched_l0, "evaluate_sae", must_not_run)
    monkeypatch.setattr(synthetic, "_train_and_score", must_not_run)
    monkeypatch.setattr(performance, "_measure", must_not_run)
    again = run_comparison(TINY, work_dir=root / "work", report_dir=root / "again", command="rerun")
    assert [r.metrics["l0"] for r in again.embedded] == [
        r["metrics"]["l0"]
        for r in json.loads((root / "report" / REPORT_JSON).read_text())["embedded"]
    ]


def _run(architecture: str, **metrics: float) -> EmbeddedRun:
    base = {"explained_variance": 0.9, "ce_loss_score": 0.9}
    return EmbeddedRun(
        architecture, 32.0, "l1_coefficient", 1.0, True, {**base, **metrics}, "", None
    )


def test_claims_are_signed_by_the_direction_the_paper_claims() -> None:
    rows = claim_rows(
        [
            _run(
                "standard",
                contextual_consistency=1.5,
                dead_fraction=0.0,
                mean_max_decoder_cosine=0.8,
            ),
            _run("seq_contrastive", contextual_consistency=1.8),
            _run("cubic_ortho", mean_max_decoder_cosine=0.4),
            _run("multiscale_norm", dead_fraction=0.1),
        ]
    )
    by_arch = {r.architecture: r for r in rows}
    assert by_arch["seq_contrastive"].relative_improvement == pytest.approx(0.2)
    assert by_arch["cubic_ortho"].relative_improvement == pytest.approx(0.5)
    assert by_arch["cubic_ortho"].better
    # Against a standard SAE with no dead features any dead fraction is a full loss.
    assert by_arch["multiscale_norm"].relative_improvement == pytest.approx(-1.0)
    assert not by_arch["multiscale_norm"].better


def test_calibration_rounds_integer_knobs_and_starts_from_the_history() -> None:
    calls: list[float] = []

    def batch_topk_like(k: float) -> tuple[float, None]:
        calls.append(k)
        return k * 1.5, None  # L0 overshoots k and grows with it

    attempts, _ = calibrate(
        batch_topk_like,
        30.0,
        initial_value=30.0,
        max_attempts=4,
        integer_knob=True,
        l0_rises_with_knob=True,
    )
    assert calls == [30.0, 20.0]
    assert attempts[-1].l0 == pytest.approx(30.0)
    # L0 = 64 / knob measured at another target: the first guess for target 32 is knob 2.
    attempts, _ = calibrate(
        lambda v: (64.0 / v, None),
        32.0,
        initial_value=100.0,
        max_attempts=1,
        history=[Attempt(1.0, 64.0, "")],
    )
    assert attempts[0].knob_value == pytest.approx(2.0)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_select_quick_sweep_and_parts() -> None:
    assert settings_from_args(_args()).target_l0s == (32.0,)
    quick = settings_from_args(_args("--quick"))
    assert quick.max_attempts == 1
    assert quick.training_tokens < ComparisonSettings().training_tokens
    assert settings_from_args(_args("--sweep")).target_l0s == (16.0, 32.0, 64.0)
    chosen = settings_from_args(_args("--target-l0", "20", "--no-synthetic", "--no-benchmark"))
    assert chosen.target_l0s == (20.0,)
    assert chosen.synthetic is None
    assert chosen.benchmark is None
    with pytest.raises(ValueError, match="needs 'standard'"):
        settings_from_args(_args("--architectures", "topk"))
    with pytest.raises(ValueError, match="target_l0s must be positive"):
        settings_from_args(_args("--target-l0", "0"))


def test_a_readme_without_the_block_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    report = ComparisonReport.from_json(json.loads((ROOT_REPORT / REPORT_JSON).read_text()))
    with pytest.raises(ValueError, match="no comparison block"):
        update_readme(readme, report)


def test_benchmark_all_prints_one_table_of_every_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    tiny = [
        "--d-in",
        "32",
        "--d-sae",
        "64",
        "--batch-size",
        "256",
        "--repeats",
        "1",
        "--steps",
        "1",
        "--no-memory",
        "--no-pipeline",
    ]
    assert cli.main(["benchmark", "--architecture", "all", *tiny]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| architecture | shape |")
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == list(ALL_ARCHITECTURES[1:])
    assert cli.main(["benchmark", "--architecture", "all", "--set", "k=3", *tiny]) == 2
    assert "--set applies to one architecture" in capsys.readouterr().err


def test_synthetic_scores_are_keyed_by_the_resolved_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[dict[str, object]] = []

    def fake_score(
        architecture: str, options: dict[str, object], settings: SyntheticSettings
    ) -> dict[str, float]:
        trained.append(options)
        return {"sae_l0": 1.0}

    monkeypatch.setattr(synthetic, "_train_and_score", fake_score)
    settings = SyntheticSettings(num_features=8, hidden_dim=4)
    synthetic._cached_score("standard", {}, settings, tmp_path)
    # Spelling out the default resolves to the same config: reused.
    synthetic._cached_score("standard", {"l1_coefficient": 1.0}, settings, tmp_path)
    assert len(trained) == 1
    synthetic._cached_score("standard", {"l1_coefficient": 2.0}, settings, tmp_path)
    assert len(trained) == 2


def test_each_model_has_its_own_readme_blocks(tmp_path: Path) -> None:
    data = json.loads((ROOT_REPORT / REPORT_JSON).read_text())
    embedded = ComparisonReport.from_json(data)
    gemma = ComparisonReport.from_json(
        {**data, "settings": {**data["settings"], "model_name": "gemma-3-270m"}}
    )
    gemma_start, gemma_end = block_markers(SUMMARY_START, SUMMARY_END, "gemma-3-270m")
    assert gemma_start.startswith("<!-- variants-table gemma-3-270m:start")
    assert gemma_end == "<!-- variants-table gemma-3-270m:end -->"
    page = tmp_path / "README.md"
    page.write_text(
        f"Prose naming `{gemma_start}` inline.\n\n"
        f"{SUMMARY_START}\nold embedded\n{SUMMARY_END}\n\n{gemma_start}\nold gemma\n{gemma_end}\n"
    )
    update_readme(page, gemma)
    text = page.read_text()
    assert "old embedded" in text  # the embedded model's block is not the gemma report's
    assert text.startswith(f"Prose naming `{gemma_start}` inline.")
    assert "old gemma" not in text
    assert "on gemma-3-270m `" in text
    update_readme(page, embedded)
    assert "old embedded" not in page.read_text()
    bare = tmp_path / "bare.md"
    bare.write_text(f"{SUMMARY_START}\n{SUMMARY_END}\n")
    with pytest.raises(ValueError, match="no comparison block for gemma-3-270m"):
        update_readme(bare, gemma)


def test_model_arguments_reach_the_settings() -> None:
    chosen = settings_from_args(
        _args("--model", "gemma-3-270m", "--layer", "12", "--d-sae", "2048", "--eval-batches", "4")
    )
    assert (chosen.model_name, chosen.layer, chosen.d_sae, chosen.eval_batches) == (
        "gemma-3-270m",
        12,
        2048,
        4,
    )
    assert chosen.batch_tokens == 2048  # the gemma3-cpu recipe's batch
    assert ComparisonSettings().batch_tokens == 4096  # the demo recipe's
    with pytest.raises(ValueError, match="tokenized for"):
        ComparisonSettings(model_name="gemma-2-2b")


def test_a_comparison_trains_every_sae_from_an_activation_cache(
    tmp_path: Path, embedded_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "acts"
    cache_activations(
        CacheRequest(output_path=cache, training_tokens=320 * 128), model=embedded_model
    )

    def no_live_contexts(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the sequence pipeline ran the model instead of reading the cache")

    monkeypatch.setattr(sequence_batches.LiveContexts, "take", no_live_contexts)
    settings = dataclasses.replace(
        TINY,
        architectures=("standard", "seq_contrastive"),
        activations_path=str(cache),
        synthetic=None,
        benchmark=None,
    )
    report = run_comparison(settings, work_dir=tmp_path / "work", report_dir=tmp_path / "report")
    assert [r.architecture for r in report.embedded] == ["standard", "seq_contrastive"]
    for run in report.embedded:
        recorded = json.loads((Path(run.path) / matched_l0.REQUEST_FILENAME).read_text())
        assert recorded["activations_path"] == str(cache)
    assert "from an activation cache" in (tmp_path / "report" / "report.md").read_text()


def test_flat_synthetic_selects_the_earlier_ground_truth() -> None:
    flat = settings_from_args(_args("--flat-synthetic"))
    assert flat.synthetic is not None
    assert (flat.synthetic.num_features, flat.synthetic.hidden_dim) == (256, 64)
    assert not flat.synthetic.structured
    assert settings_from_args(_args()).synthetic.structured
    quick_flat = settings_from_args(_args("--quick", "--flat-synthetic"))
    assert quick_flat.synthetic.training_samples == 400_000


def test_a_claim_holds_only_at_its_bar_at_equal_quality_and_matched_l0() -> None:
    def row(improvement: float, ev_gap: float = 0.0, ce_gap: float = 0.0) -> ClaimRow:
        return ClaimRow(
            "seq_contrastive", 32.0, "contextual_consistency", True, 1.0, 1.0,
            improvement, improvement > 0, ev_gap, ce_gap,
        )  # fmt: skip

    assert claim_verdict(row(0.30), both_matched=True) == "holds"
    assert claim_verdict(row(0.20), both_matched=True) == "fails (+20%, needs +25%)"
    assert claim_verdict(row(0.30, ev_gap=-0.05), both_matched=True).startswith("fails (quality")
    assert claim_verdict(row(0.30, ce_gap=-0.031), both_matched=True).startswith("fails (quality")
    assert claim_verdict(row(0.30), both_matched=False) == "inconclusive (L0 not matched)"

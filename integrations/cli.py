"""The ``sae-variants`` command: train, evaluate, demo, and list what is available.

sae-variants demo                                   # train + evaluate on the embedded model
sae-variants train --architecture standard --set l1_coefficient=5 --output runs/std
sae-variants train --model gemma-2-2b --layer 12    # the papers' setting (needs the hub)
sae-variants cache --model gemma-3-270m --layer 6 --tokens 1000000 --output acts/g6
sae-variants train --activations acts/g6 --architecture cubic_ortho --output runs/cubic
sae-variants evaluate runs/std [--json]
sae-variants export runs/msn runs/msn-stock [--to auto|standard|jumprelu] [--tolerance 0.01]
sae-variants compare [--quick] [--sweep] [--readme README.md]
sae-variants architectures | presets
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae_lens import LanguageModelSAERunnerConfig
from safetensors import SafetensorError

from sae_variants.integrations.benchmark.cache_throughput import (
    format_cache_throughput,
    time_cache_against_live,
)
from sae_variants.integrations.benchmark.data_parallel import (
    format_data_parallel,
    measure_communication_share,
    measure_throughput,
)
from sae_variants.integrations.benchmark.pipeline import (
    format_throughput,
    time_activation_pipelines,
)
from sae_variants.integrations.benchmark.sparse_decode import format_decode_timings, sweep
from sae_variants.integrations.benchmark.step_time import (
    format_timings,
    time_training_step,
    with_peak_memory,
)
from sae_variants.integrations.benchmark.validation_cost import (
    format_validation_costs,
    measure_all,
)
from sae_variants.integrations.comparison import ALL_ARCHITECTURES, BenchmarkSettings
from sae_variants.integrations.comparison.command import add_compare_arguments, run_from_args
from sae_variants.integrations.comparison.performance import measure_performance
from sae_variants.integrations.comparison.report import (
    performance_table,
    read_report,
    update_readme,
    variant_table,
    write_report,
)
from sae_variants.integrations.evaluation.evaluate import evaluate_sae, format_table
from sae_variants.integrations.evaluation.saebench import MissingSAEBenchError, saebench_core_eval
from sae_variants.integrations.export import DEFAULT_CONTEXTS, export_saved_sae
from sae_variants.integrations.models import HubAccessError
from sae_variants.integrations.models.gemma2 import GEMMA2_2B_HOOK_PRESETS
from sae_variants.integrations.models.gemma3 import MissingExtraError
from sae_variants.integrations.models.hooks import HOOK_SITES
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.activation_cache import CacheRequest, cache_activations
from sae_variants.integrations.training.checkpoints import TrainingInterrupted
from sae_variants.integrations.training.config_arguments import (
    RunConfigFlags,
    add_run_config_flags,
)
from sae_variants.integrations.training.devices import AUTO
from sae_variants.integrations.training.distributed import is_main_process, leave_process_group
from sae_variants.integrations.training.finite_guard import NonFiniteTrainingError
from sae_variants.integrations.training.pipeline import (
    TrainResult,
    resume_training,
    train_from_runner_config,
    train_sae,
)
from sae_variants.integrations.training.presets import DEMO_SAE_OPTIONS, TRAINING_PRESETS
from sae_variants.integrations.training.request import (
    MANAGED_SAE_FIELDS,
    REQUEST_RUNNER_FIELDS,
    TrainRequest,
    build_runner_config,
    parse_options,
    request_from_cache,
    training_config_class,
)
from sae_variants.integrations.training.runner import bind_run
from sae_variants.registry import registered_variants, training_architectures
from sae_variants.token_context import needs_sequence_pipeline

DEMO_OUTPUT = Path("sae_runs/demo")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"the embedded {EMBEDDED_MODEL_NAME!r} (default), 'gemma-3-270m' (extra 'gemma3') or "
        "a TransformerLens name, e.g. gemma-2-2b (with --activations: the cache's model)",
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help="a local Hugging Face folder holding --model's weights (offline checkpoints)",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="block index (default: the middle block; with --activations: the cached hook)",
    )
    parser.add_argument(
        "--site", default="resid_post", choices=list(HOOK_SITES), help="hook site in the block"
    )
    parser.add_argument("--hook", default=None, help="explicit hook name; overrides --layer/--site")


def _add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=AUTO,
        help="'auto' (default: CUDA when torch sees a GPU, else the CPU), cpu, mps, cuda or "
        "cuda:N; a device that is not there is refused before any work",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how a training run runs: device, precision, logging, checkpoints, schedule."""
    _add_device_argument(parser)
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="train the SAE under bfloat16 autocast (SAELens's autocast; for GPUs)",
    )
    parser.add_argument(
        "--autocast-lm",
        action="store_true",
        help="run the model's forward passes under bfloat16 autocast (SAELens's autocast_lm)",
    )
    parser.add_argument(
        "--context-size",
        type=int,
        default=None,
        help="tokens per context (default: the preset's; with --activations: the cache's)",
    )
    parser.add_argument(
        "--lr-warm-up-steps",
        type=int,
        default=None,
        help="learning-rate warm-up in steps; the variants' own warm-ups follow it "
        "(default: the preset's)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="write a complete, resumable checkpoint every STEPS steps (the newest is kept); "
        "SIGINT/SIGTERM always write one. `train --resume OUTPUT.partial` continues exactly",
    )
    parser.add_argument(
        "--n-checkpoints",
        type=int,
        default=0,
        help="checkpoints SAELens writes during the run, evenly spaced, under OUTPUT/checkpoints",
    )
    parser.add_argument(
        "--wandb",
        nargs="?",
        const="sae_variants",
        default=None,
        metavar="PROJECT",
        help="log to Weights & Biases through SAELens's logger (project default 'sae_variants'; "
        "WANDB_MODE=offline keeps the log on disk)",
    )
    parser.add_argument(
        "--wandb-run-name", default=None, help="the W&B run's name (default: SAELens's)"
    )


def _add_train_arguments(parser: argparse.ArgumentParser, architecture: str) -> RunConfigFlags:
    """The flags of ``train``/``demo``; ``architecture`` (found in the command line before
    parsing) decides which hyperparameter flags exist."""
    parser.add_argument(
        "--architecture",
        default="standard",
        help="a registered training architecture (see `sae-variants architectures`)",
    )
    _add_model_arguments(parser)
    _add_run_arguments(parser)
    parser.add_argument("--expansion-factor", type=int, default=8, help="d_sae = factor * d_in")
    parser.add_argument(
        "--d-sae", type=int, default=None, help="dictionary width (overrides --expansion-factor)"
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=list(TRAINING_PRESETS),
        help="training recipe (default: demo for the embedded model, gemma3-cpu for "
        "gemma-3-270m, paper otherwise)",
    )
    parser.add_argument(
        "--training-tokens",
        "--tokens",
        dest="training_tokens",
        type=int,
        default=None,
        help="tokens to train on (default: the preset's)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="training batch in tokens")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter by field name, e.g. --set l1_coefficient=5 (repeatable; the same "
        "as its own flag below, read the same way)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="'austen' (bundled; the default for the embedded model and gemma-3-270m), a local "
        ".txt/.jsonl/.json/.parquet file or saved dataset folder, or a hub dataset name",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an SAE already at --output"
    )
    known = architecture in training_architectures()
    flags = add_run_config_flags(
        parser,
        training_config_class(architecture if known else "standard"),
        managed_sae_fields=MANAGED_SAE_FIELDS,
        request_runner_fields=REQUEST_RUNNER_FIELDS,
    )
    parser.set_defaults(config_flags=flags)
    return flags


def _architecture_named(argv: list[str]) -> str:
    """The ``--architecture`` value in ``argv`` (``standard`` when absent), read before the
    parser exists because it decides which hyperparameter flags the parser has."""
    for i, arg in enumerate(argv):
        if arg == "--architecture" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--architecture="):
            return arg.partition("=")[2]
    return "standard"


def _sae_options(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters the command line sets: ``base``, then ``--set`` pairs, then the
    fields' own flags; one field named twice is refused."""
    flagged = args.config_flags.sae_options(args)
    pairs = parse_options(args.set)
    twice = sorted(set(flagged) & set(pairs))
    if twice:
        raise ValueError(
            f"{', '.join(twice)} given both with --set and with its own flag; give it once"
        )
    return {**(base or {}), **pairs, **flagged}


def _request(args: argparse.Namespace, output: Path, options: dict[str, Any]) -> TrainRequest:
    fields: dict[str, Any] = dict(
        architecture=args.architecture,
        model_name=args.model,
        model_path=args.model_path,
        layer=args.layer,
        site=args.site,
        hook_name=args.hook,
        expansion_factor=args.expansion_factor,
        d_sae=args.d_sae,
        preset=args.preset,
        training_tokens=args.training_tokens,
        train_batch_size_tokens=args.batch_size,
        lr=args.lr,
        sae_options=options,
        runner_options=args.config_flags.runner_options(args),
        output_path=output,
        overwrite=args.overwrite,
        dataset_path=args.dataset,
        seed=args.seed,
        device=args.device,
        autocast=args.autocast,
        autocast_lm=args.autocast_lm,
        context_size=args.context_size,
        lr_warm_up_steps=args.lr_warm_up_steps,
        n_checkpoints=args.n_checkpoints,
        checkpoint_every=args.checkpoint_every,
        wandb_project=args.wandb,
        wandb_run_name=args.wandb_run_name,
    )
    activations = getattr(args, "activations", None)
    if activations is not None:
        return request_from_cache(activations, **fields)
    if fields["model_name"] is None:
        fields["model_name"] = EMBEDDED_MODEL_NAME
    return TrainRequest(**fields)


def _print_plan(request: TrainRequest) -> None:
    cfg, preset = build_runner_config(request)
    print(f"architecture {cfg.sae.architecture()}  d_in {cfg.sae.d_in}  d_sae {cfg.sae.d_sae}")
    print(f"model {cfg.model_name}  hook {cfg.hook_name}  preset {preset.name}")
    if cfg.use_cached_activations:
        print(f"activations from the cache at {cfg.cached_activations_path}")
    print(
        f"tokens {cfg.training_tokens:,}  batch {cfg.train_batch_size_tokens}  "
        f"context {cfg.context_size}  lr {cfg.lr}  warm-up {cfg.lr_warm_up_steps}"
    )


def _train_and_report(request: TrainRequest, evaluate: bool, as_json: bool) -> None:
    if not as_json and is_main_process():
        _print_plan(request)
    _time_and_report(lambda: train_sae(request), request.model_path, evaluate, as_json)


def _time_and_report(
    train: Callable[[], TrainResult], model_path: str | None, evaluate: bool, as_json: bool
) -> None:
    """Run ``train``, say where the SAE went, and evaluate it if asked (under torchrun: rank 0
    alone reports and evaluates)."""
    start = time.monotonic()
    result = train()
    seconds = time.monotonic() - start
    leave_process_group()  # every rank together; rank 0's evaluation needs no group
    if not is_main_process():
        return
    if not as_json:
        print(f"trained in {seconds:.0f} s; SAE saved to {result.output_path.resolve()}")
    if not evaluate:
        return
    report = evaluate_sae(
        result.output_path, model_path=model_path, device=result.runner_config.device
    )
    if as_json:
        print(
            json.dumps(
                {"path": report.path, "train_seconds": seconds, "metrics": report.metrics},
                indent=2,
            )
        )
    else:
        print(format_table(report))


def _print_runner_config(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    """``cfg`` as JSON of SAELens's own ``to_dict``, which ``train --config`` reads back. An
    unbound config leaves the variants' run-bound fields (warm-ups that follow the learning
    rate's, PositionAware's step count and context) null: they are bound when the run starts, so
    an edited ``training_tokens`` or ``lr_warm_up_steps`` carries them along."""
    print(json.dumps(cfg.to_dict(), indent=2, default=str))


_WITH_CONFIG = frozenset(
    {"config", "model_path", "overwrite", "evaluate", "json", "dry_run", "checkpoint_every"}
)
"""The train flags that may accompany --config (the file holds everything else)."""


def read_runner_config(file: Path) -> LanguageModelSAERunnerConfig[Any]:
    """The SAELens runner config in ``file`` (JSON of ``LanguageModelSAERunnerConfig.to_dict``)."""
    if not file.is_file():
        raise FileNotFoundError(
            f"--config expects a JSON runner config file, but {file} is not one"
        )
    try:
        data = json.loads(file.read_text())
        return LanguageModelSAERunnerConfig.from_dict(data)
    except (json.JSONDecodeError, TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"{file} is not a SAELens runner config as `sae-variants train --dry-run --json` "
            f"prints it: {error}"
        ) from error


def _flags_given(argv: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """The options written in ``argv`` (at their default values too): dest -> the long flag."""
    actions = parser._option_string_actions
    given: dict[str, str] = {}
    for token in argv:
        option = token.partition("=")[0]
        if token.startswith("--") and option in actions:
            action = actions[option]
            given[action.dest] = max(action.option_strings, key=len)
    return given


def _refuse_flags_beside(args: argparse.Namespace, allowed: frozenset[str], why: str) -> None:
    """``ValueError`` naming the train flags written on the line that ``allowed`` does not list:
    ``why`` is a format string with ``{flags}``."""
    train_parser = build_parser(args.raw_argv)._subparsers._group_actions[0].choices["train"]
    given = _flags_given(args.raw_argv, train_parser)
    extra = sorted(flag for dest, flag in given.items() if dest not in allowed)
    if extra:
        raise ValueError(why.format(flags=", ".join(extra)))


def _train_from_config(args: argparse.Namespace) -> None:
    _refuse_flags_beside(
        args,
        _WITH_CONFIG,
        "--config holds the whole run, so {flags} would be ignored; edit the file instead",
    )
    cfg = read_runner_config(args.config)
    if args.dry_run:
        bind_run(cfg)  # refuses warm-ups longer than the (edited) run before anything prints
        _print_runner_config(cfg)
        return
    _time_and_report(
        lambda: train_from_runner_config(
            cfg,
            model_path=args.model_path,
            overwrite=args.overwrite,
            checkpoint_every=args.checkpoint_every,
        ),
        args.model_path,
        args.evaluate,
        args.json,
    )


_WITH_RESUME = frozenset({"resume", "evaluate", "json"})
"""The train flags that may accompany --resume (the run's folder records everything else)."""


def _resume(args: argparse.Namespace) -> None:
    _refuse_flags_beside(
        args,
        _WITH_RESUME,
        "--resume continues the run exactly as it was configured, so {flags} cannot change "
        "it; start a new run to change it",
    )
    _time_and_report(lambda: resume_training(args.resume), None, args.evaluate, args.json)


def _cmd_train(args: argparse.Namespace) -> None:
    if args.resume is not None:
        _resume(args)
        return
    if args.config is not None:
        _train_from_config(args)
        return
    request = _request(args, Path(args.output), _sae_options(args))
    if args.dry_run:
        if args.json:
            _print_runner_config(build_runner_config(request)[0])
        else:
            _print_plan(request)
        return
    _train_and_report(request, evaluate=args.evaluate, as_json=args.json)


def _cmd_cache(args: argparse.Namespace) -> None:
    request = CacheRequest(
        output_path=Path(args.output),
        training_tokens=args.training_tokens,
        model_name=args.model or EMBEDDED_MODEL_NAME,
        model_path=args.model_path,
        layer=args.layer,
        site=args.site,
        hook_name=args.hook,
        context_size=args.context_size,
        dataset_path=args.dataset,
        model_batch_size=args.model_batch_size,
        autocast_lm=args.autocast,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )
    result = cache_activations(request)
    info = result.info
    size = sum(f.stat().st_size for f in result.path.iterdir() if f.is_file())
    print(
        f"cached {info.contexts} contexts x {info.context_size} tokens of {info.hook_name} "
        f"(d_in {info.d_in}; {info.usable_tokens:,} usable tokens) from {info.model_name} in "
        f"{info.seconds:.0f} s ({info.tokens / max(info.seconds or 0, 1e-9):,.0f} tokens/s), "
        f"{size / 2**30:.2f} GiB at {result.path.resolve()}"
    )
    print(f"train from it: sae-variants train --activations {result.path} --architecture ...")


def _cmd_demo(args: argparse.Namespace) -> None:
    options = _sae_options(args, base=dict(DEMO_SAE_OPTIONS))
    _train_and_report(_request(args, Path(args.output), options), evaluate=True, as_json=args.json)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    if args.saebench is not None:
        bench = saebench_core_eval(args.path, args.saebench)
        if args.json:
            print(json.dumps({"metrics": bench.metrics, "result_file": str(bench.result_file)}))
        else:
            width = max(map(len, bench.metrics))
            print(f"{args.path}  (SAEBench core; full result: {bench.result_file})")
            print("\n".join(f"  {k:<{width}}  {v:>10.4f}" for k, v in bench.metrics.items()))
        return
    result = evaluate_sae(args.path, n_batches=args.batches, model_path=args.model_path)
    if args.json:
        print(
            json.dumps(
                {
                    "path": result.path,
                    "architecture": result.architecture,
                    "hook_name": result.hook_name,
                    "model_name": result.model_name,
                    "metrics": result.metrics,
                    "run_evals": result.run_evals,
                },
                indent=2,
                default=float,
            )
        )
    else:
        print(format_table(result))


def _cmd_benchmark_cache(args: argparse.Namespace) -> None:
    request = TrainRequest(
        architecture=args.architecture,
        model_name=args.model or EMBEDDED_MODEL_NAME,
        model_path=args.model_path,
        layer=args.layer,
        d_sae=args.d_sae[0],
        training_tokens=args.training_tokens,
        train_batch_size_tokens=args.batch_size,
        sae_options=parse_options(args.set),
    )
    result = time_cache_against_live(request, repeats=args.repeats or 2)
    print(format_cache_throughput(result))


def _cmd_benchmark_validation(args: argparse.Namespace) -> None:
    names = [v.name for v in registered_variants()]
    if args.architecture != "all" and args.architecture not in names:
        raise ValueError(
            f"--validation-cost measures this package's variants ({', '.join(names)}, or 'all'); "
            f"got {args.architecture!r}"
        )
    costs = measure_all(
        names if args.architecture == "all" else [args.architecture],
        d_in=args.d_in,
        d_sae=args.d_sae[0],
        batch_size=args.batch_size,
        repeats=args.repeats or 7,
    )
    print(format_validation_costs(costs))


def _cmd_benchmark_data_parallel(args: argparse.Namespace) -> None:
    if args.architecture == "all":
        raise ValueError("--data-parallel measures one architecture; name it with --architecture")
    repeats = args.repeats or 2
    throughput = measure_throughput(
        args.architecture,
        args.training_tokens,
        args.batch_size,
        repeats,
        model=args.model,
        model_path=args.model_path,
    )
    communication = measure_communication_share(args.d_in, args.d_sae[0], args.batch_size, repeats)
    print(format_data_parallel(throughput, communication))


def _cmd_benchmark(args: argparse.Namespace) -> None:
    if args.data_parallel:
        _cmd_benchmark_data_parallel(args)
        return
    if args.cache_vs_live:
        _cmd_benchmark_cache(args)
        return
    if args.validation_cost:
        _cmd_benchmark_validation(args)
        return
    if args.sparse_decode:
        for d_sae in args.d_sae:
            timings = sweep(args.d_in, d_sae, args.batch_size, repeats=args.repeats or 5)
            print(format_decode_timings(timings))
        return
    if args.repeats is None:
        args.repeats = 5
    if args.architecture == "all":
        if args.set:
            raise ValueError(
                "--set applies to one architecture; with --architecture all each uses "
                "its comparison plan (integrations/comparison/settings.py)"
            )
        for d_sae in args.d_sae:
            settings = BenchmarkSettings(
                d_in=args.d_in,
                d_sae=d_sae,
                batch_size=args.batch_size,
                repeats=args.repeats,
                steps=args.steps,
                memory=args.memory,
                pipeline=args.pipeline is not False,
            )
            print(performance_table(measure_performance(ALL_ARCHITECTURES, settings)))
        return
    options = parse_options(args.set)
    timings = []
    for d_sae in args.d_sae:
        timing = time_training_step(
            args.architecture,
            d_in=args.d_in,
            d_sae=d_sae,
            batch_size=args.batch_size,
            options=options,
            target_l0=args.target_l0,
            steps=args.steps,
            repeats=args.repeats,
        )
        if args.memory:
            timing = with_peak_memory(timing, options, args.target_l0)
        timings.append(timing)
    print(format_timings(timings))
    if args.pipeline is None:
        args.pipeline = needs_sequence_pipeline(training_config_class(args.architecture))
    if args.pipeline:
        print(format_throughput(time_activation_pipelines(args.architecture)))


def _cmd_export(args: argparse.Namespace) -> None:
    report = export_saved_sae(
        args.path,
        args.output,
        target=args.to or ("standard" if args.command == "export-standard" else "auto"),
        max_explained_variance_change=args.tolerance,
        n_contexts=args.contexts,
        activations_path=args.activations,
        model_path=args.model_path,
        overwrite=args.overwrite,
    )
    summary = {
        "output": str(Path(args.output).resolve()),
        "architecture": report.sae.cfg.architecture(),
        **report.as_metadata(),
        "explained_variance_change": report.change,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{report.source_architecture} -> SAELens {summary['architecture']} ({report.method}) on "
        f"{report.evaluated_rows} held-out rows: explained variance "
        f"{report.explained_variance_source:.4f} -> {report.explained_variance_export:.4f} "
        f"({report.change:+.4f}), L0 {report.l0_source:.1f} -> {report.l0_export:.1f}, "
        f"active-set Jaccard {report.active_set_jaccard:.3f}; saved to {summary['output']} "
        "(SAELens loads it without sae_variants)"
    )


def _cmd_compare(args: argparse.Namespace) -> None:
    report = run_from_args(args, "sae-variants " + " ".join(args.raw_argv))
    print(variant_table(report))
    print(
        f"report: {Path(report.settings['report_dir']) / 'report.md'}  "
        f"(wall time {report.wall_seconds / 60:.1f} min)"
    )


def _cmd_report(args: argparse.Namespace) -> None:
    report = read_report(args.report_dir)
    write_report(report, args.report_dir)
    for page in args.readme:
        update_readme(page, report)
    print(variant_table(report))


def _cmd_architectures(_: argparse.Namespace) -> None:
    ours = {v.name for v in registered_variants()}
    for name in sorted(training_architectures()):
        print(f"{name}{'  (sae_variants)' if name in ours else ''}")


def _cmd_presets(_: argparse.Namespace) -> None:
    for preset in TRAINING_PRESETS.values():
        print(f"{preset.name:<10} {preset.description}")
    print(
        "gemma-2-2b hook presets: "
        + ", ".join(f"layer {layer} {site}" for layer, site in GEMMA2_2B_HOOK_PRESETS)
    )


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command's parser; ``argv`` (the command line to be parsed) picks the architecture
    whose hyperparameter flags ``train`` and ``demo`` get."""
    architecture = _architecture_named(list(argv or []))
    parser = argparse.ArgumentParser(prog="sae-variants", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of its one-line message",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    # Exact flag names only: with a flag per config field, an abbreviation could mean another.
    train = commands.add_parser(
        "train", help="train an SAE with SAELens's runner", allow_abbrev=False
    )
    _add_train_arguments(train, architecture)
    train.add_argument("--output", default="sae_runs/latest", help="where the trained SAE is saved")
    train.add_argument(
        "--activations",
        default=None,
        metavar="DIR",
        help="train from an activation cache (`sae-variants cache`) instead of running the model; "
        "--tokens defaults to one pass over it",
    )
    train.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue an interrupted run from its newest complete checkpoint, exactly: DIR is "
        "its OUTPUT.partial folder (or OUTPUT, or a checkpoint in it)",
    )
    train.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="train the complete SAELens runner config in FILE (JSON, as `--dry-run --json` "
        "prints it, edited or not); only --model-path, --overwrite, --evaluate, --json and "
        "--dry-run may accompany it",
    )
    train.add_argument(
        "--evaluate", action="store_true", help="evaluate on held-out text afterwards"
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved plan and stop (with --json: the complete SAELens runner config)",
    )
    train.add_argument(
        "--json",
        action="store_true",
        help="print the evaluation (with --dry-run: the resolved runner config) as JSON",
    )
    train.set_defaults(run=_cmd_train)

    cache = commands.add_parser(
        "cache",
        help="write an activation cache (SAELens's CacheActivationsRunner: one row per context)",
    )
    _add_model_arguments(cache)
    cache.add_argument(
        "--training-tokens",
        "--tokens",
        dest="training_tokens",
        type=int,
        required=True,
        help="tokens to cache (rounded up to whole model batches in every shard)",
    )
    cache.add_argument("--output", required=True, help="the cache folder to write")
    cache.add_argument(
        "--dataset",
        default=None,
        help="as for train: 'austen' (default for the offline models), a local file or saved "
        "dataset folder, or a hub dataset name",
    )
    cache.add_argument(
        "--context-size", type=int, default=None, help="tokens per context (default: the preset's)"
    )
    cache.add_argument(
        "--model-batch-size", type=int, default=16, help="contexts per forward pass (default 16)"
    )
    cache.add_argument("--autocast", action="store_true", help="run the model in bfloat16 autocast")
    cache.add_argument("--seed", type=int, default=42)
    _add_device_argument(cache)
    cache.add_argument("--overwrite", action="store_true", help="replace a cache at --output")
    cache.set_defaults(run=_cmd_cache)

    demo = commands.add_parser(
        "demo",
        help="train the standard SAE on the embedded model and evaluate it",
        allow_abbrev=False,
    )
    _add_train_arguments(demo, architecture)
    demo.add_argument("--output", default=str(DEMO_OUTPUT))
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(run=_cmd_demo)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved SAE on held-out text")
    evaluate.add_argument("path", help="a folder written by `sae-variants train` or SAELens")
    evaluate.add_argument("--batches", type=int, default=8, help="eval batches of 16 contexts")
    evaluate.add_argument(
        "--model-path", default=None, help="a local Hugging Face folder of the SAE's model"
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument(
        "--saebench",
        metavar="OUT_DIR",
        help="run SAEBench's core evaluation instead (its result JSON goes to OUT_DIR; needs "
        "`pip install --no-deps sae-bench==0.6.0 && pip install tabulate pandas pydantic`)",
    )
    evaluate.set_defaults(run=_cmd_evaluate)

    bench = commands.add_parser(
        "benchmark", help="training-step time against SAELens standard, side by side"
    )
    bench.add_argument(
        "--architecture",
        required=True,
        help="a registered architecture, or 'all': every architecture of the comparison "
        "in one table (time, memory, pipeline throughput against standard)",
    )
    bench.add_argument("--d-in", type=int, default=256)
    bench.add_argument("--d-sae", type=int, nargs="+", default=[4096, 16384])
    bench.add_argument("--batch-size", type=int, default=4096)
    bench.add_argument(
        "--target-l0", type=int, default=64, help="features firing per row in both SAEs"
    )
    bench.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    bench.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved repeats; the median ratio is reported (default 5; 2 with --cache-vs-live)",
    )
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument(
        "--pipeline",
        dest="pipeline",
        action="store_true",
        default=None,
        help="also time the sequence-aware activation pipeline against SAELens's store "
        "(default: when the architecture trains on sequence-structured batches)",
    )
    bench.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    bench.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the peak-memory measurement (one subprocess per architecture)",
    )
    bench.add_argument(
        "--cache-vs-live",
        action="store_true",
        help="instead: training throughput from an activation cache against live training "
        "(one cache written first; uses --model/--layer/--tokens, the first --d-sae, --batch-size)",
    )
    bench.add_argument(
        "--sparse-decode",
        action="store_true",
        help="instead: the decoder product with its gradients, dense against over the active "
        "codes only, at code densities 0.5%%-20%%, for each --d-sae (one --d-in; "
        "integrations/benchmark/sparse_decode.py)",
    )
    bench.add_argument(
        "--validation-cost",
        action="store_true",
        help="instead: what encode's input checks cost, per variant, at --d-in, the first "
        "--d-sae and --batch-size (integrations/benchmark/validation_cost.py)",
    )
    bench.add_argument(
        "--data-parallel",
        action="store_true",
        help="instead: training tokens/s in one process against two torchrun processes (the "
        "architecture on --model, --tokens, global --batch-size), and the all-reduce's share "
        "of a step at --d-in x the first --d-sae (integrations/benchmark/data_parallel.py)",
    )
    bench.add_argument("--model", default=None, help="with --cache-vs-live: the model to train on")
    bench.add_argument("--model-path", default=None, help="with --cache-vs-live: its local folder")
    bench.add_argument("--layer", type=int, default=None, help="with --cache-vs-live: block index")
    bench.add_argument(
        "--training-tokens",
        "--tokens",
        dest="training_tokens",
        type=int,
        default=409_600,
        help="with --cache-vs-live: tokens per training run (default 409,600)",
    )
    bench.set_defaults(run=_cmd_benchmark)

    export = commands.add_parser(
        "export",
        aliases=["export-standard"],
        help="save a variant SAE as a stock SAELens SAE (standard/jumprelu), measured first",
        description="Write a stock SAELens copy of a saved variant SAE, for tools that know only "
        "SAELens's built-in architectures (SAEDashboard, Neuronpedia). Exact where the variant "
        "allows (SeqContrastive without layer norm), folded for QuCL (the quantizer dropped), "
        "distilled for the normalizing encoders (an affine encoder fitted by least squares, "
        "JumpReLU thresholds matched to each feature's firing rate); always measured on held-out "
        "rows and refused beyond --tolerance. `export-standard` is `export --to standard`.",
    )
    export.add_argument("path", help="a saved variant SAE")
    export.add_argument("output", help="where the stock SAE is written (a new or empty folder)")
    export.add_argument(
        "--to",
        choices=["auto", "standard", "jumprelu"],
        default=None,
        help="the stock architecture (default auto: standard for exact and folded exports, "
        "jumprelu for distilled ones)",
    )
    export.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="largest |explained-variance change| accepted (default 0.01)",
    )
    export.add_argument(
        "--contexts",
        type=int,
        default=DEFAULT_CONTEXTS,
        help=f"held-out contexts to fit and measure on (default {DEFAULT_CONTEXTS}; the last "
        "quarter of the rows measure)",
    )
    export.add_argument(
        "--activations",
        metavar="DIR",
        help="read held-out rows from an activation cache of the SAE's hook (its last "
        "--contexts contexts) instead of running the model on the bundled held-out text",
    )
    export.add_argument("--model-path", help="a local folder with the SAE's model's weights")
    export.add_argument("--overwrite", action="store_true", help="replace an SAE at OUTPUT")
    export.add_argument("--json", action="store_true")
    export.set_defaults(run=_cmd_export)

    compare = commands.add_parser(
        "compare",
        help="every variant against SAELens standard/topk/matryoshka_batchtopk: report + plots",
    )
    add_compare_arguments(compare)
    compare.set_defaults(run=_cmd_compare)

    report = commands.add_parser(
        "report", help="re-render a finished comparison's report.md and tables from its report.json"
    )
    report.add_argument("report_dir", type=Path, help="a folder written by `sae-variants compare`")
    report.add_argument(
        "--readme",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="rewrite the generated comparison blocks of these pages",
    )
    report.set_defaults(run=_cmd_report)

    commands.add_parser("architectures", help="list trainable architectures").set_defaults(
        run=_cmd_architectures
    )
    commands.add_parser("presets", help="list training and hook presets").set_defaults(
        run=_cmd_presets
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(raw_argv).parse_args(raw_argv)
    args.raw_argv = raw_argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
        leave_process_group()
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"sae-variants {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(f"sae-variants {args.command}: {err}", file=sys.stderr)
        return 128 + err.signal_number
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"sae-variants {args.command}: interrupted before training started (or a second "
            "time); nothing to resume from was written",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT
    except NonFiniteTrainingError as err:
        if args.debug:
            raise
        print(f"sae-variants {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,  # missing, unreadable, unwritable or clashing files and folders
    SafetensorError,
    HubAccessError,
    MissingExtraError,
    MissingSAEBenchError,
)
"""What the command line reports as one line and exit status 2 (``--debug`` shows the
traceback): errors in what the user gave it, never bugs."""


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    return " ".join(text.split())


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()

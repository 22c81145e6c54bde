"""Data-parallel training (``integrations/training/distributed.py``) launched by torchrun: two gloo
processes on the CPU, on the embedded model.

The main check trains SAELens ``standard`` and each of the five variants (CubicOrtho with both
forms of its penalty and with its ratio-rank weights, MultiScaleNorm once more with its SVD
revival firing) for 6 steps twice on the same token stream: in one process with the global batch
of 1024 tokens, and under ``torchrun --nproc-per-node 2`` with 512 tokens per rank. Every rank
must end with the same state (parameters and every buffer, training-only ones included), and
that state must equal the one-process run's: statistics are reduced over the ranks, terms
coupling the rows of a batch (contrastive terms, the sequence pool, dropout masks,
micro-batches) see the global batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from data_parallel_scenarios import run_scenario
from safetensors.torch import load_file

from sae_variants.integrations.training.checkpoints import checkpoint_world_size
from sae_variants.integrations.training.distributed import (
    DataParallel,
    checkpoints_from_rank_zero,
    collective_timeout,
    contexts_per_share,
    global_sample_name,
    launched_data_parallel,
    per_rank_config,
    rank_device,
    shard_dataset,
)

WORKER = Path(__file__).with_name("data_parallel_worker.py")
ARCHITECTURES = [
    "standard",
    "cubic_ortho",
    "cubic_ortho:blocks",
    "cubic_ortho:ratio_rank",
    "qucl",
    "multiscale_norm",
    "multiscale_norm:revival",
    "seq_contrastive",
    "position_aware",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
ENV.pop("WORLD_SIZE", None)


def _torchrun(*argv: str, nproc: int = 2) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(nproc), *argv]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both runs of every architecture (about a minute)."""
    root = tmp_path_factory.mktemp("data_parallel")
    _run([sys.executable, str(WORKER), str(root / "one"), "1024", *ARCHITECTURES])
    _run(_torchrun(str(WORKER), str(root / "two"), "1024", *ARCHITECTURES))
    return root


CACHED = ["standard", "seq_contrastive"]
"""Trained from an activation cache too: SAELens's store reads each rank's share of the rows, the
sequence pool reads its share of each refill from the whole cache."""


@pytest.fixture(scope="module")
def trained_from_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both runs of :data:`CACHED` from one activation cache of 256 contexts (about 40 s)."""
    from sae_variants.integrations.training.activation_cache import (
        CacheRequest,
        cache_activations,
    )

    root = tmp_path_factory.mktemp("data_parallel_cache")
    cache = root / "acts"
    cache_activations(
        CacheRequest(output_path=cache, training_tokens=256 * 64, context_size=64, device="cpu")
    )
    cached = ["1024", "--cache", str(cache), *CACHED]
    _run([sys.executable, str(WORKER), str(root / "one"), *cached])
    _run(_torchrun(str(WORKER), str(root / "two"), *cached))
    return root


def _state(root: Path, run: str, name: str, rank: int) -> dict[str, torch.Tensor]:
    file = root / run / f"{name.replace(':', '-')}-state-rank{rank}.pt"
    return torch.load(file, weights_only=True)


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_rank_ends_with_the_same_state(trained: Path, architecture: str) -> None:
    rank0, rank1 = (_state(trained, "two", architecture, r) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name, tensor in rank0.items():
        assert tensor.equal(rank1[name]), f"{architecture}: {name} differs between the ranks"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_two_ranks_of_batch_b_reproduce_one_process_of_batch_2b(
    trained: Path, architecture: str
) -> None:
    _assert_runs_match(trained, architecture)
    if architecture == "multiscale_norm:revival":  # the gathered-residual path did run
        assert int(_state(trained, "one", architecture, 0)["features_revived"]) > 0


@pytest.mark.parametrize("architecture", CACHED)
def test_two_ranks_reading_an_activation_cache_reproduce_one_process(
    trained_from_cache: Path, architecture: str
) -> None:
    _assert_runs_match(trained_from_cache, architecture)
    rank0, rank1 = (_state(trained_from_cache, "two", architecture, r) for r in (0, 1))
    for name, tensor in rank0.items():
        assert tensor.equal(rank1[name]), f"{architecture}: {name} differs between the ranks"


def _assert_runs_match(root: Path, architecture: str) -> None:
    one = _state(root, "one", architecture, 0)
    two = _state(root, "two", architecture, 0)
    assert one.keys() == two.keys()
    for name, tensor in one.items():
        if not tensor.is_floating_point():
            assert tensor.equal(two[name]), f"{architecture}: {name}"
            continue
        # Float rounding differs (sums over 1024 rows against two sums over 512); a run on a
        # differently ordered stream lands about 0.2 away (measured on standard).
        difference = _relative_difference(tensor, two[name])
        assert difference < 2e-3, f"{architecture}: {name} differs by {difference:.2e}"


def test_the_saved_sae_is_written_once_by_rank_0(trained: Path) -> None:
    saved = sorted(p.name for p in (trained / "two" / "standard").iterdir())
    assert "sae_weights.safetensors" in saved
    assert "cfg.json" in saved
    assert not (trained / "two" / "standard.partial").exists()
    recorded = json.loads((trained / "two" / "standard" / "runner_cfg.json").read_text())
    assert recorded["train_batch_size_tokens"] == 1024  # the global batch, not a rank's share
    one = load_file(trained / "one" / "standard" / "sae_weights.safetensors")
    two = load_file(trained / "two" / "standard" / "sae_weights.safetensors")
    for name, tensor in one.items():
        assert _relative_difference(tensor, two[name]) < 2e-3, name


# ------------------------------------------------------------------------- checkpoint, resume

RUN = ["--training-tokens", "16384", "--batch-size", "1024"]
RUN += ["--d-sae", "256", "--lr-warm-up-steps", "0", "--context-size", "64"]


def _cli(*argv: str) -> list[str]:
    return [shutil_which_sae_variants(), *argv]


def shutil_which_sae_variants() -> str:
    """The ``sae-variants`` script beside this interpreter (what ``$(which sae-variants)`` finds)."""
    script = Path(sys.executable).with_name("sae-variants")
    assert script.is_file(), f"sae-variants is not installed beside {sys.executable}"
    return str(script)


@pytest.mark.parametrize("architecture", ["standard", "seq_contrastive"])
def test_a_distributed_run_interrupted_by_sigint_resumes_to_the_uninterrupted_result(
    tmp_path: Path, architecture: str
) -> None:
    """SAELens's store (each rank's share of the stream in its checkpoint), or the sequence pool
    every rank holds whole (its activations recomputed on resume)."""
    run = [*RUN, "--architecture", architecture]
    _run(_torchrun(*_cli("train", *run, "--output", str(tmp_path / "full"))))

    output = tmp_path / "run"
    command = _torchrun(*_cli("train", *run, "--checkpoint-every", "4", "--output", str(output)))
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    first = tmp_path / "run.partial" / "checkpoints" / "step-4"
    deadline = time.monotonic() + 300
    while not first.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # torchrun passes it on to both ranks
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "training stopped before step" in stderr, stderr[-3000:]
    checkpoint = next((tmp_path / "run.partial" / "checkpoints").iterdir())
    assert checkpoint_world_size(checkpoint) == 2
    own_state = {
        "standard": "sae_variants_mixing_buffer.safetensors",
        "seq_contrastive": "sequence_batches_state.safetensors",
    }
    assert (checkpoint / "rank-1" / own_state[architecture]).is_file()

    if architecture == "standard":  # (the refusal does not depend on the architecture)
        _check_one_process_refuses_to_resume(tmp_path / "run.partial")

    _run(_torchrun(*_cli("train", "--resume", str(tmp_path / "run.partial"))))
    expected = load_file(tmp_path / "full" / "sae_weights.safetensors")
    got = load_file(tmp_path / "run" / "sae_weights.safetensors")
    for name, tensor in expected.items():
        assert tensor.equal(got[name]), f"{name} differs after resuming"


def _check_one_process_refuses_to_resume(staging: Path) -> None:
    one_process = subprocess.run(
        _cli("train", "--resume", str(staging)),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert one_process.returncode == 2
    assert "written by a run of 2 process(es)" in one_process.stderr


# ------------------------------------------------------------------------------- bad setups


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused() -> None:
    from sae_variants.integrations.training.request import TrainRequest, build_runner_config

    cfg, _ = build_runner_config(TrainRequest(train_batch_size_tokens=1000, d_sae=64))
    with pytest.raises(ValueError, match="must split evenly over the 3 ranks"):
        per_rank_config(cfg, DataParallel(rank=0, world_size=3, local_rank=0), "cpu")
    ranked = per_rank_config(cfg, DataParallel(rank=1, world_size=2, local_rank=1), "cpu")
    assert ranked.train_batch_size_tokens == 500
    assert ranked.training_tokens // 500 == cfg.training_tokens // 1000
    assert not ranked.logger.log_to_wandb


def test_contexts_are_dealt_in_blocks_so_the_ranks_slices_make_the_global_batch() -> None:
    from datasets import Dataset

    from sae_variants.integrations.training.request import TrainRequest, build_runner_config

    data = Dataset.from_dict({"tokens": [[i] for i in range(12)]})
    shares = [shard_dataset(data, DataParallel(r, 2, r), block=2)["tokens"] for r in (0, 1)]
    assert shares == [[[0], [1], [4], [5], [8], [9]], [[2], [3], [6], [7], [10], [11]]]
    with pytest.raises(ValueError, match="fewer than the 16 one round of 2 ranks takes"):
        shard_dataset(data, DataParallel(0, 2, 0), block=8)

    two = DataParallel(rank=0, world_size=2, local_rank=0)
    request = {"train_batch_size_tokens": 1024, "context_size": 64, "d_sae": 64}
    cfg, _ = build_runner_config(TrainRequest(**request))
    assert contexts_per_share(per_rank_config(cfg, two, "cpu"), two) == 8  # 512 tokens each
    cfg, _ = build_runner_config(TrainRequest(**{**request, "context_size": 96}))
    assert contexts_per_share(per_rank_config(cfg, two, "cpu"), two) == 1  # not whole contexts
    sequence = TrainRequest(architecture="seq_contrastive", **request)
    cfg, _ = build_runner_config(sequence)
    assert contexts_per_share(per_rank_config(cfg, two, "cpu"), two) == (
        cfg.store_batch_size_prompts // 2
    )
    cfg.store_batch_size_prompts = 7
    with pytest.raises(ValueError, match=r"store_batch_size_prompts=7 .* use a multiple of 2"):
        per_rank_config(cfg, two, "cpu")


def test_saelens_checkpoints_are_named_by_the_whole_runs_samples() -> None:
    assert global_sample_name("2048", 2) == "4096"
    assert global_sample_name("final_4096", 4) == "final_16384"
    assert global_sample_name("best", 2) == "best"
    from sae_lens.training.sae_trainer import SAETrainer

    names: dict[int, list[str]] = {0: [], 1: []}
    for rank in (0, 1):
        trainer: Any = SAETrainer.__new__(SAETrainer)  # only its save_checkpoint is used
        trainer.save_checkpoint = lambda checkpoint_name, rank=rank: names[rank].append(
            checkpoint_name
        )
        checkpoints_from_rank_zero(DataParallel(rank=rank, world_size=2, local_rank=rank), trainer)
        trainer.save_checkpoint("final_512")
    assert names == {0: ["final_1024"], 1: []}


def test_leaving_the_process_group_cannot_hold_the_process_forever(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    import torch.distributed as dist

    from sae_variants.integrations.training import distributed

    calls: list[str] = []
    never = threading.Event()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(
        dist, "destroy_process_group", lambda: calls.append("destroy") or never.wait()
    )
    monkeypatch.setattr(distributed, "_left", threading.Event())
    start = time.monotonic()
    distributed.leave_process_group(timeout=0.2)
    assert time.monotonic() - start < 5
    assert "did not finish tearing down its process group" in caplog.text
    distributed.leave_process_group(timeout=0.2)  # the command's second call: nothing more
    assert calls == ["barrier", "destroy"]
    never.set()


def test_a_per_rank_batch_that_breaks_multiscale_micro_batches_is_refused() -> None:
    from sae_variants.integrations.training.request import TrainRequest, build_runner_config

    two = DataParallel(rank=0, world_size=2, local_rank=0)
    request = TrainRequest(architecture="multiscale_norm", d_sae=64, train_batch_size_tokens=1028)
    cfg, _ = build_runner_config(request)
    with pytest.raises(ValueError, match=r"514 tokens, which do not split into the grad_acc"):
        per_rank_config(cfg, two, "cpu")
    cfg, _ = build_runner_config(TrainRequest(architecture="multiscale_norm", d_sae=64))
    per_rank_config(cfg, two, "cpu")


def test_a_checkpoint_dealt_out_otherwise_is_refused(tmp_path: Path) -> None:
    from sae_variants.integrations.training.checkpoints import (
        DEALING,
        RESUME_STATE_FILENAME,
        check_resumable_by,
    )

    torch.save({"step": 4, "world_size": 2}, tmp_path / RESUME_STATE_FILENAME)
    with pytest.raises(ValueError, match="dealt contexts to its ranks one by one"):
        check_resumable_by(tmp_path, 2)
    torch.save({"step": 4, "world_size": 2, "dealing": DEALING}, tmp_path / RESUME_STATE_FILENAME)
    check_resumable_by(tmp_path, 2)
    with pytest.raises(ValueError, match="resume it with 2"):
        check_resumable_by(tmp_path, 1)


def test_the_launcher_environment_is_read_and_checked() -> None:
    assert launched_data_parallel({}) is None
    assert launched_data_parallel({"WORLD_SIZE": "1", "RANK": "0"}) is None
    layout = launched_data_parallel({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert layout == DataParallel(rank=3, world_size=4, local_rank=1)
    assert not layout.is_main
    with pytest.raises(ValueError, match="inconsistent launcher environment"):
        launched_data_parallel({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="SAE_VARIANTS_DIST_TIMEOUT must be a positive"):
        collective_timeout({"SAE_VARIANTS_DIST_TIMEOUT": "0"})
    assert collective_timeout({"SAE_VARIANTS_DIST_TIMEOUT": "12"}) == timedelta(seconds=12)
    with pytest.raises(ValueError, match="would put every rank on one GPU"):
        rank_device("cuda:0", layout)
    assert rank_device("cpu", layout) == "cpu"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(scenario: str) -> dict[int, str]:
    with mp.Manager() as manager:
        errors = manager.dict()
        context = mp.start_processes(
            run_scenario,
            args=(2, _free_port(), scenario, errors),
            nprocs=2,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + 120
        while not all(not p.is_alive() for p in context.processes):
            assert time.monotonic() < deadline, f"{scenario}: a rank hung"
            time.sleep(0.1)
        return dict(errors)


def test_ranks_started_with_different_configs_all_refuse_to_train() -> None:
    errors = _spawn("config")
    assert set(errors) == {0, 1}
    assert all(
        "rank(s) [1] were started with another training config" in e for e in errors.values()
    )


def test_replicas_that_drift_apart_are_reported_by_name() -> None:
    errors = _spawn("diverged")
    assert set(errors) == {0, 1}
    assert all("differ in weight" in e and "bias" not in e for e in errors.values())


def test_a_rank_that_dies_does_not_leave_the_others_waiting() -> None:
    start = time.monotonic()
    errors = _spawn("dies")
    assert 0 in errors, "the surviving rank returned from a collective its peer never joined"
    assert time.monotonic() - start < 60


def test_a_non_finite_step_on_one_rank_stops_every_rank() -> None:
    errors = _spawn("non_finite")
    assert "step 5: non-finite loss terms loss, mse_loss" in errors[1]
    assert "step 5: another rank's step was non-finite" in errors[0]


def test_a_term_over_the_global_batch_gets_the_one_process_gradient() -> None:
    assert _spawn("shared_term") == {}


def test_a_signal_repeated_while_the_ranks_write_a_checkpoint_lets_them_finish() -> None:
    from sae_variants.integrations.training.checkpoints import CheckpointSeam

    seam = CheckpointSeam(iter([]), None, lambda _checkpoint: "")
    seam.training_started = True
    seam.writing = True
    seam.on_signal(signal.SIGINT, None)  # ignored: the checkpoint under way completes
    assert seam.signal_received is None
    seam.writing = False
    seam.on_signal(signal.SIGINT, None)
    assert seam.signal_received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # a second one outside a checkpoint insists
        seam.on_signal(signal.SIGINT, None)

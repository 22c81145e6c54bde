"""Data-parallel training (``integrations/training/distributed.py``) launched by torchrun: two gloo
processes on the CPU, on the embedded model.

The main check trains SAELens ``standard`` and each of the five variants (CubicOrtho with both forms
of its penalty) for 8 steps twice on the
same token stream: in one process with the global batch of 1024 tokens, and under
``torchrun --nproc-per-node 2`` with 512 tokens per rank. Every rank must end with the same state
(parameters and every buffer, training-only ones included), and that state must equal the
one-process run's where the step's loss is a mean over rows and every statistic is reduced over
the ranks. The variants whose loss couples the rows of a batch in ways kept per rank (documented
in ``docs/distributed.md``) are marked as known differences: the mark is strict, so the day one
of them matches, the test says so.
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

import pytest
import torch
import torch.multiprocessing as mp
from data_parallel_scenarios import run_scenario
from safetensors.torch import load_file

from sae_variants.integrations.training.checkpoints import checkpoint_world_size
from sae_variants.integrations.training.distributed import (
    DataParallel,
    collective_timeout,
    launched_data_parallel,
    per_rank_config,
    rank_device,
)

WORKER = Path(__file__).with_name("data_parallel_worker.py")
ARCHITECTURES = [
    "standard",
    "cubic_ortho",
    "cubic_ortho:blocks",
    "qucl",
    "multiscale_norm",
    "seq_contrastive",
    "position_aware",
]
PER_RANK_TERMS = {
    "qucl": "InfoNCE anchors and keys, and eq. 5's input weights, come from the rank's batch",
    "seq_contrastive": "each rank samples contexts from its own pool and pairs within its batch",
    "position_aware": "each rank samples contexts from its own pool (and its own dropout masks)",
}
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


@pytest.mark.parametrize(
    "architecture",
    [
        pytest.param(a, marks=pytest.mark.xfail(reason=PER_RANK_TERMS[a], strict=True))
        if a in PER_RANK_TERMS
        else a
        for a in ARCHITECTURES
    ],
)
def test_two_ranks_of_batch_b_reproduce_one_process_of_batch_2b(
    trained: Path, architecture: str
) -> None:
    one = _state(trained, "one", architecture, 0)
    two = _state(trained, "two", architecture, 0)
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

RUN = ["--architecture", "standard", "--training-tokens", "16384", "--batch-size", "1024"]
RUN += ["--d-sae", "256", "--lr-warm-up-steps", "0", "--context-size", "64"]


def _cli(*argv: str) -> list[str]:
    return [shutil_which_sae_variants(), *argv]


def shutil_which_sae_variants() -> str:
    """The ``sae-variants`` script beside this interpreter (what ``$(which sae-variants)`` finds)."""
    script = Path(sys.executable).with_name("sae-variants")
    assert script.is_file(), f"sae-variants is not installed beside {sys.executable}"
    return str(script)


def test_a_distributed_run_interrupted_by_sigint_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    _run(_torchrun(*_cli("train", *RUN, "--output", str(tmp_path / "full"))))

    output = tmp_path / "run"
    command = _torchrun(*_cli("train", *RUN, "--checkpoint-every", "4", "--output", str(output)))
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
    assert (checkpoint / "rank-1" / "sae_variants_mixing_buffer.safetensors").is_file()

    one_process = subprocess.run(
        _cli("train", "--resume", str(tmp_path / "run.partial")),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert one_process.returncode == 2
    assert "written by a run of 2 process(es)" in one_process.stderr

    _run(_torchrun(*_cli("train", "--resume", str(tmp_path / "run.partial"))))
    expected = load_file(tmp_path / "full" / "sae_weights.safetensors")
    got = load_file(tmp_path / "run" / "sae_weights.safetensors")
    for name, tensor in expected.items():
        assert tensor.equal(got[name]), f"{name} differs after resuming"


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

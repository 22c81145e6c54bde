"""Interrupting a run loses nothing, and a resumed run equals the uninterrupted one.

Each architecture the comparison trains is run three ways on the embedded model, in
the command line: uninterrupted; in a subprocess, interrupted by a real SIGINT sent by this
process once the run has written its first periodic checkpoint; resumed with
``train --resume``. The resumed SAE must equal the uninterrupted one bit for bit (CPU kernels
here are deterministic; every run uses one thread), and so must the variant's training log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_variants.integrations.cli import main
from sae_variants.integrations.comparison import ALL_ARCHITECTURES

RUN = ["--training-tokens", "32768", "--batch-size", "1024", "--d-sae", "256"]
RUN += ["--lr-warm-up-steps", "0", "--context-size", "64"]
EXTRA = {"matryoshka_batchtopk": ["--set", "matryoshka_widths=32,64,128,256"]}
"""What an architecture needs beyond the shared flags (SAELens's Matryoshka SAE has no default
widths)."""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _train(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sae_variants.integrations.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)


def _in_process(*argv: str) -> int:
    """``sae-variants ARGV`` in this process, on one thread as the subprocesses run (the same
    kernels, so the same bits), skipping a subprocess's start-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(list(argv))
    finally:
        torch.set_num_threads(threads)


def _interrupt(architecture: str, output: Path) -> subprocess.CompletedProcess[str]:
    """Start a run, wait for its first periodic checkpoint, send SIGINT, wait for the exit."""
    command = [sys.executable, "-m", "sae_variants.integrations.cli", "train"]
    command += ["--architecture", architecture, *RUN, *EXTRA.get(architecture, [])]
    command += ["--checkpoint-every", "8"]
    command += ["--output", str(output)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    first = output.with_name(output.name + ".partial") / "checkpoints" / "step-8"
    deadline = time.monotonic() + 300
    while not first.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _logs(folder: Path) -> dict[str, object]:
    return {
        p.name: json.loads(p.read_text())
        for p in folder.glob("*.json")
        if p.name not in ("cfg.json", "runner_cfg.json")  # these record the output path
    }


DEFAULT_SUITE = ("standard", "qucl", "multiscale_norm")
"""Resumed in the default suite: SAELens's own, the variant with resumable state beside its
buffers (QuCL's decisions) and the one that acts on its optimizer; the rest run with -m slow."""


@pytest.mark.parametrize(
    "architecture",
    [
        a if a in DEFAULT_SUITE else pytest.param(a, marks=pytest.mark.slow)
        for a in ALL_ARCHITECTURES
    ],
)
def test_a_run_interrupted_by_sigint_resumes_to_the_uninterrupted_result(
    architecture: str, tmp_path: Path
) -> None:
    extra = EXTRA.get(architecture, [])
    full = ["train", "--architecture", architecture, *RUN, *extra]
    assert _in_process(*full, "--output", str(tmp_path / "full")) == 0

    interrupted = _interrupt(architecture, tmp_path / "run")
    assert interrupted.returncode == 128 + signal.SIGINT, interrupted.stderr[-2000:]
    message = interrupted.stderr.strip().splitlines()[-1]
    assert "SIGINT: training stopped before step" in message
    assert f"sae-variants train --resume {tmp_path / 'run.partial'}" in message
    assert not (tmp_path / "run").exists()

    assert _in_process("train", "--resume", str(tmp_path / "run.partial")) == 0
    assert not (tmp_path / "run.partial").exists()

    expected = load_file(tmp_path / "full" / "sae_weights.safetensors")
    got = load_file(tmp_path / "run" / "sae_weights.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert tensor.equal(got[name]), f"{name} differs after resuming"
    assert _logs(tmp_path / "full") == _logs(tmp_path / "run")


def test_sigterm_also_checkpoints_and_only_the_newest_checkpoint_is_kept(tmp_path: Path) -> None:
    output = tmp_path / "run"
    command = [sys.executable, "-m", "sae_variants.integrations.cli", "train"]
    command += ["--architecture", "standard", *RUN, "--checkpoint-every", "4"]
    command += ["--output", str(output)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    checkpoints = tmp_path / "run.partial" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "step-8").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM: training stopped before step" in stderr
    kept = sorted(p.name for p in checkpoints.iterdir())
    assert len(kept) == 1, kept
    assert kept[0].startswith("step-")
    assert int(kept[0].removeprefix("step-")) >= 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "is not an interrupted run"),
        (lambda p: (p / "x.partial").mkdir() or p / "x.partial", "is not an interrupted run"),
    ],
)
def test_resume_refuses_what_is_not_an_interrupted_run(
    tmp_path: Path, make: object, message: str
) -> None:
    target = make(tmp_path)  # type: ignore[operator]
    result = _train("train", "--resume", str(target))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_takes_no_flags_that_would_change_the_run(tmp_path: Path) -> None:
    result = _train("train", "--resume", str(tmp_path), "--lr", "0.1")
    assert result.returncode == 2
    assert "--resume continues the run exactly as it was configured, so --lr" in result.stderr


def test_a_run_that_replaces_an_sae_still_replaces_it_when_resumed(tmp_path: Path) -> None:
    output = tmp_path / "run"
    output.mkdir()
    (output / "cfg.json").write_text("{}")  # a previous SAE's folder
    (output / "stale.txt").write_text("from the previous run")
    command = [sys.executable, "-m", "sae_variants.integrations.cli", "train"]
    command += ["--architecture", "standard", *RUN, "--checkpoint-every", "8", "--overwrite"]
    command += ["--output", str(output)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    first = tmp_path / "run.partial" / "checkpoints" / "step-8"
    deadline = time.monotonic() + 300
    while not first.is_dir() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=300)
    assert (output / "stale.txt").exists()  # untouched until the run finishes
    assert _in_process("train", "--resume", str(tmp_path / "run.partial")) == 0
    assert not (output / "stale.txt").exists()
    assert (output / "sae_weights.safetensors").is_file()

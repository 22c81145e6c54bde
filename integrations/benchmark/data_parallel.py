"""Data-parallel training measured on this machine: training tokens/s in one process against two
``torchrun`` processes, side by side, and the communication share of a step at a given width.

1. **Throughput.** The same training request (one architecture, on the embedded model or another
   model, the same global batch) runs in one process and under ``torchrun --nproc-per-node 2``,
   alternately (one, two, one, ...) so machine noise hits both. Each run's time is that of
   :func:`~sae_variants.integrations.training.pipeline.train_sae` with the model already loaded
   (set-up, training and saving). The one process uses as many threads as the two together.
2. **Communication share.** Two ``torchrun`` processes each time SAELens ``standard``'s training
   step on their share of a batch at ``d_in`` x ``d_sae`` (the gradient computed locally) and the
   all-reduce that averages its gradient (:class:`~..training.distributed.GradientAverager`),
   whose size is ``4 (2 d_in d_sae + d_sae + d_in)`` bytes. The share is all-reduce time over
   step-plus-all-reduce time.

    sae-variants benchmark --architecture standard --data-parallel
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

WORLD = 2


@dataclass
class Throughput:
    architecture: str
    training_tokens: int
    batch_tokens: int
    one_process_seconds: list[float]
    two_process_seconds: list[float]

    @property
    def one_process_tokens_per_second(self) -> float:
        return self.training_tokens / statistics.median(self.one_process_seconds)

    @property
    def two_process_tokens_per_second(self) -> float:
        return self.training_tokens / statistics.median(self.two_process_seconds)

    @property
    def speed_up(self) -> float:
        """Median over repeats of one-process time / two-process time."""
        return statistics.median(
            one / two
            for one, two in zip(self.one_process_seconds, self.two_process_seconds, strict=True)
        )


@dataclass
class CommunicationShare:
    d_in: int
    d_sae: int
    batch_tokens: int
    gradient_bytes: int
    step_seconds: float
    all_reduce_seconds: float

    @property
    def share(self) -> float:
        return self.all_reduce_seconds / (self.step_seconds + self.all_reduce_seconds)


def _launch(argv: list[str], processes: int, threads: int) -> None:
    module = [sys.executable, "-m", "sae_variants.integrations.benchmark.data_parallel"]
    if processes > 1:
        module = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        module += ["--nproc-per-node", str(processes), "-m"]
        module += ["sae_variants.integrations.benchmark.data_parallel"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([*module, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{done.stderr[-3000:]}")


def measure_throughput(
    architecture: str,
    training_tokens: int,
    batch_tokens: int,
    repeats: int,
    model: str | None = None,
    model_path: str | None = None,
) -> Throughput:
    """Time the same run in one process (2 threads) and in two (1 thread each), alternately."""
    one: list[float] = []
    two: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            for processes, times in ((1, one), (WORLD, two)):
                result = Path(folder) / f"seconds-{processes}-{repeat}.json"
                argv = ["--worker", "train", "--architecture", architecture]
                argv += ["--training-tokens", str(training_tokens)]
                argv += ["--batch-size", str(batch_tokens), "--result", str(result)]
                argv += ["--output", str(Path(folder) / f"sae-{processes}-{repeat}")]
                if model is not None:
                    argv += ["--model", model]
                if model_path is not None:
                    argv += ["--model-path", model_path]
                _launch(argv, processes, threads=WORLD // processes)
                times.append(json.loads(result.read_text())["seconds"])
    return Throughput(architecture, training_tokens, batch_tokens, one, two)


def measure_communication_share(
    d_in: int, d_sae: int, batch_tokens: int, repeats: int
) -> CommunicationShare:
    """Step and all-reduce times of two processes at ``d_in`` x ``d_sae``, each on half the batch."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "communication.json"
        argv = ["--worker", "communication", "--d-in", str(d_in), "--d-sae", str(d_sae)]
        argv += ["--batch-size", str(batch_tokens), "--repeats", str(repeats)]
        argv += ["--result", str(result)]
        _launch(argv, WORLD, threads=1)
        measured = json.loads(result.read_text())
    gradient_bytes = 4 * (2 * d_in * d_sae + d_sae + d_in)
    return CommunicationShare(
        d_in, d_sae, batch_tokens, gradient_bytes, measured["step"], measured["all_reduce"]
    )


def format_data_parallel(throughput: Throughput, communication: CommunicationShare) -> str:
    t, c = throughput, communication
    lines = [
        f"| {t.architecture}, {t.training_tokens:,} tokens, global batch {t.batch_tokens} "
        "| tokens/s | speed-up |",
        "|---|---|---|",
        f"| 1 process (2 threads) | {t.one_process_tokens_per_second:,.0f} | 1.00 |",
        f"| {WORLD} processes (torchrun, 1 thread each) | "
        f"{t.two_process_tokens_per_second:,.0f} | {t.speed_up:.2f} |",
        "",
        f"Communication at d_in {c.d_in}, d_sae {c.d_sae} ({WORLD} gloo processes, "
        f"{c.batch_tokens // WORLD} tokens each): gradient {c.gradient_bytes / 2**20:,.0f} MiB, "
        f"local step {c.step_seconds:.3f} s, all-reduce {c.all_reduce_seconds:.3f} s, "
        f"communication share {c.share:.1%} of a step.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the workers


def _train_worker(args: list[str]) -> None:
    import argparse

    from sae_variants.integrations.models import load_model
    from sae_variants.integrations.training.distributed import (
        join_process_group,
        launched_data_parallel,
    )
    from sae_variants.integrations.training.pipeline import train_sae
    from sae_variants.integrations.training.request import TrainRequest

    parser = argparse.ArgumentParser()
    for flag in ("--architecture", "--result", "--output", "--model", "--model-path"):
        parser.add_argument(flag)
    parser.add_argument("--training-tokens", type=int)
    parser.add_argument("--batch-size", type=int)
    a = parser.parse_args(args)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    options = {} if a.model is None else {"model_name": a.model}
    request = TrainRequest(
        architecture=a.architecture,
        training_tokens=a.training_tokens,
        train_batch_size_tokens=a.batch_size,
        lr_warm_up_steps=0,  # a throughput run: any length
        output_path=Path(a.output),
        model_path=a.model_path,
        device="cpu",
        **options,
    )
    model = load_model(request.model_name, device="cpu", model_path=a.model_path)
    ranks = launched_data_parallel()
    if ranks is not None:  # start the clock together
        join_process_group(ranks, "cpu")
        torch.distributed.barrier()
    start = time.perf_counter()
    train_sae(request, model=model)
    seconds = time.perf_counter() - start
    if ranks is None or ranks.is_main:
        Path(a.result).write_text(json.dumps({"seconds": seconds}))


def _communication_worker(args: list[str]) -> None:
    import argparse

    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    from sae_variants.integrations.training.distributed import (
        GradientAverager,
        join_process_group,
        launched_data_parallel,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--result")
    for flag in ("--d-in", "--d-sae", "--batch-size", "--repeats"):
        parser.add_argument(flag, type=int)
    a = parser.parse_args(args)
    ranks = launched_data_parallel()
    assert ranks is not None, "the communication worker runs under torchrun"
    join_process_group(ranks, "cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae))
    averager = GradientAverager(sae, ranks)
    averager.remove()  # timed on its own below, not inside backward
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(a.batch_size // ranks.world_size, a.d_in)
    steps: list[float] = []
    reduces: list[float] = []
    for _ in range(a.repeats):
        torch.distributed.barrier()
        start = time.perf_counter()
        output = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={"l1": 1.0},
                dead_neuron_mask=None,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        output.loss.backward()
        optimizer.step()
        steps.append(time.perf_counter() - start)
        torch.distributed.barrier()
        start = time.perf_counter()
        averager.average()
        reduces.append(time.perf_counter() - start)
        optimizer.zero_grad()
    if ranks.is_main:
        result = {"step": statistics.median(steps), "all_reduce": statistics.median(reduces)}
        Path(a.result).write_text(json.dumps(result))


if __name__ == "__main__":
    worker = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--worker" else None
    if worker == "train":
        _train_worker(sys.argv[3:])
    elif worker == "communication":
        _communication_worker(sys.argv[3:])
    else:
        raise SystemExit("run through `sae-variants benchmark --data-parallel`")

"""Two-process gloo scenarios for ``tests/integrations/training/test_data_parallel.py``, in a
module of their own so ``torch.multiprocessing``'s spawned processes can import them."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from sae_variants.integrations.training.distributed import (
    DataParallel,
    ReplicasDisagreeError,
    check_replicas_agree,
    check_same_config,
)
from sae_variants.replicas import Replicas


def run_scenario(rank: int, world_size: int, port: int, scenario: str, errors: Any) -> None:
    """Join a gloo group of ``world_size`` on ``port`` and play ``scenario``; the error this rank
    met, if any, goes into ``errors[rank]``:

    - ``config``: each rank builds a config with another learning rate and checks it;
    - ``diverged``: the ranks' modules differ in ``weight`` and agree in ``bias``;
    - ``dies``: rank 1 exits without a word, rank 0 then reduces a tensor;
    - ``non_finite``: rank 1's step has a NaN loss, rank 0's is finite; both must stop;
    - ``shared_term``: a loss with a term coupling every row of the global batch, each rank
      holding its slice, must give the one-process gradient once gradients are averaged.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=20))
    layout = DataParallel(rank=rank, world_size=world_size, local_rank=rank)
    try:
        if scenario == "config":
            from sae_variants.integrations.training.request import (
                TrainRequest,
                build_runner_config,
            )

            cfg, _ = build_runner_config(TrainRequest(d_sae=64, lr=1e-3 * (1 + rank)))
            check_same_config(cfg, layout)
        elif scenario == "diverged":
            module = torch.nn.Linear(3, 2)
            with torch.no_grad():
                module.weight.fill_(float(rank))
                module.bias.fill_(1.0)
            check_replicas_agree(module, "the test")
        elif scenario == "dies":
            if rank == 1:
                os._exit(3)
            Replicas(world_size).mean_(torch.ones(4))
        elif scenario == "non_finite":
            from sae_lens.saes.sae import TrainStepOutput

            from sae_variants.integrations.training.finite_guard import (
                NonFiniteTrainingError,
                check_step_finite,
            )

            sae: Any = torch.nn.Linear(2, 2)
            sae.replicas = Replicas(world_size, rank)
            x = torch.zeros(1, 2)
            loss = torch.tensor(float("nan") if rank == 1 else 1.0)
            output = TrainStepOutput(
                sae_in=x,
                sae_out=x,
                feature_acts=x,
                hidden_pre=x,
                loss=loss,
                losses={"mse_loss": loss},
            )
            try:
                check_step_finite(sae, output, step=5, checkpoint_path=None)
            except NonFiniteTrainingError as error:
                errors[rank] = str(error)
        elif scenario == "shared_term":
            _check_shared_term(Replicas(world_size, rank))
        else:
            raise AssertionError(f"unknown scenario {scenario!r}")
    except (ValueError, ReplicasDisagreeError, RuntimeError, AssertionError) as error:
        errors[rank] = f"{type(error).__name__}: {error}"


def _check_shared_term(replicas: Replicas) -> None:
    """One process's gradient of ``mean row loss + coupling term over all rows`` against the
    replicas' averaged gradients, each replica holding its rows and gathering for the term."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, dtype=torch.float64, generator=generator)
    w0 = torch.randn(4, 5, dtype=torch.float64, generator=generator)

    def loss(codes: torch.Tensor, every_row: torch.Tensor) -> torch.Tensor:
        coupling = torch.logsumexp(every_row @ every_row.T, dim=-1).mean()
        return codes.pow(2).sum(dim=-1).mean() + coupling

    w = w0.clone().requires_grad_(True)
    codes = torch.relu(x @ w)
    loss(codes, codes).backward()
    expected = w.grad.clone()

    w = w0.clone().requires_grad_(True)
    mine = torch.relu(x[replicas.own_rows(x.shape[0] // replicas.world_size)] @ w)
    every_row = replicas.gather_for_shared_term(mine)
    assert torch.allclose(every_row, torch.relu(x @ w0)), "the gathered rows are not the batch"
    loss(mine, every_row).backward()
    gradient = replicas.mean_(w.grad)  # what the trainer's gradient averaging does
    difference = float((gradient - expected).abs().max())
    assert difference < 1e-12, f"averaged gradient differs from one process's by {difference}"

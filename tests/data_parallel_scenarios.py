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
    - ``dies``: rank 1 exits without a word, rank 0 then reduces a tensor.
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
        else:
            raise AssertionError(f"unknown scenario {scenario!r}")
    except (ValueError, ReplicasDisagreeError, RuntimeError) as error:
        errors[rank] = f"{type(error).__name__}: {error}"

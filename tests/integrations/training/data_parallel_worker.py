"""Train each named architecture briefly on the embedded model through the Python API, the way
``tests/integrations/training/test_data_parallel.py`` runs it: in one process with the global
batch, or under ``torchrun`` with each rank on its share. Every run reads the same token stream
in order (no mixing shuffle, no special tokens dropped), so the global batches of both are the
same tokens. A NAME is an architecture, or ``architecture:setting`` (:data:`EXTRA_OPTIONS`). Each
process saves its SAE's whole training state (``NAME-state-rankR.pt``, ``:`` written as ``-``).

    python data_parallel_worker.py OUTPUT_DIR BATCH [--cache PATH] NAME [NAME ...]
    torchrun --standalone --nproc-per-node 2 data_parallel_worker.py OUTPUT_DIR BATCH NAME ...

``--cache PATH`` trains from that activation cache (``sae-variants cache``) instead of running
the model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from sae_variants.integrations.training.pipeline import train_sae
from sae_variants.integrations.training.request import TrainRequest

EXTRA_OPTIONS = {
    # CubicOrtho's activation-aware weights read its mean-activation EMA, reduced over ranks;
    # at this width its penalty is the dense form, and "cubic_ortho:blocks" runs the sampled one.
    "cubic_ortho": {"act_mode": "sigmoid"},
    "cubic_ortho:blocks": {"act_mode": "sigmoid", "penalty_mode": "blocks", "block_size": 64},
    # The paper code's ranking by the global batch's half-batch activation ratios.
    "cubic_ortho:ratio_rank": {"act_mode": "ratio_rank"},
    # SVD revival every 4 steps of features silent for 2: from the global batch's residual.
    "multiscale_norm:revival": {
        "reactivation_interval": 4,
        "dead_window_steps": 2,
        "z_threshold": 4.0,
    },
}
"""Options per run name; a name is an architecture, or ``architecture:setting``."""


def request(name: str, output: Path, batch: int, cache: str | None = None) -> TrainRequest:
    architecture = name.partition(":")[0]
    return TrainRequest(
        architecture=architecture,
        d_sae=256,
        training_tokens=6 * batch,
        train_batch_size_tokens=batch,
        lr_warm_up_steps=0,
        context_size=64,
        normalize_activations="none",
        sae_options=dict(EXTRA_OPTIONS.get(name, {})),
        runner_options={
            "activations_mixing_fraction": 0.0,
            "exclude_special_tokens": False,
            "store_batch_size_prompts": 8,
            "n_batches_in_buffer": 32,
        },
        output_path=output / name.replace(":", "-"),
        activations_path=cache,
        device="cpu",
        seed=7,
    )


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    output, batch, names = Path(argv[0]), int(argv[1]), argv[2:]
    cache = None
    if names[:1] == ["--cache"]:
        cache, names = names[1], names[2:]
    rank = os.environ.get("RANK", "0")
    for name in names:
        result = train_sae(request(name, output, batch, cache))
        # Training is over: the returned SAE no longer reduces anything with the other ranks.
        assert getattr(result.sae, "replicas", None) is None, "the SAE still has replicas"
        # Every buffer, training-only ones included (the saved inference SAE drops those).
        state = {k: v.detach().clone() for k, v in result.sae.state_dict().items()}
        torch.save(state, output / f"{name.replace(':', '-')}-state-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])

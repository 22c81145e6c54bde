"""Why a trained MultiScaleNormSAE has dead features: where its gate thresholds sit and what the
dead features' pre-activations look like on held-out text of the embedded model.

    python docs/experiments/multiscale_norm_gate_diagnosis.py sae_runs/vs_standard/multiscale_norm/l1_coefficient=0.4

Prints the dead fraction on 64 held-out contexts, the share of features whose threshold
``max(EMA mean + z EMA std, 0)`` is clamped to 0 (there the ReLU, not the z-gate, decides), and the
mean and spread of the dead features' pre-activations against the live ones'.
"""

from __future__ import annotations

import argparse

import torch
from sae_lens import SAE

from sae_variants import MultiScaleNormSAE
from sae_variants.integrations.evaluation.heldout import heldout_activations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a saved multiscale_norm SAE")
    parser.add_argument("--contexts", type=int, default=64, help="held-out contexts of 128 tokens")
    args = parser.parse_args(argv)
    sae = SAE.load_from_disk(args.path).eval()
    if not isinstance(sae, MultiScaleNormSAE):
        raise SystemExit(
            f"{args.path} holds a {sae.cfg.architecture()!r} SAE, not 'multiscale_norm'"
        )
    x = heldout_activations(
        sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name, 128, args.contexts
    )
    with torch.no_grad():
        encoder_input, scale = sae.encoder_input(sae.process_sae_in(x))
        pre = encoder_input @ sae.W_enc + sae.b_enc
        codes = sae.codes(pre, scale)
    dead = (codes > 0).sum(0) == 0
    clamped = sae.firing_thresholds() == 0
    print(
        f"tokens {x.shape[0]}, L0 {(codes > 0).sum(-1).float().mean():.1f}, dead {dead.float().mean():.1%}"
    )
    print(
        f"thresholds clamped to 0: {clamped.float().mean():.1%} of features "
        f"({(clamped & dead).sum()} of the {dead.sum()} dead ones)"
    )
    for name, mask in (("dead", dead), ("live", ~dead)):
        if mask.any():
            print(
                f"{name} features: pre-activation mean {pre[:, mask].mean():+.2f}, "
                f"mean per-feature std {pre[:, mask].std(0).mean():.2f}, "
                f"mean per-feature max {pre[:, mask].max(0).values.mean():+.2f}"
            )


if __name__ == "__main__":
    main()

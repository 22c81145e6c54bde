"""How much context signal each layer's residual stream carries, to choose where to train.

Seed 003's contrastive term needs activations that nearby tokens share and strangers do not. For
every block's ``hook_resid_post`` this prints, on held-out Austen contexts (special tokens left
out), the between-context share of the variance and the neighbour / cross-context cosines of
``integrations/evaluation/context_signal.py``:

    python examples/context_signal_by_layer.py --model gemma-3-270m --contexts 64
"""

from __future__ import annotations

import argparse

import torch

from sae_variants.integrations.evaluation.context_signal import activation_context_signal
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.hooks import hook_name
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.datasets import austen_contexts
from sae_variants.integrations.training.presets import default_preset, training_preset


@torch.no_grad()
def context_signal_by_layer(
    model_name: str, contexts: int
) -> list[tuple[str, float, float, float]]:
    """(hook, between-context share, adjacent cosine, cross-context cosine) for every block."""
    model = load_model(model_name)
    context_size = training_preset(default_preset(model_name)).context_size
    rows = austen_contexts("held_out", model.tokenizer, context_size)
    tokens = torch.as_tensor(rows[: min(contexts, len(rows))]["tokens"])[:, :context_size]
    hooks = [hook_name(model.cfg, layer) for layer in range(model.cfg.n_layers)]
    # Stopping after the last block skips the unembedding (gemma-3's 262k-token vocabulary would
    # make the logits alone several GB).
    _, cache = model.run_with_cache(tokens, names_filter=hooks, stop_at_layer=model.cfg.n_layers)
    specials = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))
    usable = ~torch.isin(tokens, specials)
    results = []
    for name in hooks:
        signal = activation_context_signal(cache[name].float(), usable)
        results.append(
            (
                name,
                signal.between_context_share,
                signal.adjacent_cosine,
                signal.cross_context_cosine,
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME)
    parser.add_argument("--contexts", type=int, default=64, help="held-out contexts to measure")
    args = parser.parse_args()
    print(f"{'hook':<28} {'between-context share':>22} {'adjacent cos':>13} {'cross cos':>10}")
    for name, share, adjacent, cross in context_signal_by_layer(args.model, args.contexts):
        print(f"{name:<28} {share:>22.4f} {adjacent:>13.3f} {cross:>10.3f}")


if __name__ == "__main__":
    main()

"""How much context-persistent signal a model's activations and SAE codes carry.

    python docs/experiments/context_signal.py [--model gemma-3-270m] [--sae PATH ...] [--contexts 256]

Seed 003's contrastive term asks nearby tokens of a sequence to share features; it can only
succeed where the activations hold something nearby tokens share and strangers do not. For each
residual-stream hook of the model (the embedded one by default), on held-out Austen contexts
tokenized by the model, this prints the share of the
activations' variance explained by the token's own context mean and the centred cosine of adjacent
tokens against tokens of different contexts (``integrations/evaluation/context_signal.py``). For each saved
SAE given with ``--sae`` (of the same model) it adds the contextual consistency and how
context-dependent its features' firing rates are (overdispersion over a context-blind feature).

Results go to docs/experiments/results/context_signal[-MODEL].{json,md} (no suffix for the
embedded model).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_variants.integrations.comparison.report import markdown_table
from sae_variants.integrations.evaluation.consistency import contextual_consistency
from sae_variants.integrations.evaluation.context_signal import (
    activation_context_signal,
    feature_context_overdispersion,
)
from sae_variants.integrations.evaluation.evaluate import load_sae
from sae_variants.integrations.evaluation.heldout import (
    encode_contexts,
    special_token_ids,
    usable_tokens,
)
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.training.datasets import austen_contexts
from sae_variants.integrations.training.presets import OFFLINE_MODELS

RESULTS = Path(__file__).parent / "results"
CONTEXT_SIZE = 128
HOOK_COLUMNS = ("hook", "between_context_share", "adjacent_cosine", "cross_context_cosine")
SAE_COLUMNS = (
    "sae",
    "l0",
    "contextual_consistency",
    "median_overdispersion",
    "features_overdispersed_2x",
    "features_overdispersed_5x",
)


@torch.no_grad()
def hook_rows(model: Any, tokens: torch.Tensor, usable: torch.Tensor) -> list[dict[str, Any]]:
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    cached: dict[str, list[torch.Tensor]] = {hook: [] for hook in hooks}
    for chunk in tokens.split(16):
        # Stopping after the last block skips the unembedding (gemma-3's 262k-token vocabulary
        # would make the logits of a chunk alone over 2 GB).
        _, cache = model.run_with_cache(
            chunk, names_filter=hooks, prepend_bos=False, stop_at_layer=model.cfg.n_layers
        )
        for hook in hooks:
            cached[hook].append(cache[hook].float())
    rows = []
    for hook in hooks:
        signal = activation_context_signal(torch.cat(cached[hook]), usable)
        rows.append({"hook": hook, **vars(signal)})
    return rows


@torch.no_grad()
def sae_row(path: Path, model: Any, tokens: torch.Tensor, special: list[int]) -> dict[str, Any]:
    sae = load_sae(path)
    heldout = encode_contexts(sae, model, tokens, special)
    ratios = feature_context_overdispersion(heldout.active, heldout.usable)
    alive = ratios[~ratios.isnan()]
    return {
        "sae": str(path),
        "l0": heldout.mean_l0(),
        "contextual_consistency": contextual_consistency(heldout.active, heldout.usable).ratio,
        "median_overdispersion": float(alive.median()),
        "features_overdispersed_2x": float((alive > 2).double().mean()),
        "features_overdispersed_5x": float((alive > 5).double().mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL_NAME,
        choices=sorted(OFFLINE_MODELS),
        help="the model whose hooks are measured",
    )
    parser.add_argument("--sae", type=Path, nargs="*", default=[], help="saved SAEs of --model")
    parser.add_argument("--contexts", type=int, default=256, help="held-out contexts of 128 tokens")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    model = load_model(args.model)
    dataset = austen_contexts("held_out", model.tokenizer, CONTEXT_SIZE)
    if args.contexts > len(dataset):
        parser.error(
            f"--contexts {args.contexts}: the held-out split has only {len(dataset)} contexts"
        )
    tokens = torch.as_tensor(dataset[: args.contexts]["tokens"])[:, :CONTEXT_SIZE]
    special = special_token_ids(model)
    hooks = hook_rows(model, tokens, usable_tokens(tokens, special))
    saes = [
        sae_row(path, model, tokens, special) for path in tqdm(args.sae, desc="SAEs", unit="sae")
    ]

    command = " ".join(
        ["python docs/experiments/context_signal.py", *(sys.argv[1:] if argv is None else argv)]
    )
    report = {
        "date": date.today().isoformat(),
        "command": command,
        "model": args.model,
        "contexts": args.contexts,
        "hooks": hooks,
        "saes": saes,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    name = "context_signal" + ("" if args.model == EMBEDDED_MODEL_NAME else f"-{args.model}")
    (args.results / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    label = "the embedded model" if args.model == EMBEDDED_MODEL_NAME else args.model
    text = (
        f"# Context-persistent signal on {label} ({report['date']})\n\n`{command.strip()}` "
        f"({args.contexts} held-out contexts of {CONTEXT_SIZE} tokens, special tokens left out)\n\n"
        f"{markdown_table(hooks, HOOK_COLUMNS)}\n"
    )
    if saes:
        text += f"\n{markdown_table(saes, SAE_COLUMNS)}\n"
    (args.results / f"{name}.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()

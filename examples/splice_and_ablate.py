"""Circuit-analysis starter: splice a trained SAE into its model, read features, ablate one.

Trains nothing. Run `sae-variants demo` first (it writes sae_runs/demo), then:

    python examples/splice_and_ablate.py --sae sae_runs/demo --prompt '"My dear Mr.'

It prints the top features at the prompt's last token, checks that splicing with the error term
leaves the logits unchanged, zeroes the strongest feature, and lists the next-token logits that
move most.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from sae_variants.integrations.evaluation.evaluate import load_sae
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME
from sae_variants.integrations.splicing import (
    ablate_feature,
    attach_sae,
    feature_activations,
    run_with_sae,
)


def analyse(sae_path: str, prompt: str, top: int = 5) -> dict[str, Any]:
    sae = load_sae(sae_path)
    model = load_model(sae.cfg.metadata.model_name or EMBEDDED_MODEL_NAME)
    tokens = model.to_tokens(prompt)

    features = feature_activations(model, sae, tokens)[0, -1]
    values, indices = features.topk(top)
    strongest = int(indices[0])

    with torch.no_grad():
        clean = model(tokens)[0, -1]
        attach_sae(model, sae, use_error_term=True)
        spliced = model(tokens)[0, -1]
        model.reset_saes()
    ablated = run_with_sae(model, tokens, sae, edit=ablate_feature(strongest))[0, -1]
    change = ablated - clean
    moved = change.abs().topk(top).indices

    decode = model.to_string
    return {
        "prompt": prompt,
        "top_features": [(int(i), float(v)) for i, v in zip(indices, values, strict=True)],
        "splice_max_logit_diff": float((spliced - clean).abs().max()),
        "ablated_feature": strongest,
        "logit_changes": [(decode(int(t)), float(change[t])) for t in moved],
        "clean_top_token": decode(int(clean.argmax())),
        "ablated_top_token": decode(int(ablated.argmax())),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sae", default="sae_runs/demo", help="folder of a trained SAE")
    parser.add_argument("--prompt", default='"My dear Mr.', help="text to analyse")
    parser.add_argument("--top", type=int, default=5, help="how many features and logits to list")
    args = parser.parse_args(argv)
    report = analyse(args.sae, args.prompt, args.top)

    print(f"prompt: {report['prompt']!r}")
    print("top features at the last token (index: activation):")
    for index, value in report["top_features"]:
        print(f"  {index:>6}: {value:.3f}")
    print(
        f"splice with error term, max |logit - clean logit|: {report['splice_max_logit_diff']:.2e}"
    )
    print(f"ablating feature {report['ablated_feature']} moves these next-token logits most:")
    for token, delta in report["logit_changes"]:
        print(f"  {token!r:>14}: {delta:+.3f}")
    print(f"top next token: {report['clean_top_token']!r} -> {report['ablated_top_token']!r}")
    return report


if __name__ == "__main__":
    main()

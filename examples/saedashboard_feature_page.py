"""An SAEDashboard feature-centric page for an SAE trained here, offline.

Run it in the SAEDashboard environment (``bash examples/saedashboard_env.sh`` builds it):

    sae-variants export runs/msn runs/msn-stock          # a variant as a stock SAELens SAE
    .venv-dashboard/bin/python examples/saedashboard_feature_page.py runs/msn-stock page.html \
        --features 0,1,2,3

SAEDashboard renders SAELens ``standard``, ``jumprelu`` and ``gated`` SAEs (CubicOrtho saves as
``standard``; export the other variants first). The prompts are held-out Austen contexts tokenized
by the SAE's model (the embedded model; gemma-3-270m where the environment's TransformerLens knows
it), or ``--tokens FILE``: a ``torch.save``d ``[prompts, positions]`` int64 tensor of your own.
The page loads d3 and plotly from CDNs when opened; ``--inline-js D3_MIN_JS`` embeds both (d3 6.x
from npm, plotly from its Python package) for viewing with no network.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sae_dashboard.data_writing_fns import save_feature_centric_vis
from sae_dashboard.sae_vis_data import SaeVisConfig
from sae_dashboard.sae_vis_runner import SaeVisRunner
from sae_lens import SAE

from sae_variants.integrations.models import load_model
from sae_variants.integrations.training.datasets import austen_contexts

RENDERED = ("standard", "jumprelu", "gated")
CDN_SCRIPTS = {
    "d3": '<script src="https://d3js.org/d3.v6.min.js"></script>',
    "plotly": '<script src="https://cdn.plot.ly/plotly-latest.min.js"></script>',
}


def read_saved_architecture(sae_dir: Path) -> str:
    """The architecture ``cfg.json`` records, refused unless SAEDashboard renders it (checked
    before anything loads)."""
    cfg_file = sae_dir / "cfg.json"
    if not cfg_file.is_file():
        raise SystemExit(f"{sae_dir} holds no saved SAE (no cfg.json)")
    architecture = json.loads(cfg_file.read_text()).get("architecture", "standard")
    if architecture not in RENDERED:
        raise SystemExit(
            f"SAEDashboard renders {', '.join(RENDERED)} SAEs; {sae_dir} is {architecture!r}: "
            f"run `sae-variants export {sae_dir} OUT` in the main environment first"
        )
    return architecture


def prompts(
    model: object, context_size: int, n_prompts: int, tokens_file: Path | None
) -> torch.Tensor:
    if tokens_file is not None:
        tokens = torch.load(tokens_file)
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise SystemExit(f"{tokens_file}: expected an int64 [prompts, positions] tensor")
        return tokens[:n_prompts]
    dataset = austen_contexts("held_out", model.tokenizer, context_size)  # type: ignore[attr-defined]
    held_out = torch.as_tensor(dataset["tokens"])
    rows = torch.linspace(0, len(held_out) - 1, min(n_prompts, len(held_out))).long()
    return held_out[rows, :context_size]


def inline_scripts(html: str, d3_js: Path) -> str:
    """``html`` with the CDN scripts replaced by their contents (viewable with no network)."""
    import plotly

    sources = {
        "d3": d3_js,
        "plotly": Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
    }
    for name, tag in CDN_SCRIPTS.items():
        if tag not in html:
            raise SystemExit(f"the page no longer loads {name} from {tag}; cannot inline it")
        html = html.replace(tag, f"<script>{sources[name].read_text()}</script>")
    return html


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sae", type=Path, help="a saved standard/jumprelu/gated SAE")
    parser.add_argument("output", type=Path, help="the HTML page to write")
    parser.add_argument("--features", default="0,1,2,3", help="comma-separated feature indices")
    parser.add_argument("--prompts", type=int, default=64, help="held-out contexts to scan")
    parser.add_argument("--tokens", type=Path, help="a torch.save'd [prompts, positions] tensor")
    parser.add_argument("--model-path", help="a local folder with the SAE's model's weights")
    parser.add_argument("--inline-js", type=Path, metavar="D3_MIN_JS", help="embed d3 and plotly")
    args = parser.parse_args(argv)
    features = [int(f) for f in args.features.split(",")]

    read_saved_architecture(args.sae)
    sae = SAE.load_from_disk(str(args.sae), device="cpu")
    if max(features) >= sae.cfg.d_sae or min(features) < 0:
        raise SystemExit(f"features must lie in [0, {sae.cfg.d_sae}), got {features}")
    meta = sae.cfg.metadata
    model = load_model(meta.model_name, model_path=args.model_path)
    tokens = prompts(model, meta.context_size or 128, args.prompts, args.tokens)
    specials = {
        model.tokenizer.bos_token_id,
        model.tokenizer.eos_token_id,
        model.tokenizer.pad_token_id,
    }
    config = SaeVisConfig(
        hook_point=meta.hook_name,
        features=features,
        minibatch_size_features=64,
        minibatch_size_tokens=16,
        device="cpu",
        dtype="float32",
        ignore_tokens={t for t in specials if t is not None},  # as in training
        verbose=False,
    )
    data = SaeVisRunner(config).run(encoder=sae, model=model, tokens=tokens)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_feature_centric_vis(sae_vis_data=data, filename=args.output)
    if args.inline_js is not None:
        args.output.write_text(inline_scripts(args.output.read_text(), args.inline_js))
    summary = {
        "page": str(args.output.resolve()),
        "architecture": sae.cfg.architecture(),
        "hook": meta.hook_name,
        "features": features,
        "prompts": list(tokens.shape),
        "bytes": args.output.stat().st_size,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""A model from a local Hugging Face folder, wrapped by TransformerLens under its official name.

The offline cluster user's case: their own copy of, say, ``google/gemma-2-2b`` on disk.
TransformerLens builds the architecture from ``model_name`` (its config is built in for the Gemma
family, so nothing is fetched) and takes the weights from the folder. The folder's config is
checked against that architecture first, so a folder holding a different model fails before
any weights are read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig


def check_folder_matches(folder: Path, model_name: str, cfg: HookedTransformerConfig) -> None:
    """Refuse a folder that is not a HF model folder, or whose config is not ``model_name``'s."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a Hugging Face model folder (no config.json); --model-path expects "
            "the folder save_pretrained writes"
        )
    hf_config = AutoConfig.from_pretrained(folder)
    text_config = getattr(hf_config, "text_config", None) or hf_config
    found = {
        "architecture": (getattr(hf_config, "architectures", None) or ["?"])[0],
        "d_model": getattr(text_config, "hidden_size", None),
        "n_layers": getattr(text_config, "num_hidden_layers", None),
    }
    expected = {
        "architecture": cfg.original_architecture,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
    }
    wrong = {k: (expected[k], found[k]) for k in expected if expected[k] != found[k]}
    if wrong:
        details = ", ".join(f"{k}: expected {e}, found {f}" for k, (e, f) in wrong.items())
        raise ValueError(f"{folder} does not hold {model_name!r} ({details})")


def load_local_checkpoint(
    model_name: str, folder: Path, device: str = "cpu"
) -> HookedSAETransformer:
    """``model_name``'s architecture with the weights and tokenizer in ``folder`` (fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sae_variants.integrations.models import model_config

    folder = Path(folder).expanduser()
    cfg = model_config(model_name)  # unknown names and hub-only configs fail here, clearly
    check_folder_matches(folder, model_name, cfg)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    official = model_name if "/" in model_name else _official_name(model_name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        model = HookedSAETransformer.from_pretrained_no_processing(
            official, hf_model=hf_model, tokenizer=tokenizer, dtype=torch.float32, device=device
        )
    model.eval()
    return model


def _official_name(model_name: str) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    return get_official_model_name(model_name)

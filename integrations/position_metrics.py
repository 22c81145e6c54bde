"""Reconstruction by position range: fraction of variance unexplained in each quarter of the context.

Seed 004's claim is that position-range adapters reconstruct position-specific structure better.
On held-out contexts (special tokens left out), for R equal ranges of the context:

    FVU_r = sum_{t in r} ||x_t - x^_t||^2 / sum_{t in r} ||x_t - mean_r(x)||^2

with ``x^ = decode(encode(x))`` on whole ``[context, pos, d_in]`` inputs (what splicing passes, so
a position-aware SAE sees each token's true position).
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name
from torch import Tensor

from sae_variants.integrations.consistency import usable_tokens


@torch.no_grad()
def fvu_by_position_range(
    sae: Any, model: Any, tokens: Tensor, special_token_ids: list[int], n_ranges: int = 4, batch_size: int = 16
) -> list[float]:
    """FVU in each of ``n_ranges`` equal ranges of the context positions of ``tokens``."""
    hook = sae.cfg.metadata.hook_name
    stop = extract_stop_at_layer_from_tlens_hook_name(hook)
    length = tokens.shape[1]
    ranges = torch.clamp(torch.arange(length) * n_ranges // length, max=n_ranges - 1)
    usable = usable_tokens(tokens, special_token_ids)
    inputs, residuals = [], []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=[hook], stop_at_layer=stop, prepend_bos=False)
        x = cache[hook].to(sae.dtype)
        inputs.append(x)
        residuals.append(x - sae.decode(sae.encode(x)))
    x, residual = torch.cat(inputs), torch.cat(residuals)
    fvus = []
    for r in range(n_ranges):
        keep = usable & (ranges == r).unsqueeze(0)
        xr, er = x[keep], residual[keep]
        fvus.append(float(er.pow(2).sum() / (xr - xr.mean(dim=0)).pow(2).sum()))
    return fvus

"""Checks several variants' tests share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch


def _check_folds_keep_the_function(sae: Any, x: torch.Tensor) -> None:
    """Decoder-norm and input-scale folds leave ``decode(encode(.))`` unchanged, and whitening
    (which a normalizing encoder cannot absorb) is refused. ``sae`` in eval mode, rows of unequal
    decoder norms are made here."""
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(sae.cfg.d_sae, 1) + 0.5)
        expected = sae.decode(sae.encode(x))
        sae.fold_W_dec_norm()
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae))
        torch.testing.assert_close(sae.decode(sae.encode(x)), expected, rtol=1e-4, atol=1e-4)
        c = 4.0  # trained on c * x; after the fold it must read x
        scaled = sae.decode(sae.encode(c * x)) / c
        sae.fold_activation_norm_scaling_factor(c)
        torch.testing.assert_close(sae.decode(sae.encode(x)), scaled, rtol=1e-4, atol=1e-4)
    with pytest.raises(NotImplementedError, match="whitening"):
        sae.fold_activation_whitening()


@pytest.fixture
def check_folds_keep_the_function() -> Callable[[Any, torch.Tensor], None]:
    return _check_folds_keep_the_function

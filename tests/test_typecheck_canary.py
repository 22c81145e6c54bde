"""Fails unless the suite runs with jaxtyping's runtime checks (``--jaxtyping-packages``) on."""

import jaxtyping
import pytest
import torch

from sae_variants.functional import unit_norm_rows


def test_shape_annotations_are_checked_at_runtime() -> None:
    with pytest.raises(jaxtyping.TypeCheckError):
        unit_norm_rows(torch.ones(3, 4, dtype=torch.int64))


def test_shape_annotations_reject_wrong_rank() -> None:
    with pytest.raises(jaxtyping.TypeCheckError):
        unit_norm_rows(torch.ones(3))

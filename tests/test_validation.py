import pytest
import torch

from sae_variants import check_activations


def test_accepts_finite_float_activations() -> None:
    check_activations(torch.randn(2, 3, 8), d_in=8)


def test_wrong_d_in_names_expected_and_actual() -> None:
    with pytest.raises(ValueError, match=r"d_in=8.*\(4, 9\)"):
        check_activations(torch.randn(4, 9), d_in=8)


def test_integer_tensor_is_refused() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        check_activations(torch.ones(4, 8, dtype=torch.long), d_in=8)


def test_nan_activations_are_refused_with_a_count() -> None:
    x = torch.randn(4, 8)
    x[1, 2] = float("nan")
    x[3, 0] = float("inf")
    with pytest.raises(ValueError, match="2 NaN/inf"):
        check_activations(x, d_in=8, where="unit test")

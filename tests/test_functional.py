import torch

from sae_variants.functional import (
    fraction_of_variance_unexplained,
    remove_parallel_component,
    unit_norm_rows,
)


def test_unit_norm_rows_by_hand() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    torch.testing.assert_close(unit_norm_rows(w), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_remove_parallel_component_leaves_tangent_part() -> None:
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[5.0, 3.0], [1.0, -7.0]])
    torch.testing.assert_close(
        remove_parallel_component(g, w), torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    )


def test_fvu_is_zero_for_perfect_and_one_for_mean() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert fraction_of_variance_unexplained(x, x).item() == 0.0
    mean = x.mean(dim=0, keepdim=True).expand_as(x)
    torch.testing.assert_close(fraction_of_variance_unexplained(x, mean), torch.tensor(1.0))


def test_mean_max_decoder_cosine_by_hand() -> None:
    from sae_variants.functional import mean_max_decoder_cosine

    # Rows 0 and 1 at 60 degrees (|cos| 0.5); row 2 orthogonal to both; row 3 = -row 2.
    W = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.75**0.5, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, -1.0]])
    expected = (0.5 + 0.5 + 1.0 + 1.0) / 4
    torch.testing.assert_close(mean_max_decoder_cosine(W), torch.tensor(expected))
    torch.testing.assert_close(mean_max_decoder_cosine(W, chunk=3), torch.tensor(expected))

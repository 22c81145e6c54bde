"""The statistics data-parallel replicas reduce (``sae_variants/replicas.py`` and the variants'
sum forms): summed over the parts of a batch, each gives the whole batch's value."""

from __future__ import annotations

import pytest
import torch

from sae_variants.architectures.multiscale_norm_functional import (
    batch_moments,
    feature_importance,
    importance_from_mean_codes,
    interleave_rows,
    moment_sums,
    moments_from_sums,
)
from sae_variants.architectures.qucl_functional import (
    batch_diversity,
    diversity_from_sums,
    diversity_sums,
    feature_importance_weights,
    importance_sums,
    importance_weights_from_sums,
)
from sae_variants.functional import fraction_of_variance_unexplained, fvu_from_sums, variance_sums
from sae_variants.replicas import SINGLE, Replicas, replicas_of


def _parts(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[:7], x[7:20], x[20:]]


def test_fvu_from_summed_parts_is_the_whole_batch_fvu() -> None:
    x = torch.randn(32, 16) * 2 + 5  # a large mean: the sums must not cancel it away
    x_hat = x + 0.3 * torch.randn(32, 16)
    sums = sum(variance_sums(a, b) for a, b in zip(_parts(x), _parts(x_hat), strict=True))
    whole = fraction_of_variance_unexplained(x, x_hat)
    assert fvu_from_sums(sums).item() == pytest.approx(whole.item(), rel=1e-5)
    # One part alone is not the whole batch's figure.
    assert fvu_from_sums(variance_sums(x[:7], x_hat[:7])).item() != pytest.approx(whole.item())


def test_diversity_from_summed_parts_is_the_whole_batch_diversity() -> None:
    x = torch.randn(32, 16) + 1
    sums = sum(diversity_sums(part) for part in _parts(x))
    assert diversity_from_sums(sums).item() == pytest.approx(batch_diversity(x).item(), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 rows"):
        diversity_from_sums(diversity_sums(x[:1]))


def test_moments_from_summed_parts_are_the_whole_batch_moments() -> None:
    pre = torch.randn(32, 8) * 3 - 1
    mean, variance = moments_from_sums(sum(moment_sums(p) for p in _parts(pre)), pre.dtype)
    expected_mean, expected_variance = batch_moments(pre)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(variance, expected_variance, rtol=1e-5, atol=1e-5)
    assert mean.dtype == pre.dtype


def test_importance_from_mean_codes_is_the_batch_importance() -> None:
    codes = torch.relu(torch.randn(32, 8))
    norms = torch.rand(8) + 0.5
    torch.testing.assert_close(
        importance_from_mean_codes(codes.mean(dim=0), norms), feature_importance(codes, norms)
    )


def test_a_single_process_reduces_nothing() -> None:
    tensor = torch.arange(4.0)
    for reduce in (SINGLE.mean_, SINGLE.sum_, SINGLE.min_, SINGLE.max_, SINGLE.broadcast_):
        assert reduce(tensor.clone()).equal(tensor)
    assert SINGLE.differentiable_sum(tensor) is tensor
    assert replicas_of(torch.nn.Linear(2, 2)) is SINGLE
    with pytest.raises(ValueError, match="world_size >= 1"):
        Replicas(world_size=0)


def test_importance_weights_from_summed_parts_are_the_whole_batch_weights() -> None:
    x = torch.randn(32, 16) * 3 + 2
    sums = sum(importance_sums(part) for part in _parts(x))
    whole = feature_importance_weights(x)
    from_sums = importance_weights_from_sums(sums)
    assert from_sums.dtype == torch.float64  # the caller casts to the activations' dtype
    assert torch.allclose(from_sums.float(), whole, rtol=0, atol=1e-6)
    # The weights move with the rows (so one part alone is not the batch's): compare the
    # deviation from 1 (the weights are 1 to within about 1/B, docs/spec.md §2 d11).
    alone = importance_weights_from_sums(importance_sums(x[:7])).float()
    assert not torch.allclose(alone - 1, whole - 1, rtol=0.1)


def test_strided_micro_batches_interleave_back_into_row_order() -> None:
    x = torch.randn(11, 3)
    for m in (1, 2, 4):
        assert torch.equal(interleave_rows([x[j::m] for j in range(m)]), x)
    # Two replicas' j-th micro-batches are one process's j-th when each holds its slice.
    whole_first = x[:8][0::2]
    assert torch.equal(torch.cat([x[:4][0::2], x[4:8][0::2]]), whole_first)


def test_replicas_place_their_rows_in_rank_order() -> None:
    assert Replicas(3, rank=2).own_rows(5) == slice(10, 15)
    assert SINGLE.own_rows(5) == slice(0, 5)
    with pytest.raises(ValueError, match="rank 2 is not among 2 replicas"):
        Replicas(2, rank=2)


def test_dropout_is_torchs_in_one_process_and_the_global_mask_among_replicas() -> None:
    x = torch.randn(64, 8)
    torch.manual_seed(3)
    expected, after = torch.nn.functional.dropout(x, 0.25, training=True), torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(SINGLE.dropout(x, 0.25), expected)
    assert torch.equal(torch.rand(4), after)  # the generator advanced as far
    halves = []
    for rank in (0, 1):
        torch.manual_seed(3)
        halves.append(Replicas(2, rank=rank).dropout(x[32 * rank : 32 * (rank + 1)], 0.25))
    assert torch.equal(torch.cat(halves), expected)
    assert SINGLE.dropout(x, 0.0) is x

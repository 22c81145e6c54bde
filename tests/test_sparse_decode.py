"""The sparse-aware decode computes the dense product and the dense gradients: for the product
alone, and for every variant's whole training loss (its penalties that read the codes
included), compared against the same step taken densely."""

from __future__ import annotations

import pytest
import torch
from training_steps import step_input

import sae_variants
from sae_variants.architectures.base import RunInfo
from sae_variants.sparse_decode import decode_product, sparse_decode

VARIANTS = {v.name: v for v in sae_variants.registered_variants()}
D_IN, D_SAE, CONTEXT, ROWS = 16, 96, 8, 64


def test_the_product_and_its_gradients_equal_the_dense_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    pre = torch.randn(32, 200, generator=generator) - 1.5  # about 7% active
    W = torch.randn(200, 24, generator=generator)
    g = torch.randn(32, 24, generator=generator)
    results = []
    for product in (lambda f, w: f @ w, sparse_decode):
        p, w = pre.clone().requires_grad_(), W.clone().requires_grad_()
        out = product(torch.relu(p), w)
        (out * g).sum().backward()
        results.append((out.detach(), p.grad, w.grad))
    for dense, sparse in zip(*results, strict=True):
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_rows_without_active_codes_decode_to_zero_and_leading_shapes_are_kept() -> None:
    codes = torch.zeros(2, 3, 10)
    codes[1, 2, 4] = 2.0
    W = torch.randn(10, 5)
    out = decode_product(codes, W, max_density=1.0)
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out, codes @ W)
    assert decode_product(torch.zeros(0, 10), W, max_density=1.0).shape == (0, 5)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_trains_with_the_dense_gradients(name: str) -> None:
    variant = VARIANTS[name]
    run = RunInfo(total_steps=100, lr_warm_up_steps=0, context_size=CONTEXT)
    cfg = variant.training_cfg(d_in=D_IN, d_sae=D_SAE).bind_run(run)
    x = torch.randn(ROWS, D_IN, generator=torch.Generator().manual_seed(1))
    grads, losses = [], []
    for density in (0.0, 1.0):  # dense, then always sparse
        torch.manual_seed(0)
        sae = variant.training_sae(cfg)
        if sae.cfg.needs_optimizer():
            sae.bind_optimizer(torch.optim.Adam(sae.parameters()))
        with torch.no_grad():  # a sparse code, as in training: most features below threshold
            sae.b_enc.sub_(1.0)
        sae.sparse_decode_max_density = density
        torch.manual_seed(1)
        output = sae.training_forward_pass(step_input(sae, x, CONTEXT, n_training_steps=5))
        output.loss.backward()
        losses.append(output.loss.detach())
        grads.append({n: p.grad for n, p in sae.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for parameter, dense in grads[0].items():
        torch.testing.assert_close(grads[1][parameter], dense, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_short_run_ends_where_the_dense_run_ends(name: str) -> None:
    """Twenty Adam steps with the sparse decode forced on give the dense run's weights (the
    products sum in another order, so float rounding differs; nothing else does)."""
    variant = VARIANTS[name]
    run = RunInfo(total_steps=100, lr_warm_up_steps=0, context_size=CONTEXT)
    cfg = variant.training_cfg(d_in=D_IN, d_sae=D_SAE).bind_run(run)
    batches = torch.randn(20, ROWS, D_IN, generator=torch.Generator().manual_seed(2))
    finals = []
    for density in (0.0, 1.0):
        torch.manual_seed(0)
        sae = variant.training_sae(cfg)
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
        if sae.cfg.needs_optimizer():
            sae.bind_optimizer(optimizer)
        with torch.no_grad():
            sae.b_enc.sub_(1.0)
        sae.sparse_decode_max_density = density
        torch.manual_seed(1)
        for x in batches:
            output = sae.training_forward_pass(step_input(sae, x, CONTEXT, n_training_steps=5))
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        finals.append({n: p.detach().clone() for n, p in sae.named_parameters()})
    for parameter, dense in finals[0].items():
        difference = (finals[1][parameter] - dense).norm() / dense.norm().clamp_min(1e-12)
        assert difference < 1e-4, f"{parameter}: relative difference {difference:.2e}"

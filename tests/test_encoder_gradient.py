"""A training step's encoder takes b_dec's gradient without the input-side product
(``sae_variants.encoder_gradient``): the same pre-activations and the same gradients as the
plain form, for every variant and encoder option that uses it, and the plain form whenever the
input's gradient could reach anything but b_dec."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from training_steps import step_input

import sae_variants
from sae_variants.architectures.base import RunInfo
from sae_variants.encoder_gradient import (
    affine_preactivation,
    layer_normalized_scaled_preactivation,
    split_centred_input,
)
from sae_variants.functional import layer_normalized_preactivation

VARIANTS = {v.name: v for v in sae_variants.registered_variants()}
D_IN, D_SAE, CONTEXT, ROWS = 16, 96, 8, 64

SPLIT_ENCODERS = [
    ("cubic_ortho", {}),
    ("seq_contrastive", {}),
    ("seq_contrastive", {"layer_norm": False}),
    ("position_aware", {}),
    ("position_aware", {"base_norm": "none"}),
]


def _centred(x: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    return x - b_dec * True  # as SAELens's process_sae_in centres its input


def test_the_split_forms_equal_the_plain_forms_in_value_and_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 10, generator=generator) * 3 + 1
    params = {
        name: nn.Parameter(torch.randn(*shape, generator=generator))
        for name, shape in {
            "b_dec": (10,),
            "W": (10, 7),
            "b": (7,),
            "gain": (10,),
            "bias": (10,),
        }.items()
    }
    forms = {
        "affine": (
            lambda p, sae_in: sae_in @ p["W"] + p["b"],
            lambda p, c: affine_preactivation(c, p["W"], p["b"]),
        ),
        "layer_norm": (
            lambda p, sae_in: layer_normalized_preactivation(
                sae_in, p["W"], p["b"], p["gain"], p["bias"], 1e-5, True
            )[0],
            lambda p, c: layer_normalized_scaled_preactivation(
                c, p["W"], p["b"], p["gain"], p["bias"], 1e-5
            )[0],
        ),
    }
    g = torch.randn(12, 7, generator=generator)
    for plain, split in forms.values():
        results = []
        for use_split in (False, True):
            for p in params.values():
                p.grad = None
            sae_in = _centred(x, params["b_dec"])
            centred = split_centred_input(sae_in, params["b_dec"], offset_applied=True)
            assert centred is not None
            out = split(params, centred) if use_split else plain(params, sae_in)
            (out * g).sum().backward()
            grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
            results.append((out.detach(), grads))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
        assert results[1][1].keys() == results[0][1].keys()
        for name, plain_grad in results[0][1].items():
            torch.testing.assert_close(results[1][1][name], plain_grad, rtol=1e-4, atol=1e-4)


def test_the_split_is_refused_wherever_the_input_gradient_may_go_elsewhere() -> None:
    b_dec = nn.Parameter(torch.randn(4))
    x = torch.randn(3, 4)
    assert split_centred_input(_centred(x, b_dec), b_dec, offset_applied=True) is not None
    assert split_centred_input(_centred(x, b_dec), b_dec, offset_applied=False) is None
    attributed = x.clone().requires_grad_()  # gradients wanted at the input itself
    assert split_centred_input(_centred(attributed, b_dec), b_dec, offset_applied=True) is None
    scale = nn.Parameter(torch.ones(()))  # a parametric input hook
    assert split_centred_input(_centred(x * scale, b_dec), b_dec, offset_applied=True) is None
    with torch.no_grad():
        assert split_centred_input(_centred(x, b_dec), b_dec, offset_applied=True) is None
    assert split_centred_input(x + b_dec, b_dec, offset_applied=True) is None


def _step(name: str, options: dict[str, Any], input_requires_grad: bool) -> tuple[Any, ...]:
    variant = VARIANTS[name]
    run = RunInfo(total_steps=100, lr_warm_up_steps=0, context_size=CONTEXT)
    cfg = variant.training_cfg(d_in=D_IN, d_sae=D_SAE, **options).bind_run(run)
    x = torch.randn(ROWS, D_IN, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    torch.manual_seed(0)
    sae = variant.training_sae(cfg)
    if sae.cfg.needs_optimizer():
        sae.bind_optimizer(torch.optim.Adam(sae.parameters()))
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D_IN, generator=torch.Generator().manual_seed(2)))
    torch.manual_seed(1)
    # An input that requires a gradient makes the encoder take the plain form.
    output = sae.training_forward_pass(
        step_input(sae, x.clone().requires_grad_(input_requires_grad), CONTEXT, 5)
    )
    output.loss.backward()
    grads = {n: p.grad for n, p in sae.named_parameters() if p.grad is not None}
    return sae, output, grads


@pytest.mark.parametrize(("name", "options"), SPLIT_ENCODERS)
def test_every_split_encoder_trains_with_the_plain_gradients(
    name: str, options: dict[str, Any]
) -> None:
    sae, _, _ = _step(name, options, input_requires_grad=False)
    probe = sae.process_sae_in(torch.randn(2, D_IN))
    assert sae.centred_input(probe) is not None  # the split is what a training step takes
    _, split_out, split_grads = _step(name, options, input_requires_grad=False)
    _, plain_out, plain_grads = _step(name, options, input_requires_grad=True)
    torch.testing.assert_close(split_out.loss, plain_out.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split_out.hidden_pre, plain_out.hidden_pre, rtol=1e-5, atol=1e-5)
    assert split_grads.keys() == plain_grads.keys()
    assert "b_dec" in split_grads
    for parameter, plain in plain_grads.items():
        torch.testing.assert_close(split_grads[parameter], plain, rtol=1e-4, atol=1e-5)

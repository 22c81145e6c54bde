"""PositionAwareSAE (seed 004): ranges, curriculum, routing, positions at inference, folds."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from sae_variants import PositionAwareTrainingSAE, PositionAwareTrainingSAEConfig, TokenContext
from sae_variants.architectures.base import RunInfo
from sae_variants.architectures.position_aware import parameter_overhead
from sae_variants.architectures.position_aware_functional import (
    codes_and_penalties,
    curriculum_alpha,
    position_ranges,
)
from sae_variants.integrations.training.request import TrainRequest, build_runner_config
from sae_variants.integrations.training.runner import bind_run

D_IN, D_SAE, CONTEXT = 32, 128, 16


def _sae(alpha: float = 1.0, **options: Any) -> PositionAwareTrainingSAE:
    torch.manual_seed(0)
    options.setdefault("total_training_steps", 100)
    sae = PositionAwareTrainingSAE(
        PositionAwareTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, position_context=CONTEXT, **options)
    )
    sae.alpha.fill_(alpha)
    sae.eval()
    # Its decoupled weight decay acts on the optimizer, so training steps need one bound.
    sae.bind_optimizer(torch.optim.Adam(sae.parameters(), lr=0.1))
    return sae


def _contexts(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, CONTEXT, D_IN, generator=torch.Generator().manual_seed(seed)) + 0.5


def _step(
    sae: PositionAwareTrainingSAE, x: torch.Tensor, positions: torch.Tensor, step: int
) -> Any:
    rows = torch.arange(x.shape[0])
    sae.attach_token_context(TokenContext(positions, rows // CONTEXT, rows))
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": 0.04},
            dead_neuron_mask=None,
            n_training_steps=step,
            is_logging_step=False,
        )
    )


def test_config_rejects_bad_values() -> None:
    for field, value in [
        ("n_ranges", 0),
        ("position_context", 0),
        ("ln_eps", 0.0),
        ("adapter_dropout", 1.0),
        ("adapter_rank", 0),
        ("base_norm", "batchnorm"),
        ("adapter_ln", "input"),
        ("adapter_ln_gain_init", 0.0),
        ("l1_coefficient", -1.0),
        ("weight_decay", -1.0),
        ("curriculum_end_fraction", 0.05),
        ("total_training_steps", 0),
        ("normalize_activations", "covariance_whitening"),
    ]:
        cfg = PositionAwareTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=field):
            cfg.__post_init__()


def test_ranges_are_equal_parts_of_the_context_and_clamp_beyond_it() -> None:
    positions = torch.tensor([0, 31, 32, 63, 64, 127, 128, 1000])
    assert position_ranges(positions, 128, 4).tolist() == [0, 0, 1, 1, 2, 3, 3, 3]


def test_curriculum_is_base_only_then_a_linear_ramp_in_fractions_of_the_run() -> None:
    assert curriculum_alpha(0, 500, 0.1, 0.9) == 0.0
    assert curriculum_alpha(50, 500, 0.1, 0.9) == 0.0
    assert curriculum_alpha(250, 500, 0.1, 0.9) == pytest.approx(0.5)
    assert curriculum_alpha(450, 500, 0.1, 0.9) == 1.0
    # Long runs keep the paper's 1k / 10k steps.
    assert curriculum_alpha(1000, 50_000, 0.1, 0.9) == 0.0
    assert curriculum_alpha(10_000, 50_000, 0.1, 0.9) == 1.0


def _literal_codes(sae: PositionAwareTrainingSAE, x: torch.Tensor) -> torch.Tensor:
    """docs/spec.md §6 P1-P3 written out literally (every LayerNorm over its full axis, the scale
    multiplied back after the ReLU): the reference the product-form encoder must equal."""
    cfg = sae.cfg
    x = x - sae.b_dec
    if cfg.base_norm == "input_ln":
        s = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + cfg.ln_eps)
        pre = (
            sae.input_ln_gain * (x - x.mean(-1, keepdim=True)) / s + sae.input_ln_bias
        ) @ sae.W_enc + sae.b_enc
    else:
        pre = x @ sae.W_enc + sae.b_enc
        s = torch.ones_like(pre[..., :1])
        if cfg.base_norm == "preact_ln":
            s = torch.sqrt(pre.var(-1, keepdim=True, unbiased=False) + cfg.ln_eps)
            pre = sae.base_ln_gain * (pre - pre.mean(-1, keepdim=True)) / s + sae.base_ln_bias
    if not cfg.restore_scale:
        s = torch.ones_like(s)
    ranges = torch.arange(x.shape[1]) * cfg.n_ranges // cfg.position_context
    shift = torch.zeros_like(pre)
    for r in range(cfg.n_ranges):
        hidden = torch.relu(
            torch.relu(pre[:, ranges == r]) @ sae.adapter_down[r] + sae.adapter_down_bias[r]
        )
        out = hidden @ sae.adapter_up[r] + sae.adapter_up_bias[r]
        if cfg.adapter_ln == "output":
            out = torch.nn.functional.layer_norm(
                out, (D_SAE,), sae.adapter_ln_gain[r], sae.adapter_ln_bias[r], cfg.ln_eps
            )
        shift[:, ranges == r] = out
    return s * torch.relu(pre + sae.alpha * shift)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"restore_scale": False},
        {"adapter_ln": "none"},
        {"base_norm": "input_ln"},
        {"base_norm": "input_ln", "restore_scale": False},
        {"base_norm": "none"},
        {"base_norm": "none", "adapter_ln": "none"},
    ],
)
@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_product_form_encoder_equals_the_spec_formulas(
    options: dict[str, Any], alpha: float
) -> None:
    sae = _sae(alpha=alpha, **options)
    with torch.no_grad():  # move every parameter off its initial value so each one matters
        for parameter in sae.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        if options.get("adapter_ln") != "none":
            sae.adapter_ln_gain.abs_().add_(0.5)
        x = _contexts()
        torch.testing.assert_close(sae.encode(x), _literal_codes(sae, x), rtol=1e-4, atol=1e-4)


def test_each_row_goes_through_its_own_ranges_adapter_only() -> None:
    sae = _sae()
    x = _contexts()
    with torch.no_grad():
        before = sae.encode(x)
        sae.adapter_up_bias[2].add_(1.0)  # range 2 = positions 8..11 of 16
        after = sae.encode(x)
    changed = (after - before).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [8 <= p < 12 for p in range(CONTEXT)]


def test_positions_at_inference_are_never_guessed() -> None:
    sae = _sae()
    x = _contexts()
    with torch.no_grad():
        full = sae.encode(x)
        flat_positions = torch.arange(CONTEXT).repeat(x.shape[0])
        torch.testing.assert_close(
            sae.encode(x.reshape(-1, D_IN), positions=flat_positions), full.reshape(-1, D_SAE)
        )
        with pytest.raises(ValueError, match=r"encode\(x, positions=...\)"):
            sae.encode(x.reshape(-1, D_IN))
        with pytest.raises(ValueError, match="position_offset"):
            sae.encode(x[:, 9:10])  # one new token, as cached generation passes it
        sae.position_offset = 9
        torch.testing.assert_close(sae.encode(x[:, 9:10]), full[:, 9:10])
        torch.testing.assert_close(sae.encode(x[:, 9:]), full[:, 9:])  # a forward resumed at 9
        sae.position_offset = None
        # Beyond the training context the last range applies.
        long = torch.cat([x, x], dim=1)
        positions = torch.arange(2 * CONTEXT).clamp(max=CONTEXT - 1).expand(x.shape[0], -1)
        torch.testing.assert_close(sae.encode(long), sae.encode(long, positions=positions))


def test_dropout_acts_in_training_mode_only() -> None:
    sae = _sae()
    x = _contexts()
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), sae.encode(x), rtol=0, atol=0)
        sae.train()
        assert not torch.equal(sae.encode(x), sae.encode(x))


def test_training_step_follows_the_curriculum_and_adds_the_deviation_penalty() -> None:
    sae = _sae(alpha=0.0)
    sae.train()
    x = _contexts().reshape(-1, D_IN)
    positions = torch.arange(x.shape[0]) % CONTEXT
    early = _step(sae, x, positions, step=5)
    assert float(sae.alpha) == 0.0
    assert "deviation_loss" not in early.losses
    late = _step(sae, x, positions, step=50)
    assert float(sae.alpha) == pytest.approx(curriculum_alpha(50, 100, 0.1, 0.9))
    assert late.losses["deviation_loss"] > 0
    unset = _sae(total_training_steps=None)
    unset.train()
    with pytest.raises(ValueError, match="total_training_steps"):
        _step(unset, x, positions, step=0)


def test_training_step_losses_are_the_spec_loss() -> None:
    sae = _sae(alpha=0.0, adapter_dropout=0.0)  # no dropout: the step is deterministic
    sae.train()
    x = _contexts()
    flat = x.reshape(-1, D_IN)
    positions = torch.arange(flat.shape[0]) % CONTEXT
    out = _step(sae, flat, positions, step=50)
    alpha = curriculum_alpha(50, 100, 0.1, 0.9)
    h_r = _literal_codes(sae, x).reshape(-1, D_SAE)
    sae.alpha.fill_(0.0)
    h_b = _literal_codes(sae, x).reshape(-1, D_SAE)
    x_hat = h_r @ sae.W_dec + sae.b_dec
    with torch.no_grad():
        torch.testing.assert_close(out.losses["mse_loss"], (x_hat - flat).pow(2).sum(-1).mean())
        torch.testing.assert_close(out.losses["l1_loss"], 0.04 * h_b.sum(-1).mean())
        torch.testing.assert_close(
            out.losses["deviation_loss"], 0.04 * alpha * (h_r - h_b).abs().sum(-1).mean()
        )
    torch.testing.assert_close(out.sae_in, flat)
    torch.testing.assert_close(out.feature_acts, h_r.detach(), rtol=1e-4, atol=1e-4)


def test_weight_decay_is_decoupled_and_only_on_the_encoder_and_adapter_matrices() -> None:
    sae = _sae()
    sae.train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=0.1)
    sae.bind_optimizer(optimizer)
    x = _contexts().reshape(-1, D_IN)
    _step(sae, x, torch.arange(x.shape[0]) % CONTEXT, step=60)
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = torch.zeros_like(p)  # Adam with zero gradients moves nothing by itself
    optimizer.step()
    decayed = {"W_enc", "adapter_down", "adapter_up"}
    for name, p in sae.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.01) if name in decayed else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)


@pytest.mark.parametrize(
    "options", [{}, {"base_norm": "input_ln"}, {"base_norm": "none", "adapter_ln": "none"}]
)
def test_folds_keep_the_function(
    options: dict[str, Any], check_folds_keep_the_function: Any
) -> None:
    sae = _sae(**options)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D_IN))
        sae.b_enc.copy_(torch.randn(D_SAE) * 0.1)
    check_folds_keep_the_function(sae, _contexts(seed=3))


def test_parameter_overhead_is_near_the_papers_fifteen_percent() -> None:
    sae = PositionAwareTrainingSAE(PositionAwareTrainingSAEConfig(d_in=256, d_sae=2048))
    assert sae.cfg.rank() == 10
    overhead = sae.parameter_overhead()
    adapters = 4 * (2048 * 10 + 10 + 10 * 2048 + 2048) + 2 * 4 * 2048
    base = 2 * 256 * 2048 + 2048 + 256 + 2 * 256  # input LayerNorm gain and bias
    assert overhead == pytest.approx(adapters / base)
    assert parameter_overhead(sae.cfg) == pytest.approx(overhead)
    assert 0.14 < overhead < 0.19
    # At Gemma-2-2B shapes rho = 86 and the overhead is the paper's ~15%.
    gemma = PositionAwareTrainingSAEConfig(d_in=2304, d_sae=16384)
    assert gemma.rank() == 86
    assert 0.145 < parameter_overhead(gemma) < 0.155


def test_binding_the_run_fills_in_its_length_and_context() -> None:
    runner_cfg, preset = build_runner_config(TrainRequest(architecture="position_aware", d_sae=512))
    bound = bind_run(runner_cfg).sae
    assert bound.total_training_steps == preset.training_tokens // preset.train_batch_size_tokens
    assert bound.position_context == preset.context_size
    assert bind_run(bind_run(runner_cfg)).sae == bound  # binding twice changes nothing
    explicit, _ = build_runner_config(
        TrainRequest(architecture="position_aware", d_sae=512, sae_options={"position_context": 64})
    )
    assert bind_run(explicit).sae.position_context == 64
    # The bound config is validated again: a run shorter than the ranges is refused.
    with pytest.raises(ValueError, match="n_ranges=4 exceeds position_context=2"):
        runner_cfg.sae.bind_run(RunInfo(total_steps=10, lr_warm_up_steps=0, context_size=2))
    unbound = PositionAwareTrainingSAE(runner_cfg.sae)
    unbound.alpha.fill_(1.0)  # adapters on: their ranges need the context
    with pytest.raises(ValueError, match="position_context is None"):
        unbound.encode(torch.zeros(1, 4, 256))


def test_tied_init_reads_the_direction_each_feature_writes() -> None:
    sae = _sae()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    assert sae.W_enc.is_contiguous()  # safetensors refuses strided views on save
    independent = _sae(tied_init=False)
    cosine = torch.cosine_similarity(independent.W_enc.T, independent.W_dec, dim=1)
    assert cosine.abs().mean() < 0.5  # an unrelated start (tied: every cosine is 1)


def test_codes_and_penalties_backward_equals_autograds() -> None:
    generator = torch.Generator().manual_seed(3)
    base_pre = torch.randn(40, 24, generator=generator, dtype=torch.float64)
    adapted_pre = (
        base_pre + 0.7 * torch.randn(40, 24, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    base_codes = torch.relu(base_pre).requires_grad_()
    probe = torch.randn(40, 24, generator=generator, dtype=torch.float64)

    def loss(codes: torch.Tensor, l1: torch.Tensor, deviation: torch.Tensor) -> torch.Tensor:
        return (codes * probe).sum() + 0.3 * l1 + 0.9 * deviation

    fused = torch.autograd.grad(
        loss(*codes_and_penalties(base_codes, adapted_pre)), (base_codes, adapted_pre)
    )
    codes = torch.relu(adapted_pre)
    reference = torch.autograd.grad(
        loss(codes, base_codes.sum(), (codes - base_codes).abs().sum()), (base_codes, adapted_pre)
    )
    for got, expected in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, expected)


def test_adapter_ln_gain_starts_at_its_configured_value() -> None:
    sae = _sae(adapter_ln_gain_init=0.25)
    assert torch.equal(sae.adapter_ln_gain, torch.full_like(sae.adapter_ln_gain, 0.25))
    x = _contexts()
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), _literal_codes(sae, x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(sae.encode(x), _sae().encode(x))  # the gain reaches the codes

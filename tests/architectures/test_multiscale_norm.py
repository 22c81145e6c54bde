"""MultiScaleNormSAE (seed 001): each component against its equation, the optimizer policy against
SAELens's own Adam, and the running state across checkpoint and resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepInput

from sae_variants import (
    MultiScaleNormSAE,
    MultiScaleNormTrainingSAE,
    MultiScaleNormTrainingSAEConfig,
)
from sae_variants.architectures.base import OptimizerNotBoundError
from sae_variants.architectures.multiscale_norm import TRAINING_LOG_FILENAME
from sae_variants.architectures.multiscale_norm_functional import (
    feature_importance,
    frame_orthogonality,
    frame_orthogonality_floor,
    gate_thresholds,
    multiscale_normalize,
    next_lr_factor,
    reactivation_directions,
    slot_attention,
)
from sae_variants.functional import token_moments

D_IN, D_SAE = 32, 128


def _sae(**options: Any) -> MultiScaleNormTrainingSAE:
    """A fresh SAE bound to an Adam of its own (its training steps act on their optimizer)."""
    torch.manual_seed(0)
    sae = MultiScaleNormTrainingSAE(
        MultiScaleNormTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **options)
    )
    sae.bind_optimizer(torch.optim.Adam(sae.parameters(), lr=1e-3))
    return sae


def _activations(n: int = 256, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=generator) * 5 + 0.5  # token norms vary widely
    return (torch.randn(n, D_IN, generator=generator) + 0.3) * scale


def _step(sae: MultiScaleNormTrainingSAE, x: torch.Tensor, step: int = 0, l1: float = 0.04) -> Any:
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": l1},
            dead_neuron_mask=None,
            n_training_steps=step,
            is_logging_step=False,
        )
    )


def _train(
    sae: MultiScaleNormTrainingSAE,
    steps: int,
    optimizer: torch.optim.Optimizer | None = None,
    x: torch.Tensor | None = None,
) -> torch.optim.Optimizer:
    if optimizer is None:
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
        sae.bind_optimizer(optimizer)
    sae.train()
    for step in range(steps):
        out = _step(sae, _activations(seed=step) if x is None else x, step)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def test_config_rejects_bad_values() -> None:
    for field, value in [
        ("normalization", "batchnorm"),
        ("scales", [1.0, 0.0]),
        ("norm_eps", 0.0),
        ("attention_slots", 0),
        ("attention_key_dim", 0),
        ("l1_coefficient", -1.0),
        ("grad_accumulation", 0),
        ("gate_ema_decay", 1.0),
        ("lr_floor", 0.0),
        ("lr_spike_ratio", 1.0),
        ("lr_decay", 1.0),
        ("lr_recovery", 0.5),
        ("dead_window_steps", 0),
        ("reactivation_rank", 0),
        ("weight_decay", -0.1),
        ("normalize_activations", "covariance_whitening"),
    ]:
        cfg = MultiScaleNormTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=field):
            cfg.__post_init__()


def test_multiscale_normalization_is_the_softmax_mixture_of_per_scale_layernorms() -> None:
    x = _activations(16)
    scales = torch.tensor([0.1, 0.5, 1.0, 2.0])
    gains, biases, logits = torch.randn(4, D_IN), torch.randn(4, D_IN), torch.randn(4)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    weights = torch.softmax(logits, 0)
    expected = sum(
        weights[s] * (gains[s] * (x - mean) / torch.sqrt(scales[s] * var + 1e-5) + biases[s])
        for s in range(4)
    )
    moments = token_moments(x)
    torch.testing.assert_close(
        multiscale_normalize(x, moments, gains, biases, logits, scales, 1e-5), expected
    )
    # The same mixture far past the scale where var (x**2) overflows float32: by scale
    # invariance it is the mixture of x / 2^100 with eps shrunk by 2^-200, i.e. of x alone.
    huge = x * 2.0**100
    torch.testing.assert_close(
        multiscale_normalize(huge, token_moments(huge), gains, biases, logits, scales, 0.0),
        multiscale_normalize(x, moments, gains, biases, logits, scales, 0.0),
    )


def test_slot_attention_is_per_token_and_starts_as_the_identity() -> None:
    x = torch.randn(8, D_IN)
    query, keys = torch.randn(D_IN, 8), torch.randn(16, 8)
    zero_values = torch.zeros(16, D_IN)
    torch.testing.assert_close(slot_attention(x, query, keys, zero_values, torch.tensor(0.0)), x)
    values = torch.randn(16, D_IN)
    together = slot_attention(x, query, keys, values, torch.tensor(0.3))
    alone = torch.cat(
        [slot_attention(x[i : i + 1], query, keys, values, torch.tensor(0.3)) for i in range(8)]
    )
    torch.testing.assert_close(together, alone)
    logits = (x @ query) @ keys.T / math.sqrt(8) * torch.sigmoid(torch.tensor(0.3))
    torch.testing.assert_close(together, x + torch.softmax(logits, -1) @ values)


def test_frame_orthogonality_equals_the_d_sae_squared_formula_and_its_floor() -> None:
    W = torch.randn(40, 8, dtype=torch.float64)
    explicit = torch.linalg.matrix_norm(W @ W.T - torch.eye(40, dtype=torch.float64))
    torch.testing.assert_close(frame_orthogonality(W), explicit)
    # A unit-row tight frame (rows of 5 stacked orthonormal bases) attains the floor.
    tight = torch.cat(
        [torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0] for _ in range(5)]
    )
    assert float(frame_orthogonality(tight)) == pytest.approx(frame_orthogonality_floor(40, 8))


def test_gate_is_one_sided_uses_running_statistics_and_codes_restore_the_token_scale() -> None:
    sae = _sae(attention=False, z_threshold=2.0)
    with torch.no_grad():
        sae.gate_mean.fill_(0.5)
        sae.gate_var.fill_(0.25)
    thresholds = gate_thresholds(sae.gate_mean, sae.gate_var, 2.0, 1e-5)
    torch.testing.assert_close(thresholds, torch.full((D_SAE,), 0.5 + 2.0 * math.sqrt(0.25 + 1e-5)))
    sae.eval()
    x = _activations(64)
    codes, pre = sae.encode_with_hidden_pre(x)
    scale = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5)
    fires = pre > thresholds
    assert fires.any()
    assert (~fires).any()
    torch.testing.assert_close(codes, torch.where(fires, pre * scale, torch.zeros(())))
    # Scale restoration: the encoder's decisions are scale-invariant, the codes scale with x.
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(7.0 * x), 7.0 * codes, rtol=1e-4, atol=1e-4)


def test_gate_statistics_start_from_the_first_batch_and_move_only_in_training_steps() -> None:
    sae = _sae()
    x = _activations()
    sae.eval()
    with torch.no_grad():
        _step(sae, x)
        sae.encode(x)
    assert not bool(sae.gate_initialized)
    sae.train()
    sae.encode(x)  # a training-mode encode outside a training step moves nothing either
    assert not bool(sae.gate_initialized)
    sae.cfg.grad_accumulation = 1
    _, pre = sae.encode_with_hidden_pre(x)
    _step(sae, x)
    torch.testing.assert_close(sae.gate_mean, pre.detach().mean(0))
    torch.testing.assert_close(sae.gate_var, pre.detach().var(0, unbiased=False))
    first_mean = sae.gate_mean.clone()
    y = _activations(seed=5)
    _, pre_y = sae.encode_with_hidden_pre(y)
    _step(sae, y)
    torch.testing.assert_close(sae.gate_mean, 0.99 * first_mean + 0.01 * pre_y.detach().mean(0))


def test_micro_batches_sum_to_the_full_batch_gradient() -> None:
    x = _activations(256)
    grads = []
    for accumulation in (1, 4):
        # Without the gate and the importance weights nothing depends on how the batch is split.
        sae = _sae(grad_accumulation=accumulation, z_gating=False, importance_weighting=False)
        _step(sae, x).loss.backward()
        grads.append({name: p.grad.clone() for name, p in sae.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5, msg=name)


def test_importance_scales_exactly_the_per_feature_gradients() -> None:
    x = _activations(256)
    grads = []
    for weighting in (False, True):
        # With no L1 and no orthogonality term both losses are the same MSE; only the scaling differs.
        sae = _sae(
            grad_accumulation=1, importance_weighting=weighting, orthogonality_coefficient=0.0
        )
        out = _step(sae, x, l1=0.0)
        out.loss.backward()
        grads.append({name: p.grad.clone() for name, p in sae.named_parameters()})
    importance = feature_importance(out.feature_acts, torch.ones(D_SAE))
    assert float(importance.std()) > 0.05
    plain, scaled = grads
    torch.testing.assert_close(scaled["W_enc"], plain["W_enc"] * importance)
    torch.testing.assert_close(scaled["b_enc"], plain["b_enc"] * importance)
    torch.testing.assert_close(scaled["W_dec"], plain["W_dec"] * importance.unsqueeze(1))
    torch.testing.assert_close(scaled["attention_values"], plain["attention_values"])


def test_importance_is_the_sigmoid_of_standardized_mean_code_times_decoder_norm() -> None:
    codes = torch.rand(64, 10)
    norms = torch.rand(10) + 0.5
    raw = codes.mean(0) * norms
    torch.testing.assert_close(
        feature_importance(codes, norms), torch.sigmoid((raw - raw.mean()) / raw.std())
    )


def test_adaptive_lr_factor_shrinks_on_spikes_recovers_and_respects_the_floor() -> None:
    kwargs = dict(spike_ratio=2.0, decay=0.9, recovery=1.1, recovery_interval=100, minimum=0.05)
    assert next_lr_factor(1.0, 5.0, None, 7, **kwargs) == 1.0  # no running average yet
    assert next_lr_factor(1.0, 5.0, 2.0, 7, **kwargs) == pytest.approx(0.9)
    assert next_lr_factor(0.5, 3.0, 2.0, 7, **kwargs) == 0.5
    assert next_lr_factor(0.5, 3.0, 2.0, 200, **kwargs) == pytest.approx(0.55)
    assert next_lr_factor(0.96, 3.0, 2.0, 200, **kwargs) == 1.0
    assert next_lr_factor(0.051, 9.0, 2.0, 7, **kwargs) == 0.05


def test_optimizer_policy_reads_the_preclip_norm_scales_and_restores_the_lr() -> None:
    sae = _sae()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.bind_optimizer(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 0.5)
    used: list[float] = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(opt.param_groups[0]["lr"]))
    x = _activations()
    out = _step(sae, x)
    out.loss.backward()
    preclip = float(torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0))
    assert preclip > 10  # so clipping changed the gradients the optimizer sees
    optimizer.step()
    assert float(sae.grad_norm_ema) == pytest.approx(preclip, rel=1e-4)
    optimizer.zero_grad()
    scheduler.step()
    with torch.no_grad():
        sae.lr_factor.fill_(0.25)
        sae.grad_norm_ema.fill_(1e9)  # no spike, no recovery at this step: the factor stays
    _step(sae, x).loss.backward()
    optimizer.step()
    assert used[-1] == pytest.approx(1e-3 * 0.5 * 0.25)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)


def test_weight_decay_is_decoupled_and_only_on_the_encoder_and_attention_matrices() -> None:
    sae = _sae(adaptive_lr=False, weight_decay=0.1)
    optimizer = torch.optim.Adam(sae.parameters(), lr=0.01)
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    with torch.no_grad():
        sae.attention_values.fill_(1.0)
    before["attention_values"] = sae.attention_values.detach().clone()
    sae.before_optimizer_step(optimizer)
    sae.after_optimizer_step(optimizer)
    decayed = {"W_enc", "attention_query", "attention_keys", "attention_values"}
    for name, parameter in sae.named_parameters():
        factor = 1.0 - 0.01 * 0.1 if name in decayed else 1.0
        torch.testing.assert_close(parameter.detach(), before[name] * factor, msg=name)


def test_reactivation_revives_dead_features_into_the_residual_subspace_and_resets_their_moments() -> (
    None
):
    sae = _sae(reactivation_interval=3, dead_window_steps=2, reactivation_rank=4)
    optimizer = _train(sae, 2)
    with torch.no_grad():
        sae.steps_since_fired.zero_()
        sae.steps_since_fired[:5] = 10
        sae.W_dec[:5] = torch.randn(5, D_IN)
    snapshots: list[dict[str, torch.Tensor]] = []
    before = {
        k: optimizer.state[p]["exp_avg"].clone()
        for k, p in (("W_enc", sae.W_enc), ("W_dec", sae.W_dec))
    }
    optimizer.register_step_pre_hook(
        lambda opt, *_: snapshots.append(
            {
                "W_enc": opt.state[sae.W_enc]["exp_avg"].clone(),
                "W_dec": opt.state[sae.W_dec]["exp_avg"].clone(),
            }
        )
    )
    x = _activations(seed=9)
    revived = sae.revive_dead_features(x)
    assert revived == 5
    assert int(sae.features_revived) == 5
    assert bool(sae.pending_moment_reset[:5].all())
    assert not bool(sae.pending_moment_reset[5:].any())
    torch.testing.assert_close(sae.W_dec[:5].norm(dim=-1), torch.ones(5))
    assert bool((sae.b_enc[:5] == 0).all())
    assert bool((sae.steps_since_fired[:5] == 0).all())
    # Each direction lies in the span of the residual rows.
    with torch.no_grad():
        sae.eval()
        residual = (x - sae.decode(sae.encode(x))).T  # [d_in, batch]
        sae.train()
        coefficients = torch.linalg.lstsq(residual, sae.W_dec[:5].T).solution
        torch.testing.assert_close(residual @ coefficients, sae.W_dec[:5].T, atol=1e-3, rtol=1e-3)
    _train(sae, 1, optimizer, x)
    reset = snapshots[-1]
    assert bool((reset["W_enc"][:, :5] == 0).all())
    assert bool((reset["W_dec"][:5] == 0).all())
    torch.testing.assert_close(reset["W_enc"][:, 5:], before["W_enc"][:, 5:])
    torch.testing.assert_close(reset["W_dec"][5:], before["W_dec"][5:])
    assert not bool(sae.pending_moment_reset.any())


def test_reactivation_directions_are_unit_and_follow_the_residual() -> None:
    basis = torch.linalg.qr(torch.randn(D_IN, 3))[0]
    residual = torch.randn(200, 3) @ basis.T
    directions = reactivation_directions(residual, 10, rank=3)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(directions @ basis @ basis.T, directions, atol=1e-4, rtol=1e-4)


def test_a_training_step_without_a_bound_optimizer_is_refused() -> None:
    sae = MultiScaleNormTrainingSAE(MultiScaleNormTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))
    sae.train()
    with pytest.raises(OptimizerNotBoundError, match=r"bind_optimizer\(optimizer\)"):
        _step(sae, _activations())
    # Without the adaptive learning rate, the decay and reactivation there is nothing to bind.
    plain = MultiScaleNormTrainingSAE(
        MultiScaleNormTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, adaptive_lr=False, weight_decay=0.0, reactivation=False
        )
    )
    plain.train()
    assert torch.isfinite(_step(plain, _activations()).loss)
    with pytest.raises(ValueError, match="does not hold this SAE's parameters"):
        sae.bind_optimizer(torch.optim.Adam(plain.parameters()))


def test_training_step_refuses_positions() -> None:
    with pytest.raises(
        ValueError, match=r"trains on \[batch, d_in=32\] activations, got \(2, 4, 32\)"
    ):
        _step(_sae(), torch.randn(2, 4, D_IN))


def test_centred_input_is_the_uncentred_encoder_on_x_minus_b_dec() -> None:
    centred = _sae(apply_b_dec_to_input=True)
    with torch.no_grad():
        centred.b_dec.copy_(torch.randn(D_IN) * 3)
    plain = _sae(apply_b_dec_to_input=False)
    plain.load_state_dict(centred.state_dict())
    centred.eval()
    plain.eval()
    x = _activations(seed=4)
    torch.testing.assert_close(centred.encode(x), plain.encode(x - centred.b_dec))


def test_reactivation_residual_is_in_input_space_when_centring() -> None:
    # Moving the data and b_dec by the same vector changes nothing a centred SAE computes, so the
    # revived directions must not change either; a residual taken from x - b_dec would move.
    sae = _sae(apply_b_dec_to_input=True, reactivation_rank=2, dead_window_steps=2)
    _train(sae, 2)
    shifted = copy.deepcopy(sae)
    shift = torch.full((D_IN,), 40.0)
    x = _activations(seed=5)
    revived = []
    for model, data in ((sae, x), (shifted, x + shift)):
        with torch.no_grad():
            if model is shifted:
                model.b_dec.add_(shift)
            model.steps_since_fired.zero_()
            model.steps_since_fired[:3] = 10
        torch.manual_seed(7)  # the same random SVD sketch and row sample for both
        assert model.revive_dead_features(data) == 3
        revived.append(model.W_dec[:3].detach().clone())
    torch.testing.assert_close(revived[1], revived[0], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    "options",
    [{}, {"restore_scale": False}, {"normalization": "none"}, {"apply_b_dec_to_input": False}],
)
def test_folds_keep_the_function(
    options: dict[str, Any], check_folds_keep_the_function: Any
) -> None:
    sae = _sae(**options)
    _train(sae, 3)
    sae.eval()
    check_folds_keep_the_function(sae, _activations(seed=3))


def test_saved_model_keeps_the_gate_and_drops_training_state(tmp_path: Path) -> None:
    sae = _sae()
    _train(sae, 3)
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert isinstance(loaded, MultiScaleNormSAE)
    assert set(loaded.state_dict()) == set(sae.state_dict()) - {
        "gate_initialized",
        "steps_since_fired",
        "training_step",
        "lr_factor",
        "grad_norm_ema",
        "pending_moment_reset",
        "features_revived",
    }
    torch.testing.assert_close(loaded.gate_mean, sae.gate_mean)
    log = json.loads((tmp_path / TRAINING_LOG_FILENAME).read_text())
    assert log["steps"] == 3
    assert log["lr_factor"] == float(sae.lr_factor)
    sae.eval()
    x = _activations(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def test_running_state_survives_checkpoint_and_resume(checkpointed_runs: Any) -> None:
    # The pre-fix gate (z = 2, uncentred) leaves features dead in this short run, so reactivation
    # runs before the checkpoint.
    sae_cfg = dict(
        d_in=64,
        d_sae=128,
        reactivation_interval=4,
        dead_window_steps=2,
        z_threshold=2.0,
        apply_b_dec_to_input=False,
    )

    def run(resume_from: str | None, output: str) -> MultiScaleNormTrainingSAE:
        sae = checkpointed_runs.run(MultiScaleNormTrainingSAEConfig(**sae_cfg), output, resume_from)
        assert isinstance(sae, MultiScaleNormTrainingSAE)
        return sae

    first = run(None, "first")
    assert int(first.training_step) == 24
    checkpoint = checkpointed_runs.mid_run_checkpoints()[0]
    saved = MultiScaleNormTrainingSAE(MultiScaleNormTrainingSAEConfig(**sae_cfg))
    saved.load_weights_from_checkpoint(checkpoint)
    assert bool(saved.gate_initialized)
    assert 0 < int(saved.training_step) < 24
    assert int(saved.features_revived) > 0, "reactivation should have run before the checkpoint"

    resumed = run(str(checkpoint), "resumed")
    # The step counter (which times reactivation and lr recovery) continued from the checkpoint.
    assert int(resumed.training_step) == 24
    assert int(resumed.features_revived) >= int(saved.features_revived)

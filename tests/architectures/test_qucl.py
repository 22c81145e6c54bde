"""QuCLSAE (seed 000): quantizer, pyramid, curriculum, InfoNCE, state in buffers, resume, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepInput

from sae_variants import QuCLSAE, QuCLTrainingSAE, QuCLTrainingSAEConfig, export_to_saelens
from sae_variants.architectures.qucl import CURRICULUM_LOG_FILENAME
from sae_variants.architectures.qucl_functional import (
    batch_diversity,
    code_uniformity_infonce,
    effective_encoder,
    fake_quantize,
    feature_importance_weights,
    next_rank,
    pyramid_blocks,
    pyramid_pre_activations,
    rank_schedule,
    scale_ranks,
)

D_IN, D_SAE = 32, 96


def _step(sae: QuCLTrainingSAE, x: torch.Tensor, step: int = 0) -> Any:
    coefficients = {"l1": sae.cfg.l1_coefficient, "contrastive": sae.cfg.contrastive_coefficient}
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients=coefficients,
            dead_neuron_mask=None,
            n_training_steps=step,
            is_logging_step=False,
        )
    )


def _sae(**options: Any) -> QuCLTrainingSAE:
    return QuCLTrainingSAE(QuCLTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **options))


# ---------------------------------------------------------------- pure maths


def test_quantizer_uses_16_levels_per_row_keeps_extremes_and_passes_gradients_straight() -> None:
    u = torch.randn(8, 200, requires_grad=True)
    q = fake_quantize(u, bits=4)
    for row_u, row_q in zip(u.detach(), q.detach(), strict=True):
        assert row_q.unique().numel() <= 16
        torch.testing.assert_close(row_q.min(), row_u.min())
        torch.testing.assert_close(row_q.max(), row_u.max())
        step = (row_u.max() - row_u.min()) / 15
        assert (row_q - row_u).abs().max() <= step / 2 + 1e-5
    q.sum().backward()
    torch.testing.assert_close(u.grad, torch.ones_like(u))


def test_quantizer_statistics_are_per_row() -> None:
    u = torch.randn(16, 40)
    u[3] *= 100.0  # an outlier row must not change how the other rows are quantized
    batched = fake_quantize(u, bits=4)
    for i in range(16):
        torch.testing.assert_close(fake_quantize(u[i : i + 1], bits=4), batched[i : i + 1])


def test_rank_schedule_is_in_units_of_min_d_in_d_sae() -> None:
    s = rank_schedule(256, 4096, 0.1, 0.25, 0.9, 0.05, 0.02)
    assert (s.minimum, s.initial, s.maximum, s.grow, s.shrink) == (25, 64, 230, 13, 6)
    gemma = rank_schedule(2304, 65536, 0.1, 0.25, 0.9, 0.05, 0.02)
    assert gemma.maximum == 2073  # the spec's W_r of 2073 x 65536, not 0.9 * 65536 rows


def test_next_rank_grows_shrinks_keeps_and_clamps() -> None:
    s = rank_schedule(100, 400, 0.1, 0.25, 0.9, 0.05, 0.02)
    assert next_rank(25, 0.3, 0.2, 0.5, s) == 30
    assert next_rank(88, 0.3, 0.2, 0.5, s) == 90
    assert next_rank(90, 0.3, 0.2, 0.5, s) == 90
    assert next_rank(25, 0.05, 0.2, 0.5, s) == 23
    assert next_rank(11, 0.05, 0.2, 0.5, s) == 10
    assert next_rank(25, 0.15, 0.2, 0.5, s) == 25


def test_pyramid_blocks_read_only_their_rank_prefix() -> None:
    assert pyramid_blocks(96) == ((0, 32), (32, 64), (64, 96))
    assert pyramid_blocks(10) == ((0, 4), (4, 8), (8, 10))
    rank = 40
    r_full, r_half, r_quarter = scale_ranks(rank)
    assert (r_full, r_half, r_quarter) == (40, 20, 10)
    W_r = torch.randn(50, 96, requires_grad=True)
    b_enc = torch.randn(96)
    q = torch.randn(5, rank)
    base = pyramid_pre_activations(q, W_r, b_enc, multiscale=True)
    nudged = q.clone()
    nudged[:, r_quarter] += 1.0  # outside the quarter-scale prefix, inside the others
    moved = pyramid_pre_activations(nudged, W_r, b_enc, multiscale=True) - base
    assert moved[:, 64:].abs().max() == 0
    assert moved[:, :32].abs().min() > 0
    assert moved[:, 32:64].abs().min() > 0
    base.sum().backward()
    assert W_r.grad[rank:].abs().max() == 0, "rows beyond the current rank must get no gradient"
    assert W_r.grad[r_quarter:rank, 64:].abs().max() == 0


@pytest.mark.parametrize("multiscale", [True, False])
def test_effective_encoder_is_the_pyramid_without_quantization(multiscale: bool) -> None:
    P, W_r, b_enc = torch.randn(D_IN, 28), torch.randn(28, D_SAE), torch.randn(D_SAE)
    x = torch.randn(7, D_IN)
    rank = 20
    expected = pyramid_pre_activations(x @ P[:, :rank], W_r, b_enc, multiscale)
    torch.testing.assert_close(x @ effective_encoder(P, W_r, rank, multiscale) + b_enc, expected)


def test_batch_diversity_equals_one_minus_mean_off_diagonal_cosine() -> None:
    x = torch.randn(50, 16) + 2.0
    unit = x / x.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    mean_off = (cos.sum() - cos.diagonal().sum()) / (50 * 49)
    torch.testing.assert_close(batch_diversity(x), 1 - mean_off)
    assert float(batch_diversity(torch.ones(10, 4))) == pytest.approx(0.0, abs=1e-6)


def test_feature_importance_weights_average_one_and_are_nearly_uniform_as_the_spec_says() -> None:
    w = feature_importance_weights(torch.randn(512, 24) * torch.linspace(0.1, 10, 24))
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-6)
    assert float((w - 1).abs().max()) < 5e-3


@pytest.mark.parametrize("density", [0.02, 0.5])
def test_infonce_sparse_route_equals_dense_maths_in_value_and_gradient(density: float) -> None:
    g = torch.Generator().manual_seed(0)
    pre = (
        torch.randn(300, 200, generator=g)
        + torch.distributions.Normal(0, 1).icdf(torch.tensor(density))
    ).requires_grad_()
    anchors = torch.randperm(300, generator=g)[:64]
    codes = torch.relu(pre)
    codes.retain_grad()
    loss = code_uniformity_infonce(codes, anchors, temperature=0.1)
    loss.backward()
    # Reference: the formula written out with dense tensors.
    ref_pre = pre.detach().clone().requires_grad_()
    ref_codes = torch.relu(ref_pre)
    z = ref_codes / ref_codes.norm(dim=1, keepdim=True).clamp_min(1e-8)
    logits = z[anchors] @ z.T / 0.1
    ref = (torch.logsumexp(logits, 1) - logits[torch.arange(64), anchors]).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(pre.grad, ref_pre.grad, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the training SAE


def test_config_rejects_bad_values() -> None:
    cfg = QuCLTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)
    for name, value in [
        ("initial_rank_fraction", 0.95),
        ("min_rank_fraction", 0.0),
        ("quantization_bits", 0),
        ("contrastive_temperature", 0.0),
        ("curriculum_window", 0),
        ("threshold_max", 0.01),
        ("l1_coefficient", -1.0),
        ("shrink_ratio", 1.0),
        ("rank_grow_fraction", 0.0),
    ]:
        bad = QuCLTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)
        setattr(bad, name, value)
        with pytest.raises(ValueError, match=name.split("_")[0]):
            bad.__post_init__()
    assert cfg.schedule().initial == 8


def test_curriculum_sets_threshold_from_diversity_then_moves_the_rank_every_interval() -> None:
    sae = _sae(diversity_batches=3, curriculum_window=2, curriculum_interval=4, contrastive=False)
    sae.train()
    start = sae.current_rank
    schedule = sae.cfg.schedule()
    x = (
        torch.randn(64, D_IN) + 3.0
    )  # strongly aligned rows: diversity ~0.1, threshold clipped to 0.2
    expected_diversity = float(batch_diversity(x))
    for step in range(1, 9):
        _step(sae, x, step)
        if step < 3:
            assert not sae.threshold_ready
        if step == 3:
            assert float(sae.curriculum_threshold) == pytest.approx(
                min(max(1 - expected_diversity, 0.05), 0.2), abs=1e-6
            )
        # An untrained SAE reconstructs badly (FVU ~1 > threshold): the rank grows at steps 4 and 8.
        assert sae.current_rank == start + schedule.grow * (step // 4)
    assert [e.step for e in sae.rank_trajectory] == [4, 8]

    # Reconstruction far better than half the threshold (FVU 0.01 < 0.5 * 0.2) shrinks it.
    rank = sae.current_rank
    for _ in range(9, 13):
        sae._advance_curriculum(x, torch.tensor(0.01))
    assert sae.current_rank == rank - schedule.shrink
    assert sae.rank_trajectory[-1].windowed_fvu == pytest.approx(0.01)


def test_fixed_rank_and_eval_mode_never_move_the_curriculum() -> None:
    fixed = _sae(
        dynamic_rank=False, diversity_init=False, curriculum_window=1, curriculum_interval=1
    )
    fixed.train()
    for step in range(5):
        _step(fixed, torch.randn(32, D_IN), step)
    assert fixed.current_rank == fixed.cfg.schedule().initial

    sae = _sae(diversity_batches=1, curriculum_window=1, curriculum_interval=1)
    sae.eval()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    with torch.no_grad():
        for step in range(5):
            _step(sae, torch.randn(32, D_IN), step)
    for key, value in sae.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_adaptive_sparsity_scales_l1_by_sigmoid_of_windowed_fvu() -> None:
    sae = _sae(curriculum_window=2, contrastive=False)
    sae.train()
    assert sae.sparsity_scale() == 1.0  # the window is not full yet
    sae.fvu_window.copy_(torch.tensor([0.1, 0.3]))
    sae.fvu_count.fill_(2)
    assert sae.sparsity_scale() == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))
    out = _step(sae, torch.randn(16, D_IN))
    expected = (
        sae.cfg.l1_coefficient
        * float(torch.sigmoid(torch.tensor(2.0)))
        * out.feature_acts.sum(-1).mean()
    )
    torch.testing.assert_close(out.losses["l1_loss"], expected)


def test_decoder_rows_stay_unit_and_their_gradients_are_tangent() -> None:
    sae = _sae()
    sae.train()
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    out = _step(sae, torch.randn(64, D_IN))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    out.loss.backward()
    radial = (sae.W_dec.grad * sae.W_dec.detach()).sum(dim=1)
    assert radial.abs().max() < 1e-5


def test_folds_keep_the_function(tmp_path: Path) -> None:
    sae = _sae()
    x = torch.randn(40, D_IN)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)
        sae.b_enc.add_(0.01)
        sae.eval()
        before = sae.decode(sae.encode(x))
        sae.fold_W_dec_norm()
        torch.testing.assert_close(sae.decode(sae.encode(x)), before, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
        # Trained on x * 2.5: after folding the factor, raw x gives the same reconstruction / 2.5.
        scaled = sae.decode(sae.encode(2.5 * x))
        sae.fold_activation_norm_scaling_factor(2.5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), scaled / 2.5, atol=1e-5, rtol=1e-4)


def test_saved_model_keeps_rank_drops_training_state_and_logs_the_curriculum(
    tmp_path: Path,
) -> None:
    sae = _sae(diversity_batches=1, curriculum_window=1, curriculum_interval=1)
    sae.train()
    for step in range(3):
        _step(sae, torch.randn(64, D_IN) + 3.0, step)
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(str(tmp_path))
    assert isinstance(loaded, QuCLSAE)
    assert loaded.current_rank == sae.current_rank != sae.cfg.schedule().initial
    assert not any(name in loaded.state_dict() for name in ("fvu_window", "curriculum_threshold"))
    log = json.loads((tmp_path / CURRICULUM_LOG_FILENAME).read_text())
    assert log["final_rank"] == sae.current_rank
    assert len(log["decisions"]) == len(sae.rank_trajectory) >= 1
    x = torch.randn(20, D_IN)
    sae.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def test_resumed_run_continues_with_the_rank_it_stopped_at(checkpointed_runs: Any) -> None:
    sae_cfg = dict(
        d_in=64, d_sae=128, diversity_batches=2, curriculum_window=2, curriculum_interval=2
    )

    def run(resume_from: str | None, output: str) -> QuCLTrainingSAE:
        sae = checkpointed_runs.run(QuCLTrainingSAEConfig(**sae_cfg), output, resume_from)
        assert isinstance(sae, QuCLTrainingSAE)
        return sae

    first = run(None, "first")
    checkpoints = checkpointed_runs.mid_run_checkpoints()
    assert checkpoints, "the run should have written a mid-run checkpoint"
    checkpoint = checkpoints[0]
    saved = QuCLTrainingSAE(QuCLTrainingSAEConfig(**sae_cfg))
    saved.load_weights_from_checkpoint(checkpoint)
    stopped_rank, stopped_step = saved.current_rank, int(saved.curriculum_step)
    assert stopped_rank != saved.cfg.schedule().initial, (
        "the rank should have moved before the checkpoint"
    )

    resumed = run(str(checkpoint), "resumed")
    first_decision = resumed.rank_trajectory[0]
    assert first_decision.rank_before == stopped_rank
    assert first_decision.step == stopped_step + 2 - stopped_step % 2
    assert resumed.current_rank == first.current_rank


def test_export_folds_to_standard_reports_the_change_and_refuses_beyond_tolerance() -> None:
    sae = _sae(quantization_bits=16)
    sae.eval()
    x = torch.randn(256, D_IN)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    export = export_to_saelens(sae, x, max_explained_variance_change=0.01)
    assert export.method == "fold"
    assert export.sae.cfg.architecture() == "standard"
    assert abs(export.change) < 1e-3
    with torch.no_grad():
        torch.testing.assert_close(export.sae.encode(x), sae.encode(x), atol=1e-3, rtol=1e-3)
    coarse = _sae(quantization_bits=1)
    coarse.eval()
    with torch.no_grad():
        coarse.W_r.mul_(50.0)
    with pytest.raises(ValueError, match="changes explained variance by"):
        export_to_saelens(coarse, x, max_explained_variance_change=0.0)
    with pytest.raises(ValueError, match=r"shape \[rows >= 8, d_in=32\]"):
        export_to_saelens(sae, x[0], max_explained_variance_change=0.01)

"""SeqContrastiveSAE (seed 003): the encoder, the pairs and the masked InfoNCE against their
equations, the unit-norm decoder, the folds, and how the pipeline configures it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from sae_variants import (
    MissingTokenContextError,
    SeqContrastiveTrainingSAE,
    SeqContrastiveTrainingSAEConfig,
    TokenContext,
)
from sae_variants.architectures.seq_contrastive_functional import (
    masked_info_nce,
    sample_anchor_pairs,
    soft_support,
    window_partners,
)
from sae_variants.integrations.training.request import TrainRequest, build_runner_config
from sae_variants.integrations.training.runner import bind_run

D_IN, D_SAE = 32, 128
SEQUENCES, POSITIONS = 16, 8


def _sae(**options: Any) -> SeqContrastiveTrainingSAE:
    torch.manual_seed(0)
    options.setdefault("contrastive_warm_up_steps", 0)
    return SeqContrastiveTrainingSAE(
        SeqContrastiveTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **options)
    )


def _batch(seed: int = 0, shared: float = 2.0) -> tuple[torch.Tensor, TokenContext]:
    """SEQUENCES x POSITIONS rows; rows of a sequence share a direction (of norm ``shared`` x the
    noise's), so positives are findable."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(SEQUENCES, 1, D_IN, generator=generator) * shared
    x = (base + torch.randn(SEQUENCES, POSITIONS, D_IN, generator=generator)).reshape(-1, D_IN)
    positions = torch.randint(0, 4, (SEQUENCES, 1), generator=generator) + torch.arange(POSITIONS)
    context = TokenContext(
        positions.reshape(-1),
        torch.arange(SEQUENCES).repeat_interleave(POSITIONS) + 100,
        torch.randint(0, 50, (SEQUENCES * POSITIONS,), generator=generator),
    )
    return x, context


def _step(
    sae: SeqContrastiveTrainingSAE,
    x: torch.Tensor,
    context: TokenContext | None,
    contrastive: float = 0.1,
    l1: float = 0.04,
) -> Any:
    if context is not None:
        sae.attach_token_context(context)
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": l1, "contrastive": contrastive},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=True,
        )
    )


def test_config_rejects_bad_values() -> None:
    for field, value in [
        ("ln_eps", 0.0),
        ("l1_coefficient", -1.0),
        ("contrastive_coefficient", -0.1),
        ("temperature", 0.0),
        ("positive_window", 0),
        ("contrastive_pairs", 0),
        ("contrastive_warm_up_steps", -1),
        ("contrastive_similarity", "dot"),
        ("hard_negatives", 0),
        ("normalize_activations", "covariance_whitening"),
    ]:
        cfg = SeqContrastiveTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=field):
            cfg.__post_init__()
    cfg = SeqContrastiveTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)
    cfg.positions_per_context = 7
    with pytest.raises(ValueError, match="even positions_per_context"):
        cfg.__post_init__()


def test_encoder_is_the_scale_restored_layer_norm_relu() -> None:
    sae = _sae()
    with torch.no_grad():
        sae.ln_gain.copy_(torch.rand(D_IN) + 0.5)
        sae.ln_bias.copy_(torch.randn(D_IN) * 0.1)
        sae.b_dec.copy_(torch.randn(D_IN))
        sae.b_enc.copy_(torch.randn(D_SAE) * 0.1)
    x, _ = _batch()
    centred = x - sae.b_dec
    sigma = torch.sqrt(centred.var(dim=-1, keepdim=True, unbiased=False) + 1e-5)
    normalized = sae.ln_gain * (centred - centred.mean(-1, keepdim=True)) / sigma + sae.ln_bias
    expected = sigma * torch.relu(normalized @ sae.W_enc + sae.b_enc)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), expected)
        # Decoding stays linear: a token scaled by k gets codes and reconstruction-offset scaled by k.
        sae.b_dec.zero_()
        torch.testing.assert_close(sae.encode(3.0 * x), 3.0 * sae.encode(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sae.decode(sae.encode(x)), sae.encode(x) @ sae.W_dec + sae.b_dec)
    paper_literal = _sae(restore_scale=False)
    with torch.no_grad():
        torch.testing.assert_close(
            paper_literal.encode(3.0 * x), paper_literal.encode(x), rtol=1e-4, atol=1e-4
        )


def test_window_partners_are_same_sequence_in_window_never_self() -> None:
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 40, (300,), generator=generator)
    sequences = torch.randint(0, 12, (300,), generator=generator) * 7
    for window in (1, 3, 8):
        partners = window_partners(positions, sequences, window, generator)
        for row in range(300):
            distance = (positions - positions[row]).abs()
            candidates = (
                ((sequences == sequences[row]) & (distance >= 1) & (distance <= window))
                .nonzero()
                .squeeze(1)
            )
            if candidates.numel() == 0:
                assert partners[row] == -1
            else:
                assert partners[row] in candidates.tolist()


def test_window_partners_choose_uniformly_among_candidates() -> None:
    positions = torch.tensor([5, 3, 4, 6, 7, 30])
    sequences = torch.zeros(6, dtype=torch.long)
    counts = torch.zeros(6)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4000):
        counts[window_partners(positions, sequences, 2, generator)[0]] += 1
    # Row 0 (position 5) has candidates at positions 3, 4, 6, 7: rows 1-4, a quarter each.
    assert counts[0] == 0
    assert counts[5] == 0
    assert ((counts[1:5] / 4000 - 0.25).abs() < 0.03).all()


def test_anchor_sampling_is_bounded_and_symmetric() -> None:
    partners = torch.tensor([1, 0, 3, 2, -1, 4] * 50)
    eligible = torch.ones(300, dtype=torch.bool)
    anchors, mates = sample_anchor_pairs(partners, eligible, n_pairs=16)
    assert anchors.numel() == 32
    assert torch.equal(partners[anchors[:16]], mates[:16])
    assert torch.equal(anchors[16:], mates[:16])
    assert torch.equal(mates[16:], anchors[:16])
    none_eligible = sample_anchor_pairs(partners, torch.zeros(300, dtype=torch.bool), 16)[0]
    assert none_eligible.numel() == 0


def test_info_nce_matches_a_loop_over_anchors_and_masks_self_and_same_sequence() -> None:
    generator = torch.Generator().manual_seed(2)
    codes = torch.relu(torch.randn(12, 20, generator=generator))
    codes[7] = 0.0  # an all-zero code is dropped from the anchors
    sequences = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    anchors = torch.tensor([0, 1, 3, 7, 9])
    partners = torch.tensor([1, 0, 5, 6, 10])
    temperature = 0.5
    loss, accuracy = masked_info_nce(codes, anchors, partners, sequences, temperature)
    unit = codes / codes.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    terms, hits = [], []
    for a, p in zip(anchors.tolist(), partners.tolist(), strict=True):
        if codes[a].norm() == 0:
            continue
        allowed = [k for k in range(12) if sequences[k] != sequences[a] or k == p]
        logits = torch.stack([unit[a] @ unit[k] / temperature for k in allowed])
        terms.append(torch.logsumexp(logits, 0) - unit[a] @ unit[p] / temperature)
        hits.append(allowed[int(logits.argmax())] == p)
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert math.isclose(float(accuracy), sum(hits) / len(hits))


def test_hard_negatives_keep_only_the_most_similar_strangers() -> None:
    generator = torch.Generator().manual_seed(3)
    codes = torch.relu(torch.randn(12, 20, generator=generator))
    sequences = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    anchors, partners = torch.tensor([0, 1, 3, 9]), torch.tensor([1, 0, 5, 10])
    temperature, k = 0.5, 3
    loss, accuracy = masked_info_nce(
        codes, anchors, partners, sequences, temperature, hard_negatives=k
    )
    unit = codes / codes.norm(dim=-1, keepdim=True)
    terms, hits = [], []
    for a, p in zip(anchors.tolist(), partners.tolist(), strict=True):
        strangers = sorted(
            (
                float(unit[a] @ unit[j]) / temperature
                for j in range(12)
                if sequences[j] != sequences[a]
            ),
            reverse=True,
        )[:k]
        positive = unit[a] @ unit[p] / temperature
        terms.append(
            torch.logsumexp(torch.cat([positive.view(1), torch.tensor(strangers)]), 0) - positive
        )
        hits.append(float(positive) > strangers[0])
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert math.isclose(float(accuracy), sum(hits) / len(hits))
    # With k at least the number of strangers it is the full InfoNCE.
    full, _ = masked_info_nce(codes, anchors, partners, sequences, temperature)
    torch.testing.assert_close(
        masked_info_nce(codes, anchors, partners, sequences, temperature, 50)[0], full
    )


def test_soft_support_counts_active_features_about_equally() -> None:
    codes = torch.tensor([[0.0, 0.5, 1.0, 8.0], [0.0, 0.0, 2.0, 0.1]])
    kappa = torch.tensor([1.0, 0.5, 1.5, 4.05])  # feature 0 never fires: its kappa is irrelevant
    torch.testing.assert_close(soft_support(codes), 1 - torch.exp(-codes / kappa))
    assert (soft_support(codes)[codes == 0] == 0).all()
    # One dominant feature decides the cosine of codes, not the cosine of supports: these two rows
    # share one of their three features, by far the largest of each.
    a, b = torch.tensor([[9.0, 0.2, 0.2, 0.0, 0.0]]), torch.tensor([[9.0, 0.0, 0.0, 0.2, 0.2]])
    code_cosine = torch.cosine_similarity(a, b)
    support_cosine = torch.cosine_similarity(
        soft_support(torch.cat([a, b]))[:1], soft_support(torch.cat([a, b]))[1:]
    )
    assert code_cosine > 0.99
    assert support_cosine < 0.34


@pytest.mark.parametrize(
    ("similarity", "hard_negatives"), [("codes", None), ("support", None), ("codes", 8)]
)
def test_contrastive_term_follows_its_coefficient_and_pulls_positives_together(
    similarity: str, hard_negatives: int | None
) -> None:
    x, context = _batch(shared=0.4)
    sae = _sae(
        contrastive_pairs=64, contrastive_similarity=similarity, hard_negatives=hard_negatives
    )
    out = _step(sae, x, context, contrastive=0.0)
    assert "contrastive_loss" not in out.losses
    torch.manual_seed(5)
    out = _step(sae, x, context, contrastive=0.1)
    assert out.losses["contrastive_loss"] > 0
    # Training on the contrastive term alone raises positive retrieval.
    before = out.metrics["seq_contrastive/positive_retrieval"]
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(60):
        out = _step(sae, x, context, contrastive=1.0, l1=0.0)
        out.losses["contrastive_loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.manual_seed(5)  # the same sampled pairs as before training
    after = _step(sae, x, context, contrastive=1.0).metrics["seq_contrastive/positive_retrieval"]
    assert after > before + 0.2, (before, after)


def test_decoder_rows_stay_unit_through_tangent_gradients_and_renormalization() -> None:
    x, context = _batch()
    sae = _sae()
    out = _step(sae, x, context)
    out.loss.backward()
    radial = (sae.W_dec.grad * sae.W_dec).sum(dim=-1)
    size = sae.W_dec.grad.norm(dim=-1) * sae.W_dec.norm(dim=-1)
    # float32 rounding of the projection leaves ~1e-7 of a gradient along its row, not more
    assert (radial.abs() / size).max() < 1e-5, "the decoder gradient has a radial component"
    with torch.no_grad():
        sae.W_dec.mul_(1.3)
    _step(sae, x, context)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))


def test_training_step_needs_its_token_context_and_two_dimensional_rows() -> None:
    x, context = _batch()
    sae = _sae()
    with pytest.raises(ValueError, match="describes 128 rows but the training batch has 64"):
        _step(sae, x[:64], context)
    _step(sae, x, context)
    with pytest.raises(MissingTokenContextError, match=r"sae.attach_token_context\(TokenContext"):
        _step(sae, x, None)  # a context is consumed by its step, never reused
    with pytest.raises(
        ValueError, match=r"trains on \[batch, d_in=32\] activations, got \(2, 4, 32\)"
    ):
        _step(sae, torch.randn(2, 4, D_IN), context)


@pytest.mark.parametrize("options", [{}, {"restore_scale": False}, {"layer_norm": False}])
def test_folds_keep_the_function(
    options: dict[str, Any], check_folds_keep_the_function: Any
) -> None:
    sae = _sae(**options)
    sae.eval()
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D_IN))
        sae.b_enc.copy_(torch.randn(D_SAE) * 0.1)
    check_folds_keep_the_function(sae, _batch(seed=3)[0])


def test_binding_the_run_ties_the_contrastive_ramp_to_the_lr_warm_up() -> None:
    runner_cfg, preset = build_runner_config(
        TrainRequest(architecture="seq_contrastive", d_sae=512)
    )
    assert runner_cfg.sae.contrastive_warm_up_steps is None  # not bound yet
    assert bind_run(runner_cfg).sae.contrastive_warm_up_steps == preset.lr_warm_up_steps
    explicit, _ = build_runner_config(
        TrainRequest(
            architecture="seq_contrastive", d_sae=512, sae_options={"contrastive_warm_up_steps": 7}
        )
    )
    assert bind_run(explicit).sae.contrastive_warm_up_steps == 7
    # Unbound, the SAE falls back to the paper's ramp and says so.
    sae = SeqContrastiveTrainingSAE(runner_cfg.sae)
    sae.expect_token_contexts()
    with pytest.warns(UserWarning, match="contrastive_warm_up_steps is None"):
        assert sae.get_coefficients()["contrastive"].warm_up_steps == 1000


def test_a_trainer_that_will_not_deliver_contexts_is_refused_at_its_construction() -> None:
    """SAETrainer reads the coefficients in its constructor: an SAE nothing will feed refuses
    there, before any batch is read."""
    sae = _sae()
    with pytest.raises(MissingTokenContextError, match=r"sae.expect_token_contexts\(\) once"):
        sae.get_coefficients()
    sae.attach_token_context(_batch()[1])  # a pending context is a promise kept
    assert "contrastive" in sae.get_coefficients()
    fresh = _sae()
    fresh.expect_token_contexts()
    assert "contrastive" in fresh.get_coefficients()


def test_init_is_tied_with_unit_decoder_rows() -> None:
    sae = _sae()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)

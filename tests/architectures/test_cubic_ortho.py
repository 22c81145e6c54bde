"""CubicOrthoSAE (seed 002): the penalty's maths, its scalable form, config checks, export."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from sae_variants.architectures.base import RunInfo
from sae_variants.architectures.cubic_ortho import (
    CubicOrthoTrainingSAE,
    CubicOrthoTrainingSAEConfig,
    cubic_ortho_penalty,
    pair_terms,
)
from sae_variants.architectures.cubic_ortho_penalty import (
    cubic_ortho_penalty_blocks,
    cubic_ortho_penalty_dense,
)


def _sparse_acts(batch: int, d_sae: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, d_sae, generator=g) * (torch.rand(batch, d_sae, generator=g) < density)


def test_penalty_by_hand_for_two_features() -> None:
    # Features 0 and 1 fire on rows {0, 1} and {1}: c_01 = (1*0 + 1*1) / (sqrt(2) * 1) = 1/sqrt(2).
    acts = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # Decoder rows at 60 degrees: |<w_0, w_1>| = 0.5.
    W_dec = torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2]])
    expected = 2 * (2**-0.5) ** 3 * 0.5  # both orders (0,1) and (1,0)
    # One block holds both features, so the block form is exact too.
    for penalty in (cubic_ortho_penalty_dense, cubic_ortho_penalty_blocks):
        torch.testing.assert_close(
            penalty(acts, W_dec), torch.tensor(expected), atol=1e-5, rtol=1e-5
        )


def test_penalty_vanishes_for_orthonormal_rows_and_for_features_that_never_cofire() -> None:
    acts = _sparse_acts(32, 4, 0.5)
    assert cubic_ortho_penalty_dense(acts, torch.eye(4)).item() == pytest.approx(0.0, abs=1e-6)
    disjoint = torch.zeros(4, 4)
    disjoint[torch.arange(4), torch.arange(4)] = 1.0  # each row fires exactly one feature
    W = torch.randn(4, 3)
    assert cubic_ortho_penalty_dense(disjoint, W).item() == pytest.approx(0.0, abs=1e-6)
    assert cubic_ortho_penalty_blocks(disjoint, W).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("act_mode", ["none", "eps_hinge", "sigmoid", "log1p_norm", "ratio_rank"])
def test_block_form_equals_dense_form_in_value_and_gradient(act_mode: str) -> None:
    d_sae = 48  # one block of 64 holds every feature, so the block form is exact here
    # Gradients are compared at the pre-activations: codes come out of a ReLU, so a form may skip
    # the gradient at zero codes (the block form does), which the ReLU would zero anyway.
    hidden_pre = (
        torch.randn(64, d_sae, generator=torch.Generator().manual_seed(0)) - 1.3
    ).requires_grad_()
    W_dec = torch.randn(d_sae, 8, requires_grad=True)
    mean_acts = torch.rand(d_sae)
    results = []
    for mode in ("dense", "blocks"):
        cfg = CubicOrthoTrainingSAEConfig(
            d_in=8, d_sae=d_sae, act_mode=act_mode, penalty_mode=mode, block_size=64
        )
        omega = cubic_ortho_penalty(torch.relu(hidden_pre), W_dec, mean_acts, cfg)
        results.append((omega, *torch.autograd.grad(omega, [hidden_pre, W_dec])))
    for dense, blocks in zip(*results, strict=True):
        torch.testing.assert_close(blocks, dense, atol=1e-5, rtol=1e-4)
    assert results[0][0] > 0


def test_block_form_is_unbiased_with_many_blocks() -> None:
    acts = _sparse_acts(64, 48, 0.1)
    W_dec = torch.randn(48, 8)
    exact = cubic_ortho_penalty_dense(acts, W_dec).item()
    generator = torch.Generator().manual_seed(0)
    estimates = torch.tensor(
        [
            cubic_ortho_penalty_blocks(acts, W_dec, block_size=8, generator=generator).item()
            for _ in range(2000)
        ]
    )
    standard_error = estimates.std().item() / len(estimates) ** 0.5
    assert abs(estimates.mean().item() - exact) < 4 * standard_error
    assert estimates.std() > 0  # really an estimate: blocks differ between draws


def test_auto_mode_switches_to_the_scalable_form_by_width(monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_variants.architectures.cubic_ortho as module

    calls: list[str] = []

    def recorder(name: str):
        def record(*_args, **_kwargs) -> torch.Tensor:
            calls.append(name)
            return torch.tensor(0.0)

        return record

    monkeypatch.setattr(module, "cubic_ortho_penalty_dense", recorder("dense"))
    monkeypatch.setattr(module, "cubic_ortho_penalty_blocks", recorder("blocks"))
    for d_sae in (16, 32):
        cfg = CubicOrthoTrainingSAEConfig(d_in=4, d_sae=d_sae, dense_max_d_sae=16)
        cubic_ortho_penalty(torch.zeros(2, d_sae), torch.ones(d_sae, 4), torch.zeros(d_sae), cfg)
    assert calls == ["dense", "blocks"]


def test_block_form_never_allocates_a_dense_square() -> None:
    d_sae = 4096
    # batch * d_sae tensors (the codes and their gradient) are unavoidable; d_sae^2 is 64x larger.
    acts = _sparse_acts(64, d_sae, 8 / d_sae).requires_grad_()
    W_dec = torch.randn(d_sae, 16, requires_grad=True)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        cubic_ortho_penalty_blocks(acts, W_dec).backward()
    largest = max(event.cpu_memory_usage for event in prof.events())
    square_bytes = d_sae * d_sae * 4
    assert largest < square_bytes / 16, (
        f"an op allocated {largest} bytes (a d_sae^2 matrix is {square_bytes})"
    )
    assert acts.grad is not None
    assert W_dec.grad is not None
    # The dense reference does allocate the square, so the measurement can see one.
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        cubic_ortho_penalty_dense(acts, W_dec)
    assert max(event.cpu_memory_usage for event in prof.events()) >= square_bytes


def test_half_batch_ratio_ranks_by_hand() -> None:
    from sae_variants.architectures.cubic_ortho import half_batch_ratio_ranks

    # Feature ratios (first half / second half): 4, 1, 0.25 -> ranks 3, 2, 1 of 3.
    acts = torch.tensor([[4.0, 1.0, 1.0], [1.0, 1.0, 4.0]])
    torch.testing.assert_close(
        half_batch_ratio_ranks(acts, eps=0.0), torch.tensor([1.0, 2 / 3, 1 / 3])
    )


def test_eps_hinge_tolerance_shrinks_for_coactive_pairs() -> None:
    terms = pair_terms(
        torch.tensor([0.0, 1.0, 3.0]), torch.zeros(2, 3), "eps_hinge", eps0=0.1, beta=1.0
    )
    _, margin = terms(torch.tensor([0, 1]), torch.tensor([1, 2]))
    torch.testing.assert_close(margin, torch.tensor([0.1, 0.1 / 4]))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("l1_coefficient", -1.0, "l1_coefficient must be >= 0"),
        ("ortho_coefficient", -0.5, "ortho_coefficient must be >= 0"),
        ("ortho_warm_up_steps", -3, "ortho_warm_up_steps must be >= 0"),
        ("exponent", 0.5, "exponent must be >= 1"),
        ("activation_ema_decay", 1.0, r"activation_ema_decay must be in \[0, 1\)"),
        ("act_mode", "ratio", "act_mode must be one of"),
        ("penalty_mode", "fast", "penalty_mode must be"),
        ("block_size", 1, "block_size must be >= 2"),
    ],
)
def test_bad_hyperparameters_are_refused(field: str, value: object, message: str) -> None:
    cfg = CubicOrthoTrainingSAEConfig(d_in=4, d_sae=8)
    # Set after construction: under pytest, jaxtyping/beartype would already reject a wrong
    # Literal at __init__; this checks the ValueError users get without runtime type checks.
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        cfg.__post_init__()


def _step_input(sae: CubicOrthoTrainingSAE, x: torch.Tensor, step: int = 0) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x,
        coefficients={"l1": 0.01, "ortho": 1.0},
        dead_neuron_mask=None,
        n_training_steps=step,
        is_logging_step=False,
    )


def test_decoder_rows_stay_unit_norm_through_training() -> None:
    sae = CubicOrthoTrainingSAE(CubicOrthoTrainingSAEConfig(d_in=8, d_sae=32))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    for step in range(5):
        out = sae.training_forward_pass(_step_input(sae, x, step))
        assert set(out.losses) == {"mse_loss", "l1_loss", "ortho_loss"}
        out.loss.backward()
        # The projected gradient has no component along its row.
        radial = (sae.W_dec.grad * sae.W_dec.detach()).sum(-1)
        torch.testing.assert_close(radial, torch.zeros(32), atol=1e-6, rtol=0)
        optimizer.step()
        optimizer.zero_grad()
        norms = sae.W_dec.detach().norm(dim=-1)
        # One Adam step moves rows off the sphere only to second order; the next forward restores it.
        assert (norms - 1).abs().max() < 0.05
    sae.training_forward_pass(_step_input(sae, x))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))


def test_ema_buffer_updates_only_in_training() -> None:
    sae = CubicOrthoTrainingSAE(
        CubicOrthoTrainingSAEConfig(d_in=8, d_sae=16, activation_ema_decay=0.5, act_mode="sigmoid")
    )
    x = torch.randn(32, 8)
    sae.eval()
    sae.training_forward_pass(_step_input(sae, x))
    assert sae.feature_mean_activation.abs().sum() == 0
    sae.train()
    out = sae.training_forward_pass(_step_input(sae, x))
    torch.testing.assert_close(sae.feature_mean_activation, 0.5 * out.feature_acts.detach().mean(0))


def test_saved_as_standard_and_loadable_without_sae_variants(tmp_path: Path) -> None:
    sae = CubicOrthoTrainingSAE(CubicOrthoTrainingSAEConfig(d_in=8, d_sae=16))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 16)[:, None])  # rows off the unit sphere
        sae.b_enc.normal_()
    sae.eval()
    x = torch.randn(5, 8)
    expected = sae.decode(sae.encode(x))
    sae.save_inference_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard"
    assert cfg["metadata"]["training_architecture"] == "cubic_ortho"
    assert cfg["metadata"]["training_architecture_details"]["exponent"] == 3.0
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        "from sae_lens import SAE\n"
        f"sae = SAE.load_from_disk({str(tmp_path)!r}).eval()\n"
        "assert type(sae).__name__ == 'StandardSAE', type(sae)\n"
        "assert 'sae_variants' not in sys.modules\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(sae.decode(sae.encode(x)), {str(tmp_path / 'out.pt')!r})\n"
        "print(float(sae.W_dec.norm(dim=-1).sub(1).abs().max()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-5, rtol=1e-5)


def test_both_block_routes_give_the_same_column_products() -> None:
    from sae_variants.architectures.cubic_ortho_penalty import (
        _block_products_dense,
        _block_products_from_pairs,
    )

    acts = _sparse_acts(32, 24, 0.3)
    rows, feats = acts.nonzero(as_tuple=True)
    slot_of = torch.randperm(24)  # 3 blocks of 8, every feature active
    blocks = torch.empty(24, dtype=torch.long)
    blocks[slot_of] = torch.arange(24)
    sparse_route = _block_products_from_pairs(acts, rows, feats, slot_of, n_blocks=3, size=8)
    dense_route = _block_products_dense(acts, blocks.view(3, 8))
    torch.testing.assert_close(sparse_route, dense_route, atol=1e-6, rtol=1e-5)


def test_dense_codes_take_the_bounded_route_without_blowing_up() -> None:
    # Half the dictionary firing on every row (as at initialization): the pair route would need
    # batch * L0^2 / n_blocks pairs; the gathered route keeps the cost at batch * d_sae * block.
    acts = torch.rand(512, 1024)
    W_dec = torch.randn(1024, 16)
    omega = cubic_ortho_penalty_blocks(acts, W_dec, block_size=64)
    assert torch.isfinite(omega)
    assert omega > 0


def test_an_unbound_warm_up_follows_the_paper_and_says_so_while_a_bound_one_is_silent() -> None:
    """Under SAELens's plain runner nothing binds the run: the orthogonality ramp then falls
    back to the paper's 1000 steps, with a warning naming the field, never silently."""
    unbound = CubicOrthoTrainingSAEConfig(d_in=8, d_sae=32)
    assert unbound.ortho_warm_up_steps is None
    with pytest.warns(UserWarning, match="ortho_warm_up_steps is None"):
        assert unbound.ortho_warm_up() == 1000
    bound = unbound.bind_run(RunInfo(total_steps=97, lr_warm_up_steps=5, context_size=128))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bound.ortho_warm_up() == 5


@pytest.mark.parametrize("act_mode", ["none", "eps_hinge", "sigmoid"])
def test_both_overlap_routes_give_the_same_penalty_and_gradients(act_mode: str) -> None:
    """Overlaps sampled at the co-firing pairs (sparse codes) against whole-block products."""
    from sae_variants.architectures.cubic_ortho_penalty import (
        _block_products_dense,
        _block_terms,
        _coactive_cell_terms,
        normalize_columns,
    )

    acts = _sparse_acts(16, 24, 0.15)
    blocks = torch.randperm(24, generator=torch.Generator().manual_seed(3)).view(3, 8)
    coactivation = _block_products_dense(normalize_columns(acts), blocks)
    cells = coactivation != 0
    cells.diagonal(dim1=1, dim2=2).fill_(False)
    assert 0 < int(cells.sum()) < cells.numel() - 24  # some pairs co-fire, not all
    W_base = torch.randn(24, 6, generator=torch.Generator().manual_seed(4))
    mean_acts = acts.mean(0)
    results = []
    for route in (_block_terms, _coactive_cell_terms):
        W_dec = W_base.clone().requires_grad_()
        terms = pair_terms(mean_acts, acts, act_mode, eps0=0.1, beta=1.0)
        if route is _block_terms:
            value = route(coactivation, blocks, W_dec, 3.0, terms)
        else:
            value = route(coactivation, cells, blocks, W_dec, 3.0, terms)
        value.backward()
        results.append((value.detach(), W_dec.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-5)

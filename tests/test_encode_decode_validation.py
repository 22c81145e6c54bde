"""The Python API of every variant validates what it is given: encode and decode refuse
non-floating dtypes, NaN/inf, 0-D input and wrong trailing sizes with an error naming what was
expected and what arrived; empty batches give empty results; the normalizations stay finite at
any finite scale; positions are non-negative integers; an inference SAE does not depend on
``.eval()``. A property-based test throws random shapes, dtypes, magnitudes and widths at all of
it and accepts only a correct result or a clear error.

Every variant is checked as a user meets it: the inference SAE ``SAE.load_from_disk`` returns
(left in training mode, as ``nn.Module`` leaves it) and the training SAE in eval mode. CubicOrtho
saves as SAELens's ``standard``, whose class is SAELens's own, so only its training SAE is ours.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sae_lens import SAE

import sae_variants
from sae_variants.architectures.base import RunInfo, VariantModule
from sae_variants.functional import TokenMoments, token_moments, token_scale

D_IN, D_SAE, CONTEXT = 16, 64, 32
VARIANTS = {v.name: v for v in sae_variants.registered_variants()}


def _training_sae(name: str) -> Any:
    variant = VARIANTS[name]
    cfg = variant.training_cfg(d_in=D_IN, d_sae=D_SAE)
    cfg = cfg.bind_run(RunInfo(total_steps=100, lr_warm_up_steps=0, context_size=CONTEXT))
    sae = variant.training_sae(cfg)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        # Off the initialization's symmetries (zero biases), and the adapters switched on.
        for parameter in sae.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        if hasattr(sae, "alpha"):
            sae.alpha.fill_(0.5)
    return sae


@pytest.fixture(scope="module")
def api_saes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``"<name>/inference"`` (loaded from disk, training mode) and ``"<name>/training"`` (eval)."""
    saes: dict[str, Any] = {}
    for name, variant in VARIANTS.items():
        training = _training_sae(name)
        if variant.sae is not None:
            path = tmp_path_factory.mktemp(name)
            training.save_inference_model(path)
            saes[f"{name}/inference"] = SAE.load_from_disk(str(path))
        saes[f"{name}/training"] = training.eval()
    return saes


API_KEYS = [
    f"{name}/{kind}"
    for name, variant in VARIANTS.items()
    for kind in (("inference", "training") if variant.sae is not None else ("training",))
]


def _positions_for(sae: Any, leading: tuple[int, ...]) -> dict[str, torch.Tensor]:
    if "positions" not in inspect.signature(sae.encode).parameters or len(leading) != 1:
        return {}
    return {"positions": torch.arange(leading[0]) % CONTEXT}


def _encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    leading = tuple(x.shape[:-1]) if x.ndim >= 1 else ()
    return sae.encode(x, **_positions_for(sae, leading))


@pytest.mark.parametrize("key", API_KEYS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.ones(4, D_IN, dtype=torch.long), r"floating-point .*got dtype torch.int64"),
        (torch.ones(4, D_IN, dtype=torch.bool), r"floating-point .*got dtype torch.bool"),
        (torch.tensor(1.0), r"shape \[\.\.\., 16\], got a 0-D tensor"),
        (torch.randn(4, D_IN + 1), r"shape \[\.\.\., 16\], got \(4, 17\)"),
        (torch.randn(2, 3, 7), r"shape \[\.\.\., 16\], got \(2, 3, 7\)"),
    ],
)
def test_encode_refuses_what_is_not_activations(
    api_saes: dict[str, Any], key: str, bad: torch.Tensor, message: str
) -> None:
    sae = api_saes[key]
    with pytest.raises(ValueError, match=rf"{sae.cfg.architecture()} encode: .*{message}"):
        sae.encode(bad)


@pytest.mark.parametrize("key", API_KEYS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_encode_refuses_non_finite_activations_with_a_count(
    api_saes: dict[str, Any], key: str, value: float
) -> None:
    x = torch.randn(2, 5, D_IN)
    x[1, 3, 7] = value
    with pytest.raises(ValueError, match="activations contain 1 NaN/inf values out of 160"):
        api_saes[key].encode(x)


@pytest.mark.parametrize("key", API_KEYS)
def test_empty_batches_give_empty_results(api_saes: dict[str, Any], key: str) -> None:
    sae = api_saes[key]
    assert _encode(sae, torch.zeros(0, D_IN)).shape == (0, D_SAE)
    assert sae.encode(torch.zeros(0, 4, D_IN)).shape == (0, 4, D_SAE)
    assert sae.decode(torch.zeros(0, D_SAE)).shape == (0, D_IN)
    assert sae.decode(torch.zeros(3, 0, D_SAE)).shape == (3, 0, D_IN)


@pytest.mark.parametrize("key", API_KEYS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.ones(4, D_SAE, dtype=torch.long), r"floating-point feature activations"),
        (torch.tensor(0.5), r"shape \[\.\.\., 64\], got a 0-D tensor"),
        (torch.rand(4, D_SAE - 1), r"shape \[\.\.\., 64\], got \(4, 63\)"),
    ],
)
def test_decode_refuses_what_is_not_codes(
    api_saes: dict[str, Any], key: str, bad: torch.Tensor, message: str
) -> None:
    sae = api_saes[key]
    with pytest.raises(ValueError, match=rf"{sae.cfg.architecture()} decode: .*{message}"):
        sae.decode(bad)


@pytest.mark.parametrize("key", API_KEYS)
def test_decode_names_the_cause_of_a_non_finite_reconstruction(
    api_saes: dict[str, Any], key: str
) -> None:
    sae = api_saes[key]
    codes = torch.rand(3, D_SAE)
    codes[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"feature activations contain 1 NaN/inf"):
        sae.decode(codes)
    with pytest.raises(ValueError, match=r"overflows torch\.float32"):
        sae.decode(torch.full((1, D_SAE), 3e38))
    saved = sae.W_dec.detach().clone()
    try:
        with torch.no_grad():
            sae.W_dec[0, 0] = float("nan")
        with pytest.raises(ValueError, match=r"weights hold 1 NaN/inf values \(a diverged"):
            sae.decode(torch.ones(1, D_SAE))
    finally:
        with torch.no_grad():
            sae.W_dec.copy_(saved)


@pytest.mark.parametrize("key", API_KEYS)
@pytest.mark.parametrize("scale", [1e-30, 1e20, 1e30])
def test_encode_and_decode_stay_finite_at_any_finite_scale(
    api_saes: dict[str, Any], key: str, scale: float
) -> None:
    sae = api_saes[key]
    x = torch.randn(2, 6, D_IN) * scale
    codes = sae.encode(x)
    assert torch.isfinite(codes).all()
    assert torch.isfinite(sae.decode(codes)).all()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("multiscale_norm", {"attention": False, "adaptive_gate": False, "z_gating": False}),
        ("seq_contrastive", {}),
        ("position_aware", {"adapters": False, "base_norm": "input_ln"}),
        ("position_aware", {"adapters": False, "base_norm": "preact_ln"}),
    ],
)
def test_scale_restoring_encoders_are_equivariant_to_scale_far_past_the_square_overflow(
    name: str, options: dict[str, Any]
) -> None:
    """A normalizing encoder that restores the token scale, with zero biases, maps ``c x`` to
    ``c`` times the codes of ``x`` once eps is negligible; the overflow-free moments keep that
    far past the scale where ``x**2`` overflows (|x| ~ 1.8e19)."""
    variant = VARIANTS[name]
    cfg = variant.training_cfg(d_in=D_IN, d_sae=D_SAE, restore_scale=True, **options)
    cfg = cfg.bind_run(RunInfo(total_steps=100, lr_warm_up_steps=0, context_size=CONTEXT))
    sae = variant.training_sae(cfg).eval()
    with torch.no_grad():
        for parameter_name, parameter in sae.named_parameters():
            if "bias" in parameter_name or parameter_name.startswith("b_"):
                parameter.zero_()
    x = torch.randn(3, 4, D_IN)
    reference = sae.encode(x * 2.0**20) / 2.0**20  # eps / var ~ 1e-17: negligible
    assert reference.abs().max() > 0
    for k in (40, 80, 110):
        torch.testing.assert_close(sae.encode(x * 2.0**k), reference * 2.0**k, rtol=1e-5, atol=0)


def test_token_moments_equal_the_plain_formula_bit_for_bit_where_it_does_not_overflow() -> None:
    x = torch.randn(64, D_IN) * torch.logspace(-3, 6, 64).unsqueeze(1)
    variance, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    moments = token_moments(x)
    assert torch.equal(moments.mean, mean)
    assert torch.equal(moments.scaled_variance * moments.factor**2, variance)
    assert torch.equal(token_scale(moments, 1e-5), torch.sqrt(variance + 1e-5))


def test_token_scale_matches_float64_at_huge_magnitudes_and_is_positive_for_constant_tokens() -> (
    None
):
    x = torch.randn(8, D_IN, dtype=torch.float64) * 1e30
    expected = torch.sqrt(x.var(dim=-1, keepdim=True, correction=0) + 1e-5)
    moments = token_moments(x.float())
    torch.testing.assert_close(token_scale(moments, 1e-5).double(), expected, rtol=1e-5, atol=0)
    constant = token_moments(torch.full((2, D_IN), 3e37))
    assert isinstance(constant, TokenMoments)
    assert (token_scale(constant, 1e-5) > 0).all()


@pytest.mark.parametrize("kind", ["inference", "training"])
@pytest.mark.parametrize(
    ("positions", "message"),
    [
        (torch.arange(6, dtype=torch.float32), r"integer tensor .*got dtype torch.float32"),
        (torch.ones(6, dtype=torch.bool), r"integer tensor .*got dtype torch.bool"),
        (torch.arange(6) - 1, r"positions must be >= 0 .*got -1"),
        (torch.arange(5), r"leading shape \(6,\), got \(5,\)"),
    ],
)
def test_positions_must_be_non_negative_integers(
    api_saes: dict[str, Any], kind: str, positions: Any, message: str
) -> None:
    sae = api_saes[f"position_aware/{kind}"]
    with pytest.raises((ValueError, TypeError), match=message):
        sae.encode(torch.randn(6, D_IN), positions=positions)


def test_a_position_aware_sae_loaded_from_disk_does_not_depend_on_eval(
    api_saes: dict[str, Any],
) -> None:
    sae = api_saes["position_aware/inference"]
    assert sae.training  # as SAE.load_from_disk leaves it
    x = torch.randn(4, 12, D_IN)
    first, second = sae.encode(x), sae.encode(x)
    assert torch.equal(first, second)
    assert torch.equal(sae.eval().encode(x), first)
    sae.train()


# ------------------------------------------------------------------------------- properties

ERRORS = (ValueError, TypeError)
DTYPES = [torch.float32, torch.float64, torch.int64, torch.int32, torch.bool, torch.float16]


@st.composite
def encode_inputs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor | None]:
    leading = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    width = draw(st.sampled_from([D_IN, D_IN, D_IN, 1, D_IN - 1, D_IN + 3]))
    dtype = draw(st.sampled_from(DTYPES))
    magnitude = draw(st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e3, 1e20, 1e30]))
    seed = draw(st.integers(0, 2**16))
    shape = (*leading, width)
    values = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * magnitude
    x = values.to(dtype) if dtype.is_floating_point else values.clamp(-5, 5).to(dtype)
    if x.numel() and dtype.is_floating_point and draw(st.booleans()) and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(
            st.sampled_from([float("nan"), float("inf")])
        )
    positions = None
    if len(leading) == 1 and draw(st.booleans()):
        positions = torch.randint(-2 if draw(st.booleans()) else 0, CONTEXT, tuple(leading))
    return x, positions


def _refusal_expected(sae: Any, x: torch.Tensor, positions: torch.Tensor | None) -> bool:
    """Whether ``encode`` must refuse: bad activations, negative positions, or (position-aware)
    an input whose positions are unknown (1-D, or a single position without an offset)."""
    takes_positions = "positions" in inspect.signature(sae.encode).parameters
    return (
        not x.dtype.is_floating_point
        or x.ndim == 0
        or x.shape[-1] != D_IN
        or not bool(torch.isfinite(x).all())
        or (positions is not None and positions.numel() > 0 and int(positions.min()) < 0)
        or (takes_positions and (x.ndim == 1 or (x.ndim >= 3 and x.shape[-2] == 1)))
    )


@pytest.mark.parametrize("key", API_KEYS)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=encode_inputs())
def test_encode_decode_give_a_correct_result_or_a_clear_error(
    api_saes: dict[str, Any], key: str, case: tuple[torch.Tensor, torch.Tensor | None]
) -> None:
    sae: Any = api_saes[key]
    x, positions = case
    kwargs: dict[str, Any] = {}
    if "positions" in inspect.signature(sae.encode).parameters and x.ndim == 2:
        kwargs["positions"] = torch.arange(x.shape[0]) % CONTEXT if positions is None else positions
    if _refusal_expected(sae, x, kwargs.get("positions")):
        with pytest.raises(ERRORS) as refused:
            sae.encode(x, **kwargs)
        assert sae.cfg.architecture() in str(refused.value) or "position" in str(refused.value)
        return
    codes = sae.encode(x, **kwargs)
    assert codes.shape == (*x.shape[:-1], D_SAE)
    assert codes.dtype == sae.W_dec.dtype  # SAELens casts the input to the SAE's dtype
    assert torch.isfinite(codes).all()
    assert (codes >= 0).all()
    reconstruction = sae.decode(codes)
    assert reconstruction.shape == x.shape
    assert torch.isfinite(reconstruction).all()
    if x.ndim == 2 and x.shape[0] > 1 and x.dtype == torch.float32:
        # Rows of a batch never mix: the first row alone gives its codes from the batch.
        alone = sae.encode(x[:1], **{k: v[:1] for k, v in kwargs.items()})
        scale = float(codes.detach().abs().max())
        torch.testing.assert_close(alone, codes[:1], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("key", API_KEYS)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    leading=st.lists(st.integers(0, 4), min_size=0, max_size=2),
    width=st.sampled_from([D_SAE, D_SAE, 1, D_SAE + 1]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]),
    magnitude=st.sampled_from([0.0, 1.0, 1e30, 3e38]),
)
def test_decode_gives_a_correct_result_or_a_clear_error(
    api_saes: dict[str, Any],
    key: str,
    leading: list[int],
    width: int,
    dtype: torch.dtype,
    magnitude: float,
) -> None:
    sae = api_saes[key]
    # 3e38 fills every code (each row's product then overflows float32, the SAE's dtype, to
    # which float64 codes are cast); smaller magnitudes scale uniform codes.
    base = torch.ones(*leading, width) if magnitude >= 3e38 else torch.rand(*leading, width)
    codes = (base * magnitude).to(dtype)
    overflows = magnitude >= 3e38 and codes.numel() > 0
    if not dtype.is_floating_point or width != D_SAE or overflows:
        with pytest.raises(ERRORS, match=f"{sae.cfg.architecture()} decode: "):
            sae.decode(codes)
        return
    out = sae.decode(codes)
    assert out.shape == (*leading, D_IN)
    assert torch.isfinite(out).all()


def test_the_checks_exist_on_every_variant_module() -> None:
    """Every variant's classes inherit the checked encode/decode path (a variant that replaced
    it without the checks would fail the tests above; this names which)."""
    for variant in VARIANTS.values():
        for cls in (variant.training_sae, variant.sae):
            if cls is not None:
                assert issubclass(cls, VariantModule), cls


# Values a config field is tried with: sensible, boundary and hostile.
FLOATS = [0.0, 1e-3, 0.5, 1.0, 3.0, -1.0, float("inf"), float("nan")]
INTS = [-1, 0, 1, 2, 3, 64]
CONFIG_ERRORS = (ValueError, TypeError)
SKIPPED_FIELDS = {"d_in", "d_sae", "dtype", "device", "metadata", "apply_b_dec_to_input"}


@st.composite
def variant_configs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A variant and random values for a few of its own config fields (booleans, numbers and
    Literal choices), some of them invalid."""
    import dataclasses
    import typing

    name = draw(st.sampled_from(sorted(VARIANTS)))
    cls = VARIANTS[name].training_cfg
    hints = typing.get_type_hints(cls)
    options: dict[str, Any] = {}
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in SKIPPED_FIELDS]
    for f in draw(st.lists(st.sampled_from(fields), max_size=4, unique_by=lambda f: f.name)):
        hint = hints[f.name]
        args = typing.get_args(hint)
        if hint is bool:
            options[f.name] = draw(st.booleans())
        elif hint is float:
            options[f.name] = draw(st.sampled_from(FLOATS))
        elif hint is int:
            options[f.name] = draw(st.sampled_from(INTS))
        elif typing.get_origin(hint) is typing.Literal:
            options[f.name] = draw(st.sampled_from(args))
    return name, options


@settings(max_examples=150, deadline=None, derandomize=True)
@given(case=variant_configs(), d_in=st.integers(1, 12), d_sae=st.integers(1, 40))
def test_any_config_builds_a_working_sae_or_is_refused_clearly(
    case: tuple[str, dict[str, Any]], d_in: int, d_sae: int
) -> None:
    name, options = case
    variant = VARIANTS[name]
    run = RunInfo(total_steps=100, lr_warm_up_steps=0, context_size=CONTEXT)
    refusal: str | None = None
    try:
        cfg = variant.training_cfg(d_in=d_in, d_sae=d_sae, **options).bind_run(run)
        sae = variant.training_sae(cfg).eval()
    except CONFIG_ERRORS as error:
        refusal = str(error)
    if refusal is not None:
        assert refusal.strip(), "a refusal must say why"
        return
    assert all(
        not isinstance(v, float) or (v == v and abs(v) != float("inf")) for v in options.values()
    ), f"a non-finite setting was accepted: {options}"
    x = torch.randn(2, 3, d_in)
    codes = sae.encode(x)
    assert codes.shape == (2, 3, d_sae)
    assert torch.isfinite(codes).all()
    assert (codes >= 0).all()
    assert sae.decode(codes).shape == x.shape

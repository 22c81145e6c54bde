"""A trained variant as a stock SAELens SAE (``standard`` or ``jumprelu``), measured before it is
handed over.

Tools that know only SAELens's built-in architectures (SAEDashboard, Neuronpedia's pipeline,
anything run without ``import sae_variants``) can read the export. Per variant:

- **CubicOrtho** is saved as ``standard`` already: nothing to export.
- **SeqContrastive with** ``layer_norm=False`` is a ReLU SAE: exported to ``standard`` exactly.
- **QuCL**: the low-rank projection folds into ``W_enc`` and the 4-bit quantizer is dropped
  (``standard``): approximate, because the quantizer is gone.
- **SeqContrastive (layer norm), MultiScaleNorm, PositionAware** encode through a per-token
  normalization (and MultiScaleNorm through slot attention, PositionAware through position-range
  adapters), which no stock architecture computes. They are *distilled*: an affine encoder is
  fitted by least squares to the variant's pre-activation in code units (the values whose firing
  entries are the codes: :meth:`~sae_variants.architectures.base.VariantModule.code_preactivation`)
  and each feature's JumpReLU threshold is set so it fires on the same fraction of tokens as the
  variant's feature; the decoder is kept. SAELens's ``layer_norm`` input normalization is not the
  same function (it normalizes ``x`` rather than ``x - b_dec``, uses the unbiased standard
  deviation with epsilon outside the root, has no learnable gain or bias and adds the token mean
  back after decoding), so it is not used.

Every export is measured on activations the caller supplies: the fit uses the first
``fit_fraction`` of the rows and the figures come from the remaining rows only. An export whose
explained variance moves by more than the tolerance is refused with both figures.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from sae_lens import SAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from torch import Tensor

from sae_variants.architectures.base import VariantModule, loading_requirements
from sae_variants.architectures.position_aware import PositionAwareEncoder
from sae_variants.architectures.qucl import QuCLEncoder
from sae_variants.architectures.seq_contrastive import SeqContrastiveEncoder
from sae_variants.functional import fraction_of_variance_unexplained
from sae_variants.validation import check_activations

ExportTarget = Literal["auto", "standard", "jumprelu"]
EXPORT_METADATA_KEY = "sae_variants_export"
"""``cfg.json`` metadata key recording what an exported SAE was exported from, and how well."""


class NothingToExportError(ValueError):
    """The SAE already is a stock SAELens architecture."""


@dataclass
class ExportReport:
    """An exported SAE and what the export did, measured on held-out rows."""

    sae: SAE[Any]
    source_architecture: str
    method: str
    """``"exact"``, ``"fold"`` (QuCL) or ``"distilled"``."""
    explained_variance_source: float
    explained_variance_export: float
    l0_source: float
    l0_export: float
    active_set_jaccard: float
    """Mean over tokens of |A and B| / |A or B| for the features firing in the source (A) and the
    export (B); 1 where both are empty."""
    evaluated_rows: int
    change: float = field(init=False)
    """``explained_variance_export - explained_variance_source``."""

    def __post_init__(self) -> None:
        self.change = self.explained_variance_export - self.explained_variance_source

    @property
    def exact(self) -> bool:
        return self.method == "exact"

    def as_metadata(self) -> dict[str, Any]:
        """What the exported ``cfg.json`` records under :data:`EXPORT_METADATA_KEY`."""
        return {
            "from_architecture": self.source_architecture,
            "method": self.method,
            "explained_variance_source": self.explained_variance_source,
            "explained_variance_export": self.explained_variance_export,
            "l0_source": self.l0_source,
            "l0_export": self.l0_export,
            "active_set_jaccard": self.active_set_jaccard,
            "evaluated_rows": self.evaluated_rows,
        }


# ----------------------------------------------------------------------------------- maths


def least_squares_affine(
    inputs: Float[Tensor, "rows d_in"],
    targets: Float[Tensor, "rows d_sae"],
    ridge: float = 1e-10,
    chunk_rows: int = 8192,
) -> tuple[Float[Tensor, "d_in d_sae"], Float[Tensor, " d_sae"]]:
    """``(W, b)`` minimizing ``||inputs W + b - targets||^2`` (one solve for every column), in
    float64 from row chunks (memory ``d_in^2 + d_in d_sae``, not ``rows d_in``). Inputs and
    targets are centred first (the intercept then separates, and the Gram matrix of a residual
    stream, whose mean dominates it, stays well conditioned); ``ridge``, relative to the Gram
    matrix's mean diagonal, keeps a rank-deficient input solvable."""
    input_mean = inputs.double().mean(dim=0)
    target_mean = targets.double().mean(dim=0)
    d_in = inputs.shape[1]
    gram = torch.zeros(d_in, d_in, dtype=torch.float64, device=inputs.device)
    moment = torch.zeros(d_in, targets.shape[1], dtype=torch.float64, device=inputs.device)
    for rows, values in zip(inputs.split(chunk_rows), targets.split(chunk_rows), strict=True):
        centred = rows.double() - input_mean
        gram += centred.T @ centred
        moment += centred.T @ (values.double() - target_mean)
    gram += torch.eye(d_in, dtype=gram.dtype, device=gram.device) * (
        ridge * float(gram.diagonal().mean())
    )
    W = torch.linalg.solve(gram, moment)
    b = target_mean - input_mean @ W
    return W.to(inputs.dtype), b.to(inputs.dtype)


def rate_matched_thresholds(
    preactivation: Float[Tensor, "rows d_sae"], firing_rate: Float[Tensor, " d_sae"]
) -> Float[Tensor, " d_sae"]:
    """Per feature, the threshold above which ``preactivation`` exceeds it on ``firing_rate`` of
    the rows (the k-th largest value's successor, k = round(rate * rows)); never below 0, so
    ``pre * 1[pre > threshold]`` is also a ReLU. A feature that never fires gets its maximum
    (strict ``>`` keeps it silent on these rows)."""
    rows = preactivation.shape[0]
    k = (firing_rate * rows).round().long().clamp(0, rows)
    ordered = preactivation.sort(dim=0, descending=True).values  # [rows, d_sae]
    # The (k+1)-th largest value: exactly k values lie strictly above it (ties aside).
    index = k.clamp(max=rows - 1).unsqueeze(0)
    below = ordered.gather(0, index).squeeze(0)
    threshold = torch.where(k >= rows, ordered[-1] - 1.0, below)
    return threshold.clamp_min(0.0)


def active_set_jaccard(
    source_active: torch.Tensor, export_active: torch.Tensor
) -> Float[Tensor, ""]:
    """Mean over rows of the Jaccard index of two boolean ``[rows, d_sae]`` firing patterns."""
    both = (source_active & export_active).sum(dim=-1).float()
    either = (source_active | export_active).sum(dim=-1).float()
    return torch.where(either > 0, both / either.clamp_min(1), torch.ones_like(either)).mean()


# ------------------------------------------------------------------------------- exports


def _encode(sae: SAE[Any], x: Tensor, positions: Tensor | None) -> Tensor:
    if isinstance(sae, PositionAwareEncoder):
        return sae.encode(x, positions=positions)
    return sae.encode(x)


def _stock_config(config_class: type, sae: SAE[Any], apply_b_dec_to_input: bool) -> Any:
    cfg = sae.cfg
    stock = config_class(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        dtype=cfg.dtype,
        device=cfg.device,
        apply_b_dec_to_input=apply_b_dec_to_input,
        normalize_activations="none",
        reshape_activations=cfg.reshape_activations,
        metadata=copy.deepcopy(cfg.metadata),
    )
    for key, value in loading_requirements(config_class.architecture()).items():
        stock.metadata[key] = value  # SAELens alone loads the export
    return stock


def _stock_sae(
    target: Literal["standard", "jumprelu"],
    sae: SAE[Any],
    W_enc: Tensor,
    b_enc: Tensor,
    threshold: Tensor | None,
    apply_b_dec_to_input: bool,
) -> SAE[Any]:
    """A stock SAE with ``W_enc, b_enc`` (reading ``x - b_dec`` when ``apply_b_dec_to_input``)
    and ``sae``'s decoder."""
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if target == "jumprelu":
        stock: SAE[Any] = JumpReLUSAE(_stock_config(JumpReLUSAEConfig, sae, apply_b_dec_to_input))
        weights["threshold"] = threshold if threshold is not None else torch.zeros_like(b_enc)
    else:
        stock = StandardSAE(_stock_config(StandardSAEConfig, sae, apply_b_dec_to_input))
        if threshold is not None:
            # ReLU(pre - t) fires exactly where pre > t, t lower than JumpReLU's pre.
            weights["b_enc"] = b_enc - threshold
    stock.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
    return stock.eval()


def _check_exportable(sae: SAE[Any]) -> None:
    architecture = sae.cfg.architecture()
    if isinstance(sae, (StandardSAE, JumpReLUSAE)):
        raise NothingToExportError(
            f"the SAE is already SAELens {architecture!r} (CubicOrtho saves as 'standard'); "
            "every SAELens tool loads it as it is"
        )
    if not isinstance(sae, VariantModule | QuCLEncoder):
        raise ValueError(
            f"export_to_saelens takes an sae_variants SAE, got architecture {architecture!r}"
        )
    if sae.cfg.normalize_activations != "none":
        raise ValueError(
            f"the SAE normalizes its input at run time (normalize_activations="
            f"{sae.cfg.normalize_activations!r}); export a saved SAE, whose scaling is folded "
            "into its weights"
        )


def _check_inputs(
    sae: SAE[Any], activations: Tensor, positions: Tensor | None, fit_fraction: float
) -> None:
    d_in = sae.cfg.d_in
    check_activations(activations, d_in, where="export_to_saelens activations")
    if activations.ndim != 2 or activations.shape[0] < 8:
        raise ValueError(
            f"export_to_saelens needs activations of shape [rows >= 8, d_in={d_in}], got "
            f"{tuple(activations.shape)}"
        )
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    if isinstance(sae, PositionAwareEncoder) and positions is None:
        raise ValueError(
            "a position_aware SAE's codes depend on each row's position: pass positions, a "
            "[rows] tensor of positions in the context"
        )
    if positions is not None and positions.shape != activations.shape[:1]:
        raise ValueError(
            f"positions must have shape [{activations.shape[0]}] (one per row), got "
            f"{tuple(positions.shape)}"
        )


@torch.no_grad()
def export_to_saelens(
    sae: SAE[Any],
    activations: Tensor,
    positions: Tensor | None = None,
    *,
    target: ExportTarget = "auto",
    max_explained_variance_change: float = 0.01,
    fit_fraction: float = 0.75,
) -> ExportReport:
    """``sae`` as a stock SAELens SAE (see the module docstring for each variant's method).

    ``activations``: ``[rows, d_in]`` rows of the SAE's hook (shapes are checked here, with
    errors naming them, rather than by annotation), in the order they came (the first ``fit_fraction``
    fit a distilled encoder, the rest measure the export; give rows of many contexts, special
    tokens left out); ``positions``: ``[rows]``, each row's position in its context (needed for
    PositionAware). ``target``: ``"auto"`` is ``standard`` for exact and folded exports and
    ``jumprelu`` for distilled ones; ``"standard"`` for a distilled export shifts each bias by its
    threshold (ReLU firing where the JumpReLU would, with smaller values).

    Raises ``ValueError`` naming both figures when the explained variance on the measured rows
    moves by more than ``max_explained_variance_change``; :class:`NothingToExportError` for an SAE
    that already is ``standard`` or ``jumprelu``.
    """
    if not max_explained_variance_change >= 0 or math.isinf(max_explained_variance_change):
        raise ValueError(
            f"max_explained_variance_change must be a finite value >= 0, got "
            f"{max_explained_variance_change}"
        )
    if target not in ("auto", "standard", "jumprelu"):
        raise ValueError(f"target must be 'auto', 'standard' or 'jumprelu', got {target!r}")
    _check_exportable(sae)
    _check_inputs(sae, activations, positions, fit_fraction)
    was_training = sae.training
    sae.eval()
    x = activations.to(sae.dtype)
    split = max(1, min(x.shape[0] - 2, int(x.shape[0] * fit_fraction)))
    fit_x, test_x = x[:split], x[split:]
    fit_pos, test_pos = (
        (None, None) if positions is None else (positions[:split], positions[split:])
    )

    threshold = None
    # Exact and folded exports keep how the variant reads its input; a distilled one reads x - b_dec.
    apply_b_dec_to_input = bool(sae.cfg.apply_b_dec_to_input)
    if isinstance(sae, QuCLEncoder):
        method, W_enc, b_enc = "fold", sae.W_enc, sae.b_enc
    elif isinstance(sae, SeqContrastiveEncoder) and not sae.cfg.layer_norm:
        method, W_enc, b_enc = "exact", sae.W_enc, sae.b_enc
    else:
        method, apply_b_dec_to_input = "distilled", True
        targets = sae.code_preactivation(fit_x, positions=fit_pos)
        W_enc, b_enc = least_squares_affine(fit_x - sae.b_dec, targets)
        fitted = (fit_x - sae.b_dec) @ W_enc + b_enc
        firing_rate = (_encode(sae, fit_x, fit_pos) > 0).float().mean(dim=0)
        threshold = rate_matched_thresholds(fitted, firing_rate)
    resolved = target if target != "auto" else ("jumprelu" if method == "distilled" else "standard")
    stock = _stock_sae(resolved, sae, W_enc, b_enc, threshold, apply_b_dec_to_input)

    source_codes = _encode(sae, test_x, test_pos)
    export_codes = stock.encode(test_x)
    report = ExportReport(
        sae=stock,
        source_architecture=sae.cfg.architecture(),
        method=method,
        explained_variance_source=1.0
        - float(fraction_of_variance_unexplained(test_x, sae.decode(source_codes))),
        explained_variance_export=1.0
        - float(fraction_of_variance_unexplained(test_x, stock.decode(export_codes))),
        l0_source=float((source_codes > 0).sum(dim=-1).float().mean()),
        l0_export=float((export_codes > 0).sum(dim=-1).float().mean()),
        active_set_jaccard=float(active_set_jaccard(source_codes > 0, export_codes > 0)),
        evaluated_rows=int(test_x.shape[0]),
    )
    stock.cfg.metadata[EXPORT_METADATA_KEY] = report.as_metadata()
    sae.train(was_training)
    if abs(report.change) > max_explained_variance_change:
        raise ValueError(
            f"exporting the {report.source_architecture!r} SAE to SAELens {resolved!r} "
            f"({method}) changes explained variance by {report.change:+.4f} "
            f"({report.explained_variance_source:.4f} -> {report.explained_variance_export:.4f} "
            f"on {report.evaluated_rows} held-out rows; active-set Jaccard "
            f"{report.active_set_jaccard:.3f}), more than the tolerance "
            f"{max_explained_variance_change}; keep the {report.source_architecture!r} "
            "architecture (load it after `import sae_variants`) or raise the tolerance"
        )
    return report


__all__ = [
    "EXPORT_METADATA_KEY",
    "ExportReport",
    "NothingToExportError",
    "active_set_jaccard",
    "export_to_saelens",
    "least_squares_affine",
    "rate_matched_thresholds",
]

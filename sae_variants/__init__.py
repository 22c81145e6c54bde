"""sae-variants: sparse-autoencoder variants from five papers, as SAELens plugins.

Importing this package registers every variant with SAELens's architecture registry, so
``SAE.load_from_disk`` and ``LanguageModelSAERunnerConfig(sae=...)`` know them. The variants are
registered below, in one block, the way SAELens lists its built-ins.
"""

from sae_variants.architectures.cubic_ortho import (
    CubicOrthoSAE,
    CubicOrthoSAEConfig,
    CubicOrthoTrainingSAE,
    CubicOrthoTrainingSAEConfig,
)
from sae_variants.architectures.multiscale_norm import (
    MultiScaleNormSAE,
    MultiScaleNormSAEConfig,
    MultiScaleNormTrainingSAE,
    MultiScaleNormTrainingSAEConfig,
)
from sae_variants.architectures.position_aware import (
    PositionAwareSAE,
    PositionAwareSAEConfig,
    PositionAwareTrainingSAE,
    PositionAwareTrainingSAEConfig,
)
from sae_variants.architectures.qucl import (
    QuCLSAE,
    QuCLSAEConfig,
    QuCLTrainingSAE,
    QuCLTrainingSAEConfig,
)
from sae_variants.architectures.seq_contrastive import (
    SeqContrastiveSAE,
    SeqContrastiveSAEConfig,
    SeqContrastiveTrainingSAE,
    SeqContrastiveTrainingSAEConfig,
)
from sae_variants.registry import (
    Variant,
    register_variant,
    registered_variants,
    training_architectures,
)
from sae_variants.saelens_export import ExportReport, NothingToExportError, export_to_saelens
from sae_variants.token_context import (
    MissingTokenContextError,
    NeedsTokenContext,
    SequenceLayout,
    TokenContext,
)
from sae_variants.validation import check_activations

# CubicOrthoSAE (seed 002) trains as "cubic_ortho" and saves as SAELens "standard".
register_variant("cubic_ortho", CubicOrthoTrainingSAE, CubicOrthoTrainingSAEConfig)
# QuCLSAE (seed 000) trains and saves as "qucl" (its encoder is a quantized projection).
register_variant("qucl", QuCLTrainingSAE, QuCLTrainingSAEConfig, QuCLSAE, QuCLSAEConfig)
# MultiScaleNormSAE (seed 001) trains and saves as "multiscale_norm" (normalizing, gated encoder).
register_variant(
    "multiscale_norm",
    MultiScaleNormTrainingSAE,
    MultiScaleNormTrainingSAEConfig,
    MultiScaleNormSAE,
    MultiScaleNormSAEConfig,
)
# SeqContrastiveSAE (seed 003) trains through the sequence-aware pipeline (positives from the same
# sequence) and saves as "seq_contrastive" (a layer-normalizing encoder).
register_variant(
    "seq_contrastive",
    SeqContrastiveTrainingSAE,
    SeqContrastiveTrainingSAEConfig,
    SeqContrastiveSAE,
    SeqContrastiveSAEConfig,
)
# PositionAwareSAE (seed 004) trains through the sequence-aware pipeline (true positions) and saves
# as "position_aware" (range adapters; positions come from the sequence axis at inference).
register_variant(
    "position_aware",
    PositionAwareTrainingSAE,
    PositionAwareTrainingSAEConfig,
    PositionAwareSAE,
    PositionAwareSAEConfig,
)

__all__ = [
    "CubicOrthoSAE",
    "CubicOrthoSAEConfig",
    "CubicOrthoTrainingSAE",
    "CubicOrthoTrainingSAEConfig",
    "ExportReport",
    "MissingTokenContextError",
    "MultiScaleNormSAE",
    "MultiScaleNormSAEConfig",
    "MultiScaleNormTrainingSAE",
    "MultiScaleNormTrainingSAEConfig",
    "NeedsTokenContext",
    "NothingToExportError",
    "PositionAwareSAE",
    "PositionAwareSAEConfig",
    "PositionAwareTrainingSAE",
    "PositionAwareTrainingSAEConfig",
    "QuCLSAE",
    "QuCLSAEConfig",
    "QuCLTrainingSAE",
    "QuCLTrainingSAEConfig",
    "SeqContrastiveSAE",
    "SeqContrastiveSAEConfig",
    "SeqContrastiveTrainingSAE",
    "SeqContrastiveTrainingSAEConfig",
    "SequenceLayout",
    "TokenContext",
    "Variant",
    "check_activations",
    "export_to_saelens",
    "register_variant",
    "registered_variants",
    "training_architectures",
]

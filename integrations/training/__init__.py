"""Training: what a run is (``request``), the one SAELens runner every architecture trains with
(``runner``), the sequence-structured batches of the sequence-aware variants
(``sequence_batches``), the named recipes (``presets``) and :func:`train_sae` (``pipeline``)."""

from sae_variants.integrations.training.pipeline import TrainResult, train_sae
from sae_variants.integrations.training.request import TrainRequest, build_runner_config
from sae_variants.integrations.training.runner import VariantTrainingRunner, bind_run

__all__ = [
    "TrainRequest",
    "TrainResult",
    "VariantTrainingRunner",
    "bind_run",
    "build_runner_config",
    "train_sae",
]

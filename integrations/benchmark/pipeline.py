"""Throughput of the sequence-aware pipeline against SAELens's own activation store.

Both serve training batches of the same size from the same model, hook and dataset, built from
the same runner config (``sae-variants train``'s for the architecture). Each source first serves
one batch (SAELens fills its mixing buffer, the sequence pipeline its context pool); then blocks
of batches are timed alternately (SAELens, sequence, SAELens, ...) so machine noise hits both.
Reported: steady-state tokens per second of each and their ratio, plus the start-up time of each
(the pool holds more contexts than SAELens's buffer, so its start-up is longer).

    sae-variants benchmark --architecture seq_contrastive --d-sae 4096 --pipeline
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sae_lens import ActivationsStore
from tqdm.auto import tqdm

from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import EMBEDDED_MODEL_NAME, austen_dataset
from sae_variants.integrations.training.request import TrainRequest, build_runner_config
from sae_variants.integrations.training.sequence_batches import SequenceBatchSource
from sae_variants.token_context import SequenceLayout, sequence_layout_of


@dataclass
class PipelineThroughput:
    architecture: str
    batch_size: int
    layout: SequenceLayout
    saelens_tokens_per_second: float
    sequence_tokens_per_second: float
    saelens_startup_seconds: float
    sequence_startup_seconds: float
    served_fraction: float
    """Positions the sequence pipeline served over positions its model passes computed."""

    @property
    def ratio(self) -> float:
        return self.sequence_tokens_per_second / self.saelens_tokens_per_second


def time_activation_pipelines(
    architecture: str = "seq_contrastive",
    *,
    batches_per_block: int = 10,
    blocks: int = 4,
    d_sae: int = 2048,
) -> PipelineThroughput:
    """Steady-state tokens/s of the sequence pipeline over SAELens's store (embedded model)."""
    runner_cfg, _ = build_runner_config(TrainRequest(architecture=architecture, d_sae=d_sae))
    layout = sequence_layout_of(runner_cfg.sae) or SequenceLayout()
    model = load_model(EMBEDDED_MODEL_NAME)
    dataset = austen_dataset("train", runner_cfg.context_size)
    saelens = ActivationsStore.from_config(model, runner_cfg, override_dataset=dataset)
    sequence = SequenceBatchSource(
        ActivationsStore.from_config(model, runner_cfg, override_dataset=dataset),
        layout,
        runner_cfg.train_batch_size_tokens,
        seed=runner_cfg.seed,
    )
    startup = {}
    for name, source in (("saelens", saelens), ("sequence", sequence)):
        start = time.perf_counter()
        next(source)
        startup[name] = time.perf_counter() - start
    seconds = {"saelens": 0.0, "sequence": 0.0}
    for _ in tqdm(range(blocks), desc="pipeline throughput", unit="block"):
        for name, source in (("saelens", saelens), ("sequence", sequence)):
            start = time.perf_counter()
            for _ in range(batches_per_block):
                next(source)
            seconds[name] += time.perf_counter() - start
    tokens = blocks * batches_per_block * runner_cfg.train_batch_size_tokens
    return PipelineThroughput(
        architecture=architecture,
        batch_size=runner_cfg.train_batch_size_tokens,
        layout=layout,
        saelens_tokens_per_second=tokens / seconds["saelens"],
        sequence_tokens_per_second=tokens / seconds["sequence"],
        saelens_startup_seconds=startup["saelens"],
        sequence_startup_seconds=startup["sequence"],
        served_fraction=sequence.served_fraction,
    )


def format_throughput(result: PipelineThroughput) -> str:
    layout = result.layout
    return "\n".join(
        [
            f"activation pipelines ({result.architecture}: {layout.positions_per_context or 'whole'} positions "
            f"per context, {layout.sampling} sampling; {result.batch_size}-token batches, {EMBEDDED_MODEL_NAME})",
            f"  SAELens store        {result.saelens_tokens_per_second:>10.0f} tokens/s   start-up {result.saelens_startup_seconds:6.1f} s",
            f"  sequence pipeline    {result.sequence_tokens_per_second:>10.0f} tokens/s   start-up {result.sequence_startup_seconds:6.1f} s",
            f"  throughput ratio     {result.ratio:>10.2f}   (sequence / SAELens, steady state)",
            f"  served fraction      {result.served_fraction:>10.2f}   (positions served / positions computed)",
        ]
    )

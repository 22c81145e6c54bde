"""Training-step time of an architecture against SAELens's ``standard``, measured side by side.

A step is what SAELens's trainer does: ``training_forward_pass``, backward, gradient clipping at
1.0, an Adam step. Both SAEs see the same batches, and their encoder biases are shifted so that
each fires about ``target_l0`` features per row: a freshly initialized SAE fires half its
dictionary, which is not what training costs look like (and would flatter nothing but the dense
baseline). Repeats are interleaved (standard, variant, standard, ...) so machine noise hits both;
the reported ratio is the median of the per-repeat ratios.

Peak memory is measured in a fresh subprocess per architecture: the high-water mark of resident
memory (Linux ``VmHWM``, reset just before) while the SAE and its Adam state are built and a few
steps run, minus the resident memory before. That is the SAE's own training footprint (weights,
gradients, optimizer state, activations); the input batch is allocated before the reset.

    sae-variants benchmark --architecture cubic_ortho --d-sae 4096 16384
"""

from __future__ import annotations

import inspect
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from tqdm.auto import tqdm

from sae_variants.architectures.base import RunInfo, VariantTrainingSAE
from sae_variants.integrations.training.request import build_sae_config
from sae_variants.integrations.training.runner import bind_sae_config
from sae_variants.integrations.training.sequence_batches import plan_groups
from sae_variants.token_context import (
    NeedsTokenContext,
    SequenceLayout,
    TokenContext,
    sequence_layout_of,
)

BENCHMARK_CONTEXT = 128
"""Context length of the timed steps' token contexts (the papers' and the presets')."""


@dataclass
class StepTiming:
    architecture: str
    d_in: int
    d_sae: int
    batch_size: int
    baseline_seconds: float
    variant_seconds: float
    ratio: float
    baseline_l0: float
    variant_l0: float
    baseline_peak_mib: float | None = None
    variant_peak_mib: float | None = None
    dense_decode_ratio: float | None = None
    """The variant's ratio with its sparse-aware decode off (None: not a variant of this
    package), measured in the same repeats."""

    @property
    def dense_flop_fraction(self) -> float:
        """The share of a dense step's five products (encoder forward and weight gradient;
        decoder forward, weight gradient and code gradient) the sparse-aware step does at the
        variant's L0: ``(2 + 3 L0 / d_sae) / 5``; the encoder's 0.4 is the floor."""
        return (2 + 3 * min(self.variant_l0 / self.d_sae, 1.0)) / 5

    @property
    def memory_ratio(self) -> float | None:
        if self.baseline_peak_mib is None or self.variant_peak_mib is None:
            return None
        return self.variant_peak_mib / self.baseline_peak_mib


def _coefficients(sae: TrainingSAE[Any]) -> dict[str, float]:
    return {k: (v if isinstance(v, float) else v.value) for k, v in sae.get_coefficients().items()}


@torch.no_grad()
def _set_sparsity(sae: TrainingSAE[Any], x: torch.Tensor, target_l0: int) -> None:
    if "positions" in inspect.signature(sae.encode_with_hidden_pre).parameters:
        positions = synthetic_token_context(sae, x.shape[0]).positions
        _, hidden_pre = sae.encode_with_hidden_pre(x, positions=positions)
    else:
        _, hidden_pre = sae.encode_with_hidden_pre(x)
    quantile = 1.0 - target_l0 / sae.cfg.d_sae
    threshold = torch.quantile(hidden_pre[: min(1024, len(x))].float(), quantile, dim=0)
    sae.b_enc.sub_(threshold.to(sae.b_enc.dtype))


def _build(
    architecture: str,
    d_in: int,
    d_sae: int,
    options: dict[str, Any],
    x: torch.Tensor,
    target_l0: int,
) -> tuple[TrainingSAE[Any], torch.optim.Optimizer]:
    # A curriculum over a 1-step run is at full strength from the first timed step: the
    # benchmark times the most expensive phase.
    cfg = bind_sae_config(
        build_sae_config(architecture, d_in, d_sae, options, "none"),
        RunInfo(total_steps=1, lr_warm_up_steps=0, context_size=BENCHMARK_CONTEXT),
    )
    sae = SAE_TRAINING_CLASS_REGISTRY[architecture][0](cfg)
    _set_sparsity(sae, x, target_l0)
    sae.train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-5)
    if isinstance(sae, VariantTrainingSAE):
        sae.bind_optimizer(optimizer)
    return sae, optimizer


def synthetic_token_context(
    sae: TrainingSAE[Any], batch_size: int, context_size: int = BENCHMARK_CONTEXT, seed: int = 0
) -> TokenContext:
    """A token context shaped like the sequence-aware pipeline's batches for this SAE's layout
    (S contexts x P positions grouped as the layout samples them), for timing its training step."""
    layout = sequence_layout_of(sae.cfg) or SequenceLayout()
    per_group = layout.positions_per_context or context_size - 1
    n_contexts = batch_size // per_group
    if n_contexts * per_group != batch_size:
        raise ValueError(
            f"batch size {batch_size} is not a multiple of {per_group} positions per context"
        )
    generator = torch.Generator().manual_seed(seed)
    usable = torch.ones(n_contexts, context_size, dtype=torch.bool)
    usable[:, 0] = False  # BOS
    groups, _ = plan_groups(usable, layout, per_group, generator)
    positions = groups[:, 0].reshape(-1)
    return TokenContext(
        positions,
        torch.arange(n_contexts).repeat_interleave(per_group),
        torch.randint(0, 4096, (batch_size,), generator=generator),
    )


def _step(
    sae: TrainingSAE[Any],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    step: int,
    context: TokenContext | None = None,
) -> float:
    """One SAELens training step; ``context`` is the batch's token context for sequence-aware
    SAEs (built outside the timed region by the caller, as the pipeline builds it off the step)."""
    if isinstance(sae, NeedsTokenContext):
        sae.attach_token_context(context or synthetic_token_context(sae, x.shape[0], seed=step))
    out = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients=_coefficients(sae),
            dead_neuron_mask=None,
            n_training_steps=step,
            is_logging_step=False,
        )
    )
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float((out.feature_acts > 0).sum(-1).float().mean())


def time_training_step(
    architecture: str,
    *,
    d_in: int = 256,
    d_sae: int = 4096,
    batch_size: int = 4096,
    options: dict[str, Any] | None = None,
    target_l0: int = 64,
    steps: int = 3,
    repeats: int = 5,
    seed: int = 0,
) -> StepTiming:
    """Median over ``repeats`` of (variant seconds per step) / (standard seconds per step)."""
    torch.manual_seed(seed)
    batches = [torch.randn(batch_size, d_in) for _ in range(steps)]
    baseline = _build("standard", d_in, d_sae, {}, batches[0], target_l0)
    variant = _build(architecture, d_in, d_sae, options or {}, batches[0], target_l0)
    for sae, optimizer in (baseline, variant):  # warm-up: allocator, kernels, lazy Adam state
        _step(sae, optimizer, batches[0], 0)
    ratios, base_times, var_times, l0s = [], [], [], {"b": [], "v": [], "d": []}
    dense_ratios: list[float] = []
    variant_sae = variant[0]
    sparse_default = getattr(variant_sae, "sparse_decode_max_density", None)
    configurations = [("b", baseline, None), ("v", variant, sparse_default)]
    if isinstance(variant_sae, VariantTrainingSAE):
        configurations.append(("d", variant, 0.0))
    contexts = [
        synthetic_token_context(variant[0], batch_size, seed=i)
        if isinstance(variant[0], NeedsTokenContext)
        else None
        for i in range(steps)
    ]
    for _ in tqdm(range(repeats), desc=f"{architecture} d_sae={d_sae}", unit="repeat"):
        timings = []
        for key, (sae, optimizer), density in configurations:
            if density is not None:
                sae.sparse_decode_max_density = density
            start = time.perf_counter()
            for i, x in enumerate(batches):
                l0s[key].append(_step(sae, optimizer, x, i + 1, contexts[i]))
            timings.append((time.perf_counter() - start) / steps)
        if sparse_default is not None:
            variant_sae.sparse_decode_max_density = sparse_default
        base_times.append(timings[0])
        var_times.append(timings[1])
        ratios.append(timings[1] / timings[0])
        if len(timings) > 2:
            dense_ratios.append(timings[2] / timings[0])
    return StepTiming(
        architecture,
        d_in,
        d_sae,
        batch_size,
        baseline_seconds=statistics.median(base_times),
        variant_seconds=statistics.median(var_times),
        ratio=statistics.median(ratios),
        baseline_l0=statistics.mean(l0s["b"]),
        variant_l0=statistics.mean(l0s["v"]),
        dense_decode_ratio=statistics.median(dense_ratios) if dense_ratios else None,
    )


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_probe(spec: dict[str, Any]) -> float:
    """Runs inside the subprocess: MiB of peak resident memory the SAE's training adds."""
    torch.manual_seed(spec["seed"])
    x = torch.randn(spec["batch_size"], spec["d_in"])
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_kib("VmRSS")
    sae, optimizer = _build(
        spec["architecture"], spec["d_in"], spec["d_sae"], spec["options"], x, spec["target_l0"]
    )
    for step in range(spec["steps"]):
        _step(sae, optimizer, x, step)
    return (_status_kib("VmHWM") - before) / 1024


def peak_training_memory_mib(
    architecture: str,
    *,
    d_in: int,
    d_sae: int,
    batch_size: int,
    options: dict[str, Any],
    target_l0: int,
    steps: int = 3,
    seed: int = 0,
) -> float:
    """Peak resident memory (MiB) that building and training the SAE adds, in a fresh process."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError("peak-memory measurement reads /proc and needs Linux")
    spec = dict(
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        batch_size=batch_size,
        options=options,
        target_l0=target_l0,
        steps=steps,
        seed=seed,
    )
    completed = subprocess.run(
        [sys.executable, "-m", "sae_variants.integrations.benchmark.step_time", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe for {architecture} failed:\n{completed.stderr[-2000:]}")
    return float(completed.stdout.strip().splitlines()[-1])


def with_peak_memory(
    timing: StepTiming, options: dict[str, Any], target_l0: int, steps: int = 3
) -> StepTiming:
    """``timing`` with both architectures' peak training memory measured at its shapes."""
    shapes = dict(
        d_in=timing.d_in,
        d_sae=timing.d_sae,
        batch_size=timing.batch_size,
        target_l0=target_l0,
        steps=steps,
    )
    timing.baseline_peak_mib = peak_training_memory_mib("standard", options={}, **shapes)
    timing.variant_peak_mib = peak_training_memory_mib(
        timing.architecture, options=options, **shapes
    )
    return timing


def format_timings(timings: list[StepTiming]) -> str:
    header = (
        f"{'architecture':<16}{'d_in':>6}{'d_sae':>8}{'batch':>7}{'standard s':>12}{'variant s':>11}"
        f"{'ratio':>8}{'dense-dec':>10}{'FLOPs':>7}{'L0 std/var':>14}{'std MiB':>9}"
        f"{'var MiB':>9}{'mem ratio':>10}"
    )
    rows = []
    for t in timings:
        dense = "-" if t.dense_decode_ratio is None else f"{t.dense_decode_ratio:.2f}"
        memory = (
            f"{t.baseline_peak_mib:>9.0f}{t.variant_peak_mib:>9.0f}{t.memory_ratio:>10.2f}"
            if t.memory_ratio is not None
            else f"{'-':>9}{'-':>9}{'-':>10}"
        )
        rows.append(
            f"{t.architecture:<16}{t.d_in:>6}{t.d_sae:>8}{t.batch_size:>7}{t.baseline_seconds:>12.3f}"
            f"{t.variant_seconds:>11.3f}{t.ratio:>8.2f}{dense:>10}{t.dense_flop_fraction:>7.2f}"
            f"{t.baseline_l0:>8.0f}/{t.variant_l0:<5.0f}{memory}"
        )
    legend = (
        "ratio: variant / standard step time (sparse-aware decode on); dense-dec: the same with "
        "it off; FLOPs: share of a dense step's products done at the variant's L0 (floor 0.40, "
        "the encoder's)"
    )
    return "\n".join([header, *rows, legend])


if __name__ == "__main__":
    import sae_variants  # noqa: F401  (registers the variants in the probe process)

    sys.stdout.write(f"{_memory_probe(json.loads(sys.argv[1]))}\n")

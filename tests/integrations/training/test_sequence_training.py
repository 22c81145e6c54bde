"""The sequence-aware pipeline delivers each row's true position, sequence and token, and the
SAELens seams it relies on still behave as it assumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from sae_lens import (
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainingSAEConfig

from sae_variants import (
    MissingTokenContextError,
    PositionAwareTrainingSAEConfig,
    SeqContrastiveTrainingSAEConfig,
    SequenceLayout,
    TokenContext,
)
from sae_variants.integrations.models.tiny_gemma2 import random_tiny_gemma2_config
from sae_variants.integrations.models.tiny_gemma2.model import build_model
from sae_variants.integrations.training.activation_cache import CacheRequest, cache_activations
from sae_variants.integrations.training.runner import VariantTrainingRunner
from sae_variants.integrations.training.sequence_batches import (
    CachedContexts,
    SequenceBatchSource,
    plan_groups,
)
from sae_variants.replicas import Replicas

HOOK = "blocks.1.hook_resid_post"
CONTEXT = 32
N_CONTEXTS = 400


def marked_model() -> HookedSAETransformer:
    """A random Gemma-2 whose hooked activation carries its own provenance: channel 0 is the
    position, channel 1 the token id, channel 2 the context's tag (its token at position 1)."""
    model = build_model(random_tiny_gemma2_config(seed=0))
    seen: dict[str, torch.Tensor] = {}
    model.register_forward_pre_hook(lambda _module, args: seen.__setitem__("tokens", args[0]))

    def mark(act: torch.Tensor, hook: Any) -> torch.Tensor:
        tokens = seen["tokens"]
        act = act.clone()
        act[..., 0] = torch.arange(act.shape[1], dtype=act.dtype)
        act[..., 1] = tokens.to(act.dtype)
        act[..., 2] = tokens[:, 1:2].to(act.dtype)
        return act

    model.add_perma_hook(HOOK, mark)
    return model


def tagged_tokens() -> torch.Tensor:
    """Contexts whose token at position 1 is a unique tag (1..N_CONTEXTS)."""
    tokens = torch.randint(
        1, 500, (N_CONTEXTS, CONTEXT), generator=torch.Generator().manual_seed(3)
    )
    tokens[:, 1] = torch.arange(1, N_CONTEXTS + 1)
    return tokens


def runner_config(
    sae_cfg: TrainingSAEConfig, tmp_path: Path, steps: int = 6, **overrides: Any
) -> LanguageModelSAERunnerConfig[Any]:
    settings: dict[str, Any] = dict(
        sae=sae_cfg,
        model_name="random-tiny-gemma2",
        hook_name=HOOK,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=CONTEXT,
        training_tokens=steps * 256,
        train_batch_size_tokens=256,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        lr=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=str(tmp_path / "ckpt"),
        output_path=str(tmp_path / "sae"),
        exclude_special_tokens=False,
        verbose=False,
        model_from_pretrained_kwargs={},
    )
    settings.update(overrides)
    return LanguageModelSAERunnerConfig(**settings)


def seq_config(**fields: Any) -> SeqContrastiveTrainingSAEConfig:
    fields.setdefault("normalize_activations", "none")
    fields.setdefault("contrastive_warm_up_steps", 0)
    return SeqContrastiveTrainingSAEConfig(d_in=64, d_sae=128, **fields)


def sequence_runner(
    sae_cfg: TrainingSAEConfig,
    tmp_path: Path,
    model: HookedSAETransformer | None = None,
    layout: SequenceLayout | None = None,
    **overrides: Any,
) -> VariantTrainingRunner:
    return VariantTrainingRunner(
        runner_config(sae_cfg, tmp_path, **overrides),
        override_dataset=Dataset.from_dict({"tokens": tagged_tokens().tolist()}),
        override_model=model or marked_model(),
        layout=layout,
    )


def write_marked_cache(output: Path, tokens: torch.Tensor) -> Path:
    """An activation cache of ``tokens`` written by the marked model (``sae-variants cache``)."""
    cache_activations(
        CacheRequest(
            output_path=output,
            training_tokens=tokens.numel(),
            model_name="random-tiny-gemma2",
            hook_name=HOOK,
            context_size=CONTEXT,
        ),
        model=marked_model(),
        dataset=Dataset.from_dict({"tokens": tokens.tolist()}),
    )
    return output


@pytest.fixture(scope="module")
def marked_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_marked_cache(tmp_path_factory.mktemp("cache") / "acts", tagged_tokens())


@pytest.fixture(params=["live", "cache"])
def source_runner(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """``sequence_runner`` live (the marked model runs) or from a cache the marked model wrote; the
    cached runner is handed an unmarked model, so provenance holds only if the cache is read."""

    def make(sae_cfg: TrainingSAEConfig, path: Path = tmp_path, **kwargs: Any) -> Any:
        if request.param == "live":
            return sequence_runner(sae_cfg, path, **kwargs)
        cache = request.getfixturevalue("marked_cache")
        return sequence_runner(
            sae_cfg,
            path,
            model=build_model(random_tiny_gemma2_config(seed=0)),
            use_cached_activations=True,
            cached_activations_path=str(cache),
            **kwargs,
        )

    return make


def assert_true_provenance(batch: torch.Tensor, context: TokenContext) -> None:
    assert torch.equal(batch[:, 0].round().long(), context.positions)
    assert torch.equal(batch[:, 1].round().long(), context.token_ids)
    tags = batch[:, 2].round().long()
    for sequence in context.sequence_ids.unique():
        rows = context.sequence_ids == sequence
        assert tags[rows].unique().numel() == 1, (
            "rows of one sequence id come from several contexts"
        )
    # ...and different sequence ids are different contexts.
    first_rows = torch.unique(context.sequence_ids, return_inverse=True)[1]
    assert tags.unique().numel() == first_rows.max() + 1


@pytest.mark.parametrize(
    "layout",
    [
        SequenceLayout(8, "pairs", 4),
        SequenceLayout(8, "uniform"),
        SequenceLayout(16, "span"),
        SequenceLayout(None),
    ],
    ids=["pairs", "uniform", "span", "whole"],
)
def test_every_row_carries_its_true_position_sequence_and_token(
    layout: SequenceLayout, source_runner: Any
) -> None:
    runner = source_runner(seq_config(), layout=layout)
    source = runner.sequence_batches
    served: dict[int, list[int]] = {}
    for _ in range(12):
        batch = next(source)
        context = source.context_of(batch)
        assert batch.shape == (256, 64)
        assert_true_provenance(batch, context)
        # S distinct contexts x P rows, P consecutive rows per context.
        per_context = context.sequence_ids.reshape(-1, source.per_group)
        assert (per_context == per_context[:, :1]).all()
        assert per_context[:, 0].unique().numel() == per_context.shape[0]
        for sequence, position in zip(
            context.sequence_ids.tolist(), context.positions.tolist(), strict=True
        ):
            served.setdefault(sequence, []).append(position)
    # A position is served at most once per context.
    assert all(len(p) == len(set(p)) for p in served.values())
    if layout.positions_per_context is None:
        assert source.per_group == CONTEXT  # nothing is special here, so whole contexts
    if layout.sampling == "pairs":
        assert all(len(p) % 2 == 0 for p in served.values())


def test_special_tokens_are_never_served(tmp_path: Path) -> None:
    runner = sequence_runner(seq_config(), tmp_path, exclude_special_tokens=[0])
    tokens = tagged_tokens()
    tokens[:, 0] = 0  # a BOS at the start of every context
    tokens[::3, 10] = 0  # and some mid-context separators
    stream = iter(tokens)
    runner.sequence_batches.store.get_batch_tokens = lambda n, **_: torch.stack(
        [next(stream) for _ in range(n)]
    )
    for _ in range(8):
        batch = next(runner.sequence_batches)
        context = runner.sequence_batches.context_of(batch)
        assert (context.token_ids != 0).all()
        assert_true_provenance(batch, context)


def test_group_plans_follow_their_sampling() -> None:
    generator = torch.Generator().manual_seed(0)
    usable = torch.rand(50, 64, generator=generator) > 0.1
    usable[:, 0] = False
    for layout, size in (
        (SequenceLayout(8, "pairs", 3), 8),
        (SequenceLayout(8, "uniform"), 8),
        (SequenceLayout(6, "span"), 6),
    ):
        groups, counts = plan_groups(usable, layout, size, generator)
        for c in range(50):
            served = groups[c, : counts[c]]
            flat = served.flatten()
            assert usable[c, flat].all(), "a group holds an unusable position"
            assert flat.unique().numel() == flat.numel(), "a position is in two groups"
            if layout.sampling == "span":
                order = usable[c].nonzero().squeeze(1).tolist()
                for group in served.tolist():
                    start = order.index(group[0])
                    assert group == order[start : start + size], "a span skips usable positions"
        if layout.sampling == "uniform":
            assert (counts == usable.sum(1) // size).all()


def test_pairs_are_within_the_window() -> None:
    from sae_variants.integrations.training.sequence_batches import greedy_window_pairs

    usable = torch.rand(30, 40, generator=torch.Generator().manual_seed(1)) > 0.2
    pairs, counts = greedy_window_pairs(usable, 3, torch.Generator().manual_seed(2))
    for c in range(30):
        got = pairs[c, : counts[c]]
        assert ((got[:, 1] - got[:, 0]) >= 1).all()
        assert ((got[:, 1] - got[:, 0]) <= 3).all()
        assert usable[c, got.flatten()].all()
        assert got.flatten().unique().numel() == got.numel()
    assert (pairs[:, :, 0][torch.arange(pairs.shape[1]) >= counts.unsqueeze(1)] == -1).all()
    # Greedy pairing leaves few usable positions unpaired.
    assert (2 * counts.sum()) / usable.sum() > 0.85


def test_special_tokens_in_a_cache_are_never_served(tmp_path: Path) -> None:
    tokens = tagged_tokens()
    tokens[:, 0] = 0  # a BOS at the start of every context
    tokens[::3, 10] = 0  # and some mid-context separators
    cache = write_marked_cache(tmp_path / "acts", tokens)
    runner = sequence_runner(
        seq_config(),
        tmp_path,
        exclude_special_tokens=[0],
        use_cached_activations=True,
        cached_activations_path=str(cache),
    )
    for _ in range(8):
        batch = next(runner.sequence_batches)
        context = runner.sequence_batches.context_of(batch)
        assert (context.token_ids != 0).all()
        assert_true_provenance(batch, context)


def test_per_token_training_from_a_cache_skips_special_tokens(tmp_path: Path) -> None:
    """SAELens's own store reads the cache for per-token SAEs; its token_ids (stored as floats in
    the activation dtype) still drive the special-token filter."""
    tokens = tagged_tokens()
    tokens[:, 0] = 0
    cache = write_marked_cache(tmp_path / "acts", tokens)
    runner = VariantTrainingRunner(
        runner_config(
            StandardTrainingSAEConfig(d_in=64, d_sae=128),
            tmp_path,
            exclude_special_tokens=[0],
            use_cached_activations=True,
            cached_activations_path=str(cache),
        ),
        override_dataset=Dataset.from_dict({"tokens": tokens.tolist()}),
        override_model=build_model(random_tiny_gemma2_config(seed=0)),
    )
    rows = torch.cat([next(runner.activations_store) for _ in range(20)])
    assert (rows[:, 1].round() != 0).all(), "a BOS activation reached the SAE"
    assert set(rows[:, 0].round().long().tolist()) == set(range(1, CONTEXT))


def test_a_checkpoint_resumes_only_on_the_same_kind_of_source(
    tmp_path: Path, marked_cache: Path
) -> None:
    live = sequence_runner(seq_config(), tmp_path / "live").sequence_batches
    next(live)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    live.save_to_checkpoint(checkpoint)
    cached = sequence_runner(
        seq_config(),
        tmp_path / "cached",
        use_cached_activations=True,
        cached_activations_path=str(marked_cache),
    ).sequence_batches
    with pytest.raises(ValueError, match="computed activations live"):
        cached.load_from_checkpoint(checkpoint)
    next(cached)
    cached.save_to_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="read an activation cache"):
        sequence_runner(seq_config(), tmp_path / "live2").sequence_batches.load_from_checkpoint(
            checkpoint
        )


def test_training_steps_receive_their_own_batch_context(source_runner: Any) -> None:
    """End to end through SAELens's runner and trainer: every step's context describes exactly the
    rows it trains on (normalization is off, so sae_in is the served activations)."""
    runner = source_runner(seq_config(), steps=8)
    sae = runner.sae
    received: list[tuple[torch.Tensor, TokenContext]] = []
    take = sae.take_token_context

    def recording_take(n_rows: int, device: torch.device) -> TokenContext:
        context = take(n_rows, device)
        received.append((sae._current_input, context))
        return context

    forward = sae.training_forward_pass

    def recording_forward(step_input: Any) -> Any:
        sae._current_input = step_input.sae_in
        return forward(step_input=step_input)

    sae.take_token_context = recording_take
    sae.training_forward_pass = recording_forward
    runner.run()
    assert len(received) == 8, "SAELens no longer calls trainer.step once per training batch"
    for batch, context in received:
        assert_true_provenance(batch, context)


@pytest.mark.parametrize(
    "sae_cfg",
    [
        seq_config(),
        PositionAwareTrainingSAEConfig(d_in=64, d_sae=128, normalize_activations="none"),
    ],
    ids=lambda cfg: cfg.architecture(),
)
def test_plain_saelens_runner_refuses_before_reading_any_batch(
    sae_cfg: TrainingSAEConfig, tmp_path: Path
) -> None:
    """SAELens's runner loads the model before it touches the SAE, so the earliest refusal is
    its trainer's constructor: before the normalization estimate and before any step."""
    runner = LanguageModelSAETrainingRunner(
        runner_config(sae_cfg, tmp_path, n_batches_for_norm_estimate=1000),
        override_dataset=Dataset.from_dict({"tokens": tagged_tokens().tolist()}),
        override_model=marked_model(),
    )
    store = runner.activations_store
    batches_read = []
    next_batch = store.next_batch
    store.next_batch = lambda *a, **k: batches_read.append(1) or next_batch(*a, **k)
    with pytest.raises(MissingTokenContextError, match=r"VariantTrainingRunner \(same arguments\)"):
        runner.run()
    assert batches_read == []


def test_bad_layouts_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of the positions served per context"):
        sequence_runner(seq_config(positions_per_context=6, position_sampling="uniform"), tmp_path)
    with pytest.raises(ValueError, match="even positions_per_context"):
        SequenceLayout(7, "pairs")
    with pytest.raises(ValueError, match="sampling must be one of"):
        SequenceLayout(8, "random")
    with pytest.raises(ValueError, match="seqpos_slice"):
        sequence_runner(seq_config(), tmp_path, seqpos_slice=(1, None))
    plain = VariantTrainingRunner(
        runner_config(StandardTrainingSAEConfig(d_in=64, d_sae=128), tmp_path),
        override_model=marked_model(),
        override_dataset=Dataset.from_dict({"tokens": tagged_tokens().tolist()}),
    )
    assert plain.sequence_batches is None  # a per-token config trains on SAELens's shuffled store


def test_a_data_parallel_pool_splits_its_batches_and_refills_over_the_ranks(
    tmp_path: Path, marked_cache: Path
) -> None:
    store = sequence_runner(seq_config(), tmp_path).sequence_batches.store
    layout = seq_config().sequence_layout()
    with pytest.raises(ValueError, match="must split evenly over the 3 data-parallel ranks"):
        SequenceBatchSource(store, layout, 2 * 8, replicas=Replicas(3, rank=0))  # S = 2 of P = 8
    # Every rank reads the whole cache: rank 1's share of the next 4 rows is the second two.
    from datasets import load_from_disk

    cache = load_from_disk(str(marked_cache)).with_format("torch")
    shares = [CachedContexts(cache, HOOK, CONTEXT, 64, part=r, parts=2) for r in (0, 1)]
    whole = CachedContexts(cache, HOOK, CONTEXT, 64)
    expected_tokens, expected_acts, expected_rows = whole.take(4)
    parts = [share.take(4) for share in shares]
    assert torch.equal(torch.cat([p[0] for p in parts]), expected_tokens)
    assert torch.equal(torch.cat([p[1] for p in parts]), expected_acts)
    assert torch.equal(torch.cat([p[2] for p in parts]), expected_rows)
    assert shares[0].cursor == shares[1].cursor == whole.cursor == 4


def test_a_resumed_source_serves_the_batches_an_uninterrupted_one_would(
    tmp_path: Path, source_runner: Any
) -> None:
    first = source_runner(seq_config(), tmp_path / "a").sequence_batches
    for _ in range(5):
        next(first)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    first.save_to_checkpoint(checkpoint)
    expected = [next(first) for _ in range(30)]  # enough to refill the pool several times
    expected_contexts = [first.context_of(b) for b in expected]

    second = source_runner(seq_config(), tmp_path / "b").sequence_batches
    second.load_from_checkpoint(checkpoint)
    for batch, context in zip(expected, expected_contexts, strict=True):
        again = next(second)
        again_context = second.context_of(again)
        torch.testing.assert_close(again, batch, rtol=0, atol=0)
        for field in ("positions", "sequence_ids", "token_ids"):
            assert torch.equal(getattr(again_context, field), getattr(context, field)), field


def test_train_sae_picks_the_sequence_pipeline_from_the_config(tmp_path: Path) -> None:
    """`sae-variants train --architecture seq_contrastive` and train_sae need no flag: the config's
    sequence_layout() selects the pipeline (the plain runner would raise MissingTokenContextError)."""
    from sae_lens import SAE

    from sae_variants import SeqContrastiveSAE, SeqContrastiveTrainingSAE
    from sae_variants.integrations.training.pipeline import train_sae
    from sae_variants.integrations.training.request import TrainRequest

    result = train_sae(
        TrainRequest(
            architecture="seq_contrastive",
            d_sae=256,
            training_tokens=52 * 1024,
            train_batch_size_tokens=1024,
            sae_options={"l1_coefficient": 1.0},
            output_path=tmp_path / "seq",
            preset="demo",
        )
    )
    assert isinstance(result.sae, SeqContrastiveTrainingSAE)
    assert isinstance(SAE.load_from_disk(str(tmp_path / "seq")), SeqContrastiveSAE)

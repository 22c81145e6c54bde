"""Train a variant from a plain SAELens runner config, on the embedded model, and evaluate it.

    python examples/train_with_saelens.py --architecture cubic_ortho      # a per-token variant
    python examples/train_with_saelens.py --architecture seq_contrastive  # a sequence-aware one

The config is SAELens's own ``LanguageModelSAERunnerConfig`` with the variant's training config
inside; ``VariantTrainingRunner`` is SAELens's runner plus what the variants need (the config
bound to its run, the SAE bound to the optimizer, sequence-structured batches where the config
declares them). On a GPU machine with hub access the same config trains on ``gemma-2-2b``: set
``model_name``, ``hook_name``, ``dataset_path`` and ``d_in=2304``, and drop the two overrides.
"""

from __future__ import annotations

import argparse

from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

import sae_variants  # noqa: F401  (registers the variants with SAELens)
from sae_variants.integrations.evaluation import evaluate_sae, format_table
from sae_variants.integrations.models import load_model
from sae_variants.integrations.models.tiny_gemma2 import austen_dataset
from sae_variants.integrations.training import VariantTrainingRunner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="cubic_ortho")
    parser.add_argument("--l1", type=float, default=0.7, help="the variant's l1_coefficient")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens")
    parser.add_argument("--output", default="sae_runs/example")
    args = parser.parse_args(argv)

    sae_config_class = SAE_TRAINING_CLASS_REGISTRY[args.architecture][1]
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_config_class(
            d_in=256,  # the embedded model's residual stream
            d_sae=2048,
            l1_coefficient=args.l1,
            normalize_activations="expected_average_only_in",
        ),
        model_name="tiny-gemma2-austen",
        hook_name="blocks.1.hook_resid_post",
        dataset_path="",  # the text comes from override_dataset below
        is_dataset_tokenized=True,
        streaming=False,
        context_size=128,
        training_tokens=args.tokens,
        train_batch_size_tokens=4096,
        n_batches_in_buffer=64,  # the buffer must hold at least one batch of tokens
        lr=2e-3,
        lr_warm_up_steps=min(50, args.tokens // 4096 // 5),
        # SAELens's default estimate reads 1000 batches before training starts.
        n_batches_for_norm_estimate=20,
        exclude_special_tokens=True,
        output_path=args.output,
        checkpoint_path=f"{args.output}/checkpoints",
        logger=LoggingConfig(log_to_wandb=False),
        model_from_pretrained_kwargs={},
    )
    runner = VariantTrainingRunner(
        cfg,
        override_model=load_model("tiny-gemma2-austen"),
        override_dataset=austen_dataset("train"),
    )
    runner.run()
    print(format_table(evaluate_sae(args.output, n_batches=2)))


if __name__ == "__main__":
    main()

"""TransformerLens configs for the embedded "tiny Gemma-2" and for its random-weight test twin.

Both use exactly the Gemma-2 code paths TransformerLens runs for ``gemma-2-2b``: RMSNorm before
and after each sublayer, rotary embeddings, grouped-query attention, alternating local/global
attention (even layers local, as in HF), attention and final-logit soft-capping, a gated
GELU-tanh MLP, and embedding scaling (folded into ``W_E`` as TransformerLens's Gemma converter
does). Only the sizes differ. ``tests/integrations/models/test_tiny_gemma2.py`` checks every
non-size field against TransformerLens's own ``gemma-2-2b`` config.
"""

from __future__ import annotations

from transformer_lens import HookedTransformerConfig

EMBEDDED_MODEL_NAME = "tiny-gemma2-austen"
"""The name the embedded model answers to in ``--model`` and in saved SAE metadata."""

CONTEXT_SIZE = 128
VOCAB_SIZE = 4096

# Fields that define the Gemma-2 *architecture* (as opposed to its sizes). They must equal
# TransformerLens's gemma-2-2b values; the test asserts this so a TL upgrade cannot drift.
GEMMA2_ARCHITECTURE_FIELDS: dict[str, object] = {
    "act_fn": "gelu_pytorch_tanh",
    "normalization_type": "RMS",
    "final_rms": True,
    "use_normalization_before_and_after": True,
    "positional_embedding_type": "rotary",
    "rotary_base": 10000.0,
    "use_attn_scale": True,
    "use_local_attn": True,
    "attn_scores_soft_cap": 50.0,
    "output_logits_soft_cap": 30.0,
    "gated_mlp": True,
    "original_architecture": "Gemma2ForCausalLM",
    "default_prepend_bos": True,
    "eps": 1e-6,
}


def tiny_gemma2_config(
    *,
    d_model: int = 256,
    n_layers: int = 4,
    n_heads: int = 4,
    n_key_value_heads: int = 2,
    d_mlp: int = 1024,
    d_vocab: int = VOCAB_SIZE,
    n_ctx: int = CONTEXT_SIZE,
    window_size: int = 64,
    seed: int | None = None,
) -> HookedTransformerConfig:
    """A Gemma-2-architecture config; the defaults are the embedded model's sizes."""
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if n_heads % n_key_value_heads:
        raise ValueError(
            f"n_heads={n_heads} must be a multiple of n_key_value_heads={n_key_value_heads}"
        )
    d_head = d_model // n_heads
    return HookedTransformerConfig(
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=n_key_value_heads,
        d_mlp=d_mlp,
        n_layers=n_layers,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        rotary_dim=d_head,
        # Gemma-2 scales queries by sqrt(query_pre_attn_scalar) with query_pre_attn_scalar = d_head.
        attn_scale=float(d_head) ** 0.5,
        window_size=window_size,
        attn_types=["local", "global"] * (n_layers // 2) + ["local"] * (n_layers % 2),
        initializer_range=0.02,
        seed=seed,
        device="cpu",
        **GEMMA2_ARCHITECTURE_FIELDS,  # type: ignore[arg-type]
    )


def random_tiny_gemma2_config(seed: int = 0) -> HookedTransformerConfig:
    """A much smaller random-weight twin (d_model 64, vocab 512) for fast architecture tests."""
    return tiny_gemma2_config(
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_key_value_heads=2,
        d_mlp=256,
        d_vocab=512,
        n_ctx=CONTEXT_SIZE,
        window_size=8,
        seed=seed,
    )

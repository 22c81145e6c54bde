"""The embedded tiny Gemma-2: Gemma-2 architecture, faithful to HF's Gemma-2, trained for real."""

from __future__ import annotations

import json

import pytest
import torch
from transformer_lens.loading_from_pretrained import get_pretrained_model_config
from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

from sae_variants.integrations.models.tiny_gemma2 import (
    CONTEXT_SIZE,
    corpus,
    heldout_loss,
    load_tokenizer,
    random_tiny_gemma2_config,
    tiny_gemma2_config,
)
from sae_variants.integrations.models.tiny_gemma2.config import GEMMA2_ARCHITECTURE_FIELDS
from sae_variants.integrations.models.tiny_gemma2.model import (
    PORTABLE_TOKENIZER_CLASS,
    REPORT_PATH,
    TOKENIZER_DIR,
    build_model,
)


@pytest.mark.parametrize(
    "cfg", [tiny_gemma2_config(), random_tiny_gemma2_config()], ids=["embedded", "random"]
)
def test_architecture_fields_equal_transformer_lens_gemma_2_2b(cfg) -> None:
    reference = get_pretrained_model_config("gemma-2-2b")
    for field in GEMMA2_ARCHITECTURE_FIELDS:
        assert getattr(cfg, field) == getattr(reference, field), field
    assert cfg.n_key_value_heads < cfg.n_heads, "grouped-query attention"
    assert cfg.attn_types[:2] == reference.attn_types[:2] == ["local", "global"]
    assert cfg.attn_scale == pytest.approx(cfg.d_head**0.5)


def test_transformer_lens_matches_hf_gemma2_on_the_tiny_config() -> None:
    """Convert a random HF Gemma-2 with TL's own converter: same logits well past the window."""
    transformers = pytest.importorskip("transformers")
    cfg = random_tiny_gemma2_config()
    hf_cfg = transformers.Gemma2Config(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads,
        head_dim=cfg.d_head,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=cfg.eps,
        rope_theta=cfg.rotary_base,
        attn_logit_softcapping=cfg.attn_scores_soft_cap,
        final_logit_softcapping=cfg.output_logits_soft_cap,
        query_pre_attn_scalar=cfg.d_head,
        sliding_window=cfg.window_size,
        max_position_embeddings=cfg.n_ctx,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.Gemma2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        # Large weights so that soft-caps and norms are exercised, not bypassed.
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    model = build_model(cfg)
    model.load_state_dict(convert_gemma_weights(hf, cfg), strict=False)
    tokens = torch.randint(0, cfg.d_vocab, (2, 64))
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = model(tokens)
    torch.testing.assert_close(actual, expected, atol=1e-3, rtol=1e-3)


def test_corpus_split_is_disjoint_and_covers_every_novel() -> None:
    novels = corpus.load_novels()
    assert len(novels) == 6
    train, held_out = corpus.corpus_split("train"), corpus.corpus_split("held_out")
    for text, tr, ho in zip(novels.values(), train, held_out, strict=True):
        assert text.startswith(tr)
        assert text.endswith(ho)
        assert 0.03 < len(ho) / len(text) < 0.07


def test_token_contexts_start_with_bos_and_keep_text_order() -> None:
    tokenizer = load_tokenizer()
    text = corpus.corpus_split("held_out")[0]
    contexts = corpus.token_contexts([text], tokenizer, CONTEXT_SIZE)
    assert contexts.shape[1] == CONTEXT_SIZE
    assert (contexts[:, 0] == tokenizer.bos_token_id).all()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert contexts[1, 1:].tolist() == ids[CONTEXT_SIZE - 1 : 2 * (CONTEXT_SIZE - 1)]


def test_shipped_tokenizer_names_a_class_every_allowed_transformers_has() -> None:
    """transformers 5 saves its own TokenizersBackend class name, which transformers 4 (the
    SAEDashboard environment) cannot import; the shipped config names PreTrainedTokenizerFast."""
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS == "PreTrainedTokenizerFast"
    tokenizer = load_tokenizer()
    assert tokenizer.is_fast
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    assert (
        tokenizer.decode(tokenizer('"My dear Mr. Bennet,"')["input_ids"]) == '"My dear Mr. Bennet,"'
    )


def test_bad_split_name_is_refused() -> None:
    with pytest.raises(ValueError, match="'train' or 'held_out'"):
        corpus.corpus_split("test")


def test_embedded_model_reaches_the_heldout_loss_target(embedded_model) -> None:
    loss = heldout_loss(embedded_model)
    assert loss <= 4.2, f"held-out loss {loss:.3f} nats/token; the target is <= 4.2 (unigram ~6.4)"
    report = json.loads(REPORT_PATH.read_text())
    assert report["heldout_loss_nats_per_token"] == pytest.approx(loss, abs=1e-3)


def test_embedded_model_predicts_austen(embedded_model) -> None:
    tokenizer = load_tokenizer()
    tokens = embedded_model.to_tokens('"My dear Mr.')
    with torch.no_grad():
        next_id = embedded_model(tokens)[0, -1].argmax().item()
    assert tokenizer.decode([next_id]).strip() in {
        "Bennet",
        "Knightley",
        "Darcy",
        "Elton",
        "Woodhouse",
        "Weston",
    }

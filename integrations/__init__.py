"""Integrations with TransformerLens and SAELens: models, presets, training, evaluation, splicing."""

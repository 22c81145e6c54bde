"""register_variant: idempotent, reload-safe, and never shadows someone else's architecture."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

import sae_variants
from sae_variants import registry

TOY_MODULE = textwrap.dedent(
    """
    from dataclasses import dataclass
    from sae_lens.saes.standard_sae import (
        StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig,
    )
    from sae_variants import register_variant

    @dataclass
    class ToySAEConfig(StandardSAEConfig):
        @classmethod
        def architecture(cls) -> str:
            return "toy_variant"

    class ToySAE(StandardSAE):
        pass

    @dataclass
    class ToyTrainingSAEConfig(StandardTrainingSAEConfig):
        @classmethod
        def architecture(cls) -> str:
            return "toy_variant"

    class ToyTrainingSAE(StandardTrainingSAE):
        pass

    register_variant("toy_variant", ToyTrainingSAE, ToyTrainingSAEConfig, ToySAE, ToySAEConfig)
    """
)


@pytest.fixture
def toy_module(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "toy_variant_plugin.py").write_text(TOY_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        yield "toy_variant_plugin"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("toy_variant_plugin", None)
        SAE_CLASS_REGISTRY.pop("toy_variant", None)
        SAE_TRAINING_CLASS_REGISTRY.pop("toy_variant", None)
        registry._VARIANTS.pop("toy_variant", None)


def test_importing_and_reloading_the_package_does_not_raise() -> None:
    before = {v.name for v in sae_variants.registered_variants()}
    importlib.reload(sae_variants)
    importlib.reload(sae_variants)
    assert {v.name for v in sae_variants.registered_variants()} == before
    for variant in sae_variants.registered_variants():
        assert SAE_TRAINING_CLASS_REGISTRY[variant.name][0] is variant.training_sae


def test_a_plugin_registers_and_reloads_cleanly(toy_module: str) -> None:
    module = importlib.import_module(toy_module)
    assert SAE_CLASS_REGISTRY["toy_variant"][0] is module.ToySAE
    reloaded = importlib.reload(module)
    # The reloaded module's fresh classes replace the stale ones.
    assert SAE_CLASS_REGISTRY["toy_variant"][0] is reloaded.ToySAE
    assert SAE_TRAINING_CLASS_REGISTRY["toy_variant"][0] is reloaded.ToyTrainingSAE
    assert "toy_variant" in [v.name for v in sae_variants.registered_variants()]
    assert "toy_variant" in sae_variants.training_architectures()


def test_a_different_class_under_a_taken_name_is_refused(toy_module: str) -> None:
    module = importlib.import_module(toy_module)

    class Impostor(module.ToyTrainingSAE):
        pass

    with pytest.raises(ValueError, match=r"already registered as .*ToyTrainingSAE"):
        sae_variants.register_variant("toy_variant", Impostor, module.ToyTrainingSAEConfig)


def test_sae_lens_builtins_cannot_be_shadowed(toy_module: str) -> None:
    module = importlib.import_module(toy_module)

    class Standardish(module.ToyTrainingSAEConfig):
        @classmethod
        def architecture(cls) -> str:
            return "standard"

    with pytest.raises(ValueError, match=r"already registered as sae_lens"):
        sae_variants.register_variant("standard", module.ToyTrainingSAE, Standardish)


def test_the_name_must_match_the_configs_architecture(toy_module: str) -> None:
    module = importlib.import_module(toy_module)
    with pytest.raises(ValueError, match=r"architecture\(\) is 'toy_variant', not 'other'"):
        sae_variants.register_variant("other", module.ToyTrainingSAE, module.ToyTrainingSAEConfig)


def test_inference_classes_come_in_pairs(toy_module: str) -> None:
    module = importlib.import_module(toy_module)
    with pytest.raises(ValueError, match=r"both"):
        sae_variants.register_variant(
            "toy_variant", module.ToyTrainingSAE, module.ToyTrainingSAEConfig, sae=module.ToySAE
        )


@pytest.mark.parametrize("architecture", [v.name for v in registry.registered_variants()])
def test_cfg_json_names_what_loading_needs(architecture: str) -> None:
    from sae_variants.architectures.base import package_version
    from sae_variants.integrations.training.request import build_sae_config

    saved = build_sae_config(architecture, 16, 32, {}, "none").get_inference_sae_cfg_dict()
    metadata = saved["metadata"]
    assert metadata["sae_variants_version"] == package_version() != "unknown"
    if saved["architecture"] == "standard":  # CubicOrtho is saved as SAELens standard
        assert metadata["load_with"].startswith("sae_lens alone")
    else:
        assert "import sae_variants" in metadata["load_with"]
        assert f"sae-variants>={package_version()}" in metadata["load_with"]

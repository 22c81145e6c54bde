"""A fix-up every inference config of this package needs when SAELens loads it from disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sae_lens.saes.sae import SAEMetadata


@dataclass(kw_only=True)
class AcceptsSavedMetadata:
    """Let ``metadata`` arrive as the plain dict ``SAEConfig.from_dict`` passes, and convert it.

    SAELens builds a loaded config as ``cfg_class(**saved)`` with ``metadata`` still a dict and
    only then replaces it; this package's configs are type-checked at run time in tests, so the
    field admits the dict and ``__post_init__`` turns it into ``SAEMetadata`` at once. Mix in
    *before* ``SAEConfig`` so this declaration of the field wins.
    """

    metadata: SAEMetadata | dict[str, Any] = field(default_factory=SAEMetadata)

    def __post_init__(self) -> None:
        if isinstance(self.metadata, dict):
            self.metadata = SAEMetadata(**self.metadata)
        super().__post_init__()  # type: ignore[misc]

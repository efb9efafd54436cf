"""The mask stage ``fastgen masks``: real training masks → augmented / sampled masks → filters → mask shards.

The names below are imported on first use (PEP 562), not with the package: a Ray task worker that runs a CPU stage of
:mod:`pipelines.masks.stages` imports this package first, and ``run`` would bring in Ray's driver side and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.masks.config import MasksConfig
    from pipelines.masks.run import MasksSummary, run_masks

_HOMES = {
    "MasksConfig": "pipelines.masks.config",
    "MasksSummary": "pipelines.masks.run",
    "run_masks": "pipelines.masks.run",
}


def __getattr__(name: str) -> Any:
    """``name`` from the submodule that defines it (imported now), or AttributeError as for any module."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


__all__ = ["MasksConfig", "MasksSummary", "run_masks"]

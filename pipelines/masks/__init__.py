"""The mask stage ``fastgen masks``: real training masks → augmented / sampled masks → filters → mask shards.

The names below are imported on first use (PEP 562), not with the package: a Ray task worker that runs a CPU stage of
:mod:`pipelines.masks.stages` imports this package first, and ``run`` would bring in Ray's driver side and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.lazy import lazy_exports

if TYPE_CHECKING:
    from pipelines.masks.config import MasksConfig
    from pipelines.masks.run import MasksSummary, run_masks

_HOMES = {
    "MasksConfig": "pipelines.masks.config",
    "MasksSummary": "pipelines.masks.run",
    "run_masks": "pipelines.masks.run",
}

__getattr__ = lazy_exports(__name__, _HOMES)


__all__ = ["MasksConfig", "MasksSummary", "run_masks"]

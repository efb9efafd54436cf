"""Mask tools for synthesis: seeded geometric augmentation of real masks, automatic filters, mask statistics, and a
small mask diffusion model with its sampler (:mod:`fast_core.masks.diffusion`; its box frame learns shapes at their
own scale, and :mod:`fast_core.masks.placement` puts a sampled shape back at a real size).

Masks are 2-D boolean arrays with 1 = anomaly (the region to synthesize) and 0 = normal background. The diffusion
names are imported on first use (PEP 562 ``__getattr__``), so ``import fast_core.masks`` does not load diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

from fast_core.masks.augment import MaskAugmentConfig, augment_mask
from fast_core.masks.filters import REASONS, MaskFilter, MaskFilterConfig, compactness, estimate_foreground
from fast_core.masks.stats import compare_mask_sets, histogram_summary, mask_stats, wasserstein_1d

_DIFFUSION_NAMES = ("MaskDiffusionConfig", "MaskDiffusionModel", "mask_training_step", "sample_masks")

__all__ = [
    "REASONS",
    "MaskAugmentConfig",
    "MaskDiffusionConfig",
    "MaskDiffusionModel",
    "MaskFilter",
    "MaskFilterConfig",
    "augment_mask",
    "compactness",
    "compare_mask_sets",
    "estimate_foreground",
    "histogram_summary",
    "mask_stats",
    "mask_training_step",
    "sample_masks",
    "wasserstein_1d",
]


def __getattr__(name: str) -> Any:
    """Load the mask diffusion names from :mod:`fast_core.masks.diffusion` on first access."""
    if name in _DIFFUSION_NAMES:
        return getattr(importlib.import_module("fast_core.masks.diffusion"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Mask tools for synthesis: seeded geometric augmentation of real masks, automatic filters and mask statistics.

Masks are 2-D boolean arrays with 1 = anomaly (the region to synthesize) and 0 = normal background.
"""

from __future__ import annotations

from fast_core.masks.augment import MaskAugmentConfig, augment_mask
from fast_core.masks.filters import REASONS, MaskFilter, MaskFilterConfig, compactness, estimate_foreground
from fast_core.masks.stats import compare_mask_sets, histogram_summary, mask_stats, wasserstein_1d

__all__ = [
    "REASONS",
    "MaskAugmentConfig",
    "MaskFilter",
    "MaskFilterConfig",
    "augment_mask",
    "compactness",
    "compare_mask_sets",
    "estimate_foreground",
    "histogram_summary",
    "mask_stats",
    "wasserstein_1d",
]

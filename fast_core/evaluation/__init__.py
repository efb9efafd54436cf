"""Evaluation of synthetic anomaly data (FAST_SPEC §8): pixel-level segmentation metrics accumulated over a test set."""

from __future__ import annotations

from fast_core.evaluation.metrics import (
    Confusion,
    SegmentationMetrics,
    binary_auroc,
    binary_average_precision,
)

__all__ = ["Confusion", "SegmentationMetrics", "binary_auroc", "binary_average_precision"]

"""The downstream segmenter of the evaluation protocol (FAST_SPEC §8.3): models, training, inference."""

from __future__ import annotations

from fast_core.segmentation.inference import load_segmenter, predict_proba, save_segmenter, sliding_window_proba
from fast_core.segmentation.models import Arch, Segmenter, build_segmenter, count_parameters
from fast_core.segmentation.training import (
    AugmentConfig,
    BatchSchedule,
    SegTrainConfig,
    augment_batch,
    segmentation_loss,
    train_segmenter,
    train_step,
)

__all__ = [
    "Arch",
    "AugmentConfig",
    "BatchSchedule",
    "SegTrainConfig",
    "Segmenter",
    "augment_batch",
    "build_segmenter",
    "count_parameters",
    "load_segmenter",
    "predict_proba",
    "save_segmenter",
    "segmentation_loss",
    "sliding_window_proba",
    "train_segmenter",
    "train_step",
]

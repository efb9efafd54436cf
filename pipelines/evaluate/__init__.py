"""``fastgen evaluate``: train the downstream segmenter on a training set (synthetic and/or real third) with Ray Train
and test it on the held-out real test set (FAST_SPEC §8)."""

from __future__ import annotations

from pipelines.evaluate.config import EvaluateConfig, ScalingSettings, TrainSource
from pipelines.evaluate.run import run_evaluation

__all__ = ["EvaluateConfig", "ScalingSettings", "TrainSource", "run_evaluation"]

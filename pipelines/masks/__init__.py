"""The mask stage ``fastgen masks``: real training masks → augmented / sampled masks → filters → mask shards."""

from pipelines.masks.config import MasksConfig
from pipelines.masks.run import MasksSummary, run_masks

__all__ = ["MasksConfig", "MasksSummary", "run_masks"]

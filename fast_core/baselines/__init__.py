"""Baseline anomaly generators that FAST is compared against (FAST_SPEC §8.5): CutPaste and DRAEM-style Perlin noise
plus texture.

Every generator has one contract: ``generate(image, rng, ...) -> (image_out, mask)`` with ``image`` an ``np.uint8``
(H, W) or (H, W, C) normal image, ``rng`` a ``np.random.Generator`` (same seed, same bytes), ``image_out`` of the same
shape and dtype, and ``mask`` a non-empty bool (H, W) array (1 = anomaly) outside of which ``image_out`` is
bit-identical to ``image``.
"""

from __future__ import annotations

from fast_core.baselines.cutpaste import CutPaste, CutPasteConfig
from fast_core.baselines.perlin import PerlinAnomaly, PerlinConfig, perlin_noise_2d

__all__ = ["CutPaste", "CutPasteConfig", "PerlinAnomaly", "PerlinConfig", "perlin_noise_2d"]

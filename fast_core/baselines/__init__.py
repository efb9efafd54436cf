"""Baseline anomaly generators that FAST is compared against (FAST_SPEC §8.5): CutPaste, DRAEM-style Perlin noise
plus texture, and real-defect paste.

Every generator has one contract: ``generate(image, rng, ...) -> (image_out, mask)`` with ``image`` an ``np.uint8``
(H, W) or (H, W, C) normal image, ``rng`` a ``np.random.Generator`` (same seed, same bytes), ``image_out`` of the same
shape and dtype, and ``mask`` a non-empty bool (H, W) array (1 = anomaly) outside of which ``image_out`` is
bit-identical to ``image``. The one exception is :class:`RealPaste` with ``feather > 0``: its blend also touches a
band of ``feather`` pixels around the mask (``feather = 0`` keeps the exact contract).
"""

from __future__ import annotations

from fast_core.baselines.cutpaste import CutPaste, CutPasteConfig
from fast_core.baselines.foreground import border_foreground
from fast_core.baselines.perlin import PerlinAnomaly, PerlinConfig, perlin_noise_2d
from fast_core.baselines.realpaste import RealPaste, RealPasteConfig

__all__ = [
    "CutPaste",
    "CutPasteConfig",
    "PerlinAnomaly",
    "PerlinConfig",
    "RealPaste",
    "RealPasteConfig",
    "border_foreground",
    "perlin_noise_2d",
]

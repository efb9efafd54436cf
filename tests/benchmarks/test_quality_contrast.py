"""Ring contrast and grain ratio: what the quality report and the probe gate measure on every pair."""

from __future__ import annotations

import numpy as np

from benchmarks.quality_contrast import Tally, grain_ratio, ring_contrast, signed_contrast


def _noise_with_square(fill: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(120, 12, (96, 96)).clip(0, 255).astype(np.uint8)
    m = np.zeros((96, 96), bool)
    m[30:66, 30:66] = True
    if fill is not None:
        x[m] = fill
    return x, m


def test_ring_contrast_is_the_step_at_the_mask_edge() -> None:
    x = np.zeros((9, 9), np.uint8)
    x[3:6, 3:6] = 200
    assert ring_contrast(x, x > 0, 1) == 200.0
    assert ring_contrast(x, np.zeros_like(x, bool)) is None
    assert signed_contrast(x, x > 0, 1) == 200.0 and signed_contrast(255 - x, x > 0, 1) == -200.0
    tally = Tally()
    tally.add("k", 255 - x, x > 0)
    assert tally.summary()["signed_median_per_defect_type"] == {"k": -200.0}
    assert tally.summary()["median_per_defect_type"] == {"k": 200.0}


def test_grain_ratio_tells_a_smooth_fill_from_a_grainy_defect() -> None:
    x, m = _noise_with_square(None)
    assert 0.85 < grain_ratio(x, m) < 1.15  # the same grain inside and around
    darker = x.astype(np.int16)
    darker[m] -= 50  # a dark defect that keeps the grain: still ≈ 1, though its contrast is 50
    darker = darker.clip(0, 255).astype(np.uint8)
    assert 0.85 < grain_ratio(darker, m) < 1.15 and ring_contrast(darker, m) > 40
    flat, _ = _noise_with_square(70)  # the same darkening as a flat fill
    assert grain_ratio(flat, m) == 0.0
    rgb = np.repeat(x[..., None], 3, axis=2)
    assert grain_ratio(rgb, m) == grain_ratio(x, m)  # colour images are measured on their grey mean
    assert grain_ratio(x, np.zeros_like(m)) is None and grain_ratio(np.full_like(x, 9), m) is None

"""Shape novelty of generated masks: nearest-real IoU up to position, scale, turns and flips; near-copy fractions."""

from __future__ import annotations

import numpy as np
import pytest

from fast_core.masks.shapes import nearest_real_iou, normalised_shape, real_near_copy_fraction
from fast_core.masks.stats import compare_mask_sets


def _disc(size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _l_shape(size: int, top: int, left: int, scale: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[top : top + 6 * scale, left : left + 2 * scale] = True  # the stem
    m[top + 4 * scale : top + 6 * scale, left : left + 5 * scale] = True  # the foot
    return m


def test_moved_scaled_turned_copies_are_near_copies_and_other_shapes_are_not() -> None:
    real = [_l_shape(64, 5, 5, 3), _disc(64, 30, 30, 12)]
    copy = np.rot90(np.fliplr(_l_shape(200, 40, 90, 9)), 1)  # the L, 3× larger, mirrored, turned, elsewhere
    bar = np.zeros((100, 100), bool)
    bar[40:44, 10:90] = True
    iou = nearest_real_iou([copy, bar, np.zeros((8, 8), bool)], real)
    assert iou[0] > 0.9 and iou[1] < 0.5 and iou[2] == 0.0
    with pytest.raises(ValueError, match="non-empty real mask"):
        nearest_real_iou([copy], [np.zeros((4, 4), bool)])


def test_thin_defects_keep_their_shape_at_any_size() -> None:
    line = np.zeros((400, 400), bool)
    line[200, 20:380] = True  # one pixel thick, 360 long
    shape = normalised_shape(line)
    assert shape.sum() == 32 and shape.any(axis=1).sum() == 1
    dot = np.zeros((9, 9), bool)
    dot[4, 4] = True
    assert normalised_shape(dot).all()  # a one-pixel defect fills its box


def test_compare_mask_sets_reports_near_copies_against_the_real_floor() -> None:
    real = [_l_shape(64, 5, 5, 3), _disc(64, 30, 30, 12), _disc(64, 20, 40, 6)]
    copies = compare_mask_sets([np.fliplr(m) for m in real], real)["shape"]
    assert copies["near_copy_fraction"] == 1.0
    bars = []
    for w in (3, 5, 7):
        b = np.zeros((64, 64), bool)
        b[30 : 30 + w, 4:60] = True
        bars.append(b)
    novel = compare_mask_sets(bars, real)["shape"]
    assert novel["near_copy_fraction"] == 0.0 and novel["nearest_real_iou"]["n"] == 3
    # the two discs are near-copies of each other, the L is not: the floor to read a generator's fraction against
    assert novel["real_near_copy_fraction"] == pytest.approx(2 / 3)
    assert real_near_copy_fraction(real[:1]) is None
    assert compare_mask_sets(bars, real)["stats"]["compactness"]["wasserstein"] > 0

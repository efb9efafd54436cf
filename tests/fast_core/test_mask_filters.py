"""Tests for fast_core.masks.filters and fast_core.masks.stats: one test per rejection reason, near duplicates,
foreground estimation, shape measures, Wasserstein distance and the stats.json summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fast_core.configbase import from_dict, to_dict
from fast_core.masks.filters import (
    ACCEPTED,
    REASONS,
    MaskFilter,
    MaskFilterConfig,
    compactness,
    estimate_foreground,
    otsu_threshold,
    perimeter,
)
from fast_core.masks.stats import compare_mask_sets, histogram_summary, mask_stats, wasserstein_1d

H = W = 128


def _square(r0: int, c0: int, size: int = 30) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[r0 : r0 + size, c0 : c0 + size] = True
    return m


def _disc(cy: float, cx: float, r: float, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


GOOD = _square(40, 50)


# -- one test per reason ------------------------------------------------------------------------------------------


def test_good_mask_is_accepted_and_counted() -> None:
    f = MaskFilter(MaskFilterConfig(border_contact="reject", min_compactness=0.5), foreground=_disc(64, 64, 60))
    assert f.check(GOOD) == (True, None)
    assert f.counts[ACCEPTED] == 1 and sum(f.counts[r] for r in REASONS) == 0
    assert f.num_accepted == 1


def test_empty() -> None:
    assert MaskFilter().check(np.zeros((H, W), bool)) == (False, "empty")


def test_area_too_small() -> None:
    m = _square(40, 40, size=3)  # 9 px = 0.00055 of the image
    assert MaskFilter(MaskFilterConfig(min_area_fraction=0.001)).check(m) == (False, "area_too_small")
    assert MaskFilter(MaskFilterConfig(min_area_fraction=0.0005, min_component_px=1)).check(m) == (True, None)


def test_area_too_large() -> None:
    m = _square(0, 0, size=100)  # 0.61 of the image
    assert MaskFilter(MaskFilterConfig(max_area_fraction=0.5)).check(m) == (False, "area_too_large")
    assert MaskFilter(MaskFilterConfig(max_area_fraction=0.7)).check(m) == (True, None)


def test_too_many_components() -> None:
    m = np.zeros((H, W), bool)
    for k in range(4):
        m[10 + 25 * k : 20 + 25 * k, 10:20] = True
    assert MaskFilter(MaskFilterConfig(max_components=3)).check(m) == (False, "too_many_components")
    assert MaskFilter(MaskFilterConfig(max_components=4)).check(m) == (True, None)


def test_diagonal_pixels_are_one_component() -> None:
    m = GOOD.copy()
    m[70, 80] = True  # touches the square's corner (69, 79) diagonally: same 8-connected component
    assert MaskFilter(MaskFilterConfig(max_components=1, min_component_px=5)).check(m) == (True, None)


def test_component_too_small() -> None:
    m = GOOD.copy()
    m[100:102, 100:102] = True  # a 4 px speck
    assert MaskFilter(MaskFilterConfig(min_component_px=5)).check(m) == (False, "component_too_small")
    assert MaskFilter(MaskFilterConfig(min_component_px=4)).check(m) == (True, None)


def test_touches_border() -> None:
    m = _square(0, 50)
    assert MaskFilter(MaskFilterConfig(border_contact="reject")).check(m) == (False, "touches_border")
    assert MaskFilter(MaskFilterConfig(border_contact="allow")).check(m) == (True, None)
    assert MaskFilter(MaskFilterConfig(border_contact="reject")).check(_square(1, 50)) == (True, None)


def test_not_compact() -> None:
    line = np.zeros((H, W), bool)
    line[60:62, 10:110] = True  # a 2 x 100 scratch: compactness ≈ 0.06
    assert MaskFilter(MaskFilterConfig(min_compactness=0.2)).check(line) == (False, "not_compact")
    assert MaskFilter(MaskFilterConfig(min_compactness=0.05)).check(line) == (True, None)


def test_compactness_uses_the_largest_component() -> None:
    m = _disc(40, 40, 15)
    m[100:102, 20:60] = True  # a thin second component does not count
    assert MaskFilter(MaskFilterConfig(min_compactness=0.8)).check(m) == (True, None)


def test_outside_foreground() -> None:
    fg = np.zeros((H, W), bool)
    fg[:, :64] = True  # object = left half
    inside, straddling = _square(40, 10), _square(40, 50)  # the second has 14/30 of its columns inside
    f = MaskFilter(MaskFilterConfig(min_inside_fraction=0.9), foreground=fg)
    assert f.check(straddling) == (False, "outside_foreground")
    assert f.check(inside) == (True, None)
    # a per-call foreground overrides the constructor's
    assert f.check(_square(40, 90), foreground=~fg) == (True, None)


def test_near_duplicate_identical_and_shifted_rejected_different_accepted() -> None:
    f = MaskFilter(MaskFilterConfig(dedup_iou=0.85))
    assert f.check(GOOD) == (True, None)
    assert f.check(GOOD) == (False, "near_duplicate")
    assert f.check(np.roll(GOOD, 1, axis=1)) == (False, "near_duplicate")  # pixel IoU 870/930 = 0.935
    assert f.check(np.roll(GOOD, 1, axis=0)) == (False, "near_duplicate")
    assert f.check(_square(80, 80)) == (True, None)  # elsewhere
    assert f.check(_disc(55, 65, 17)) == (True, None)  # same place, different shape: IoU ≈ 0.73
    assert f.counts["near_duplicate"] == 3 and f.counts[ACCEPTED] == 3


def test_near_duplicate_disabled_and_reset() -> None:
    f = MaskFilter(MaskFilterConfig(dedup_iou=1.0))
    assert f.check(GOOD) == (True, None) and f.check(GOOD) == (True, None)
    f.reset()
    assert f.num_accepted == 0 and f.counts[ACCEPTED] == 0


def test_reasons_are_checked_in_fixed_order() -> None:
    m = np.zeros((H, W), bool)
    m[0, :] = True  # a 1 x 128 line on the border: touches the border and is not compact
    m[50, 50] = True  # plus a 1 px speck: a component that is too small
    f = MaskFilter(MaskFilterConfig(border_contact="reject", min_compactness=0.5, min_component_px=2))
    assert f.check(m) == (False, "component_too_small")  # the earliest failing check wins
    assert REASONS.index("component_too_small") < REASONS.index("touches_border") < REASONS.index("not_compact")


def test_shape_mismatch_raises() -> None:
    f = MaskFilter()
    f.check(GOOD)
    with pytest.raises(ValueError, match="differs from earlier masks"):
        f.check(np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="foreground shape"):
        MaskFilter(foreground=np.ones((64, 64), bool)).check(GOOD)
    with pytest.raises(ValueError, match="'allow', 'reject'"):
        MaskFilterConfig(border_contact="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_area_fraction"):
        MaskFilterConfig(min_area_fraction=0.6, max_area_fraction=0.5)


def test_filter_config_round_trips_through_dict() -> None:
    cfg = MaskFilterConfig(border_contact="reject", dedup_iou=0.7)
    assert from_dict(MaskFilterConfig, to_dict(cfg)) == cfg


# -- shape measures and foreground ---------------------------------------------------------------------------------


def test_perimeter_and_compactness_of_known_shapes() -> None:
    assert perimeter(_square(10, 10, size=20)) == 76.0  # inner boundary of a 20 x 20 square: 4 x 19
    r = 30
    # chain-code length: overestimates a circle by a few per cent, far less than an edge count (8r = 240)
    assert 1.0 < perimeter(_disc(64, 64, r)) / (2 * math.pi * (r - 0.5)) < 1.08
    assert 0.85 < compactness(_disc(64, 64, r)) < 1.0
    line = np.zeros((H, W), bool)
    line[60:62, 10:110] = True
    assert compactness(line) == pytest.approx(4 * math.pi * 200 / 200**2)  # all 200 px are boundary, P = 200
    assert compactness(_square(10, 10, size=20)) == pytest.approx(4 * math.pi * 400 / 76**2)


def test_estimate_foreground_recovers_a_bright_disc() -> None:
    rng = np.random.default_rng(0)
    truth = _disc(60, 70, 35)
    images = []
    for _ in range(4):
        img = np.where(truth, 200.0, 25.0) + rng.normal(0.0, 12.0, size=(H, W))
        images.append(np.repeat(img[..., None], 3, axis=-1).clip(0, 255).astype(np.uint8))  # RGB uint8
    est = estimate_foreground(images)
    iou = (est & truth).sum() / (est | truth).sum()
    assert est.dtype == np.bool_ and est.shape == (H, W)
    assert iou > 0.9


def test_estimate_foreground_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        estimate_foreground([])
    with pytest.raises(ValueError, match="shape"):
        estimate_foreground([np.zeros((8, 8)), np.zeros((9, 8))])
    with pytest.raises(ValueError, match="no contrast"):
        estimate_foreground([np.full((16, 16), 7.0)])


def test_otsu_threshold_splits_two_modes() -> None:
    v = np.concatenate([np.full(100, 10.0), np.full(50, 90.0)])
    t = otsu_threshold(v)
    assert 10.0 < t < 90.0 and (v > t).sum() == 50


# -- statistics ----------------------------------------------------------------------------------------------------


def test_wasserstein_identical_is_zero_and_shift_equals_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert wasserstein_1d(a, a) == 0.0
    assert wasserstein_1d(a, rng.permutation(a)) == 0.0
    assert wasserstein_1d(a, a + 0.37) == pytest.approx(0.37, abs=1e-12)
    # unequal sizes: {0} vs {0, 1} differ by half the mass moved by 1
    assert wasserstein_1d(np.array([0.0]), np.array([0.0, 1.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d(np.array([math.nan]), a)


def test_mask_stats_values() -> None:
    m = np.zeros((20, 40), bool)
    m[2:6, 4:20] = True  # 4 x 16 box
    m[10:12, 30:32] = True  # second component; overall box rows 2..11, cols 4..31
    s = mask_stats(m)
    assert s["area_fraction"] == pytest.approx((64 + 4) / 800)
    assert s["num_components"] == 2.0
    assert s["bbox_aspect"] == pytest.approx(28 / 10)
    assert math.isnan(mask_stats(np.zeros((4, 4), bool))["bbox_aspect"])


def test_compare_mask_sets_is_json_ready_and_measures_the_gap() -> None:
    real = [_square(10, 10, size=s) for s in (10, 12, 14)]
    same = compare_mask_sets(real, real, bins=5)
    bigger = compare_mask_sets([_square(10, 10, size=s + 10) for s in (10, 12, 14)], real, bins=5)
    json.dumps(same, allow_nan=False)  # no NaN sneaks into stats.json
    assert same["n_generated"] == 3 and same["n_real"] == 3
    assert same["stats"]["area_fraction"]["wasserstein"] == 0.0
    expected = np.mean([((s + 10) ** 2 - s**2) / (H * W) for s in (10, 12, 14)])
    assert bigger["stats"]["area_fraction"]["wasserstein"] == pytest.approx(expected)
    gen, ref = bigger["stats"]["area_fraction"]["generated"], bigger["stats"]["area_fraction"]["real"]
    assert gen["edges"] == ref["edges"] and sum(gen["counts"]) == 3 and sum(ref["counts"]) == 3
    empty = compare_mask_sets([np.zeros((8, 8), bool)], [np.ones((8, 8), bool)])
    assert empty["stats"]["bbox_aspect"]["wasserstein"] is None
    json.dumps(empty, allow_nan=False)


def test_histogram_summary_quantiles_and_counts() -> None:
    s = histogram_summary(np.arange(101, dtype=float), edges=np.array([0.0, 50.0, 100.0]))
    assert s["n"] == 101 and s["counts"] == [50, 51]
    assert s["quantiles"]["p50"] == 50.0 and s["quantiles"]["p05"] == 5.0
    assert s["min"] == 0.0 and s["max"] == 100.0

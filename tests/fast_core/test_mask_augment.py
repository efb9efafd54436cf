"""Tests for fast_core.masks.augment: determinism, binary output, exact identity, flips, morphology, placement."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fast_core.configbase import from_dict, to_dict
from fast_core.masks.augment import MaskAugmentConfig, augment_mask

# Every random step switched off: the augmentation must be the identity.
IDENTITY = dict(
    rotation_deg=0.0,
    scale_range=(1.0, 1.0),
    shear_deg=0.0,
    hflip_prob=0.0,
    vflip_prob=0.0,
    elastic_alpha=0.0,
    open_prob=0.0,
    close_prob=0.0,
    dilate_prob=0.0,
    erode_prob=0.0,
    random_placement=False,
)


def _blob(h: int = 64, w: int = 64) -> np.ndarray:
    """An L-shaped mask off-centre (asymmetric, so flips and rotations are visible)."""
    m = np.zeros((h, w), dtype=bool)
    m[10:30, 12:20] = True
    m[24:30, 12:34] = True
    return m


def _box(m: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def test_same_seed_same_mask_and_different_seed_differs() -> None:
    m = _blob()
    a = augment_mask(m, np.random.default_rng(7))
    b = augment_mask(m, np.random.default_rng(7))
    c = augment_mask(m, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_output_is_binary_with_requested_shape(interpolation: str) -> None:
    m = _blob(50, 70)
    cfg = MaskAugmentConfig(interpolation=interpolation)
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = augment_mask(m, rng, cfg)
        assert out.dtype == np.bool_ and out.shape == (50, 70)
        assert out.any()
    out = augment_mask(m, rng, cfg, out_shape=(32, 40))
    assert out.dtype == np.bool_ and out.shape == (32, 40)


def test_identity_config_returns_the_input() -> None:
    m = _blob()
    out = augment_mask(m, np.random.default_rng(0), MaskAugmentConfig(**IDENTITY))
    assert np.array_equal(out, m)


def test_horizontal_and_vertical_flip_mirror_about_the_image_centre() -> None:
    m = _blob()
    h = augment_mask(m, np.random.default_rng(0), MaskAugmentConfig(**{**IDENTITY, "hflip_prob": 1.0}))
    v = augment_mask(m, np.random.default_rng(0), MaskAugmentConfig(**{**IDENTITY, "vflip_prob": 1.0}))
    assert np.array_equal(h, m[:, ::-1])
    assert np.array_equal(v, m[::-1, :])


def test_scale_multiplies_area_and_keeps_the_centroid() -> None:
    m = np.zeros((96, 96), dtype=bool)
    m[40:60, 30:50] = True  # 20 x 20 square, centroid (49.5, 39.5)
    out = augment_mask(m, np.random.default_rng(0), MaskAugmentConfig(**{**IDENTITY, "scale_range": (1.5, 1.5)}))
    assert out.sum() == pytest.approx(400 * 1.5**2, rel=0.1)
    rows, cols = np.nonzero(out)
    assert rows.mean() == pytest.approx(49.5, abs=0.6)
    assert cols.mean() == pytest.approx(39.5, abs=0.6)


def test_rotation_by_90_degrees_transposes_a_rectangle() -> None:
    m = np.zeros((80, 80), dtype=bool)
    m[30:50, 20:60] = True  # 20 rows x 40 cols
    cfg = MaskAugmentConfig(**{**IDENTITY, "rotation_deg": 90.0})
    # find a seed whose drawn angle is near ±90°: then the box becomes 40 rows x 20 cols
    for seed in range(200):
        draw = np.random.default_rng(seed).uniform(-90.0, 90.0)
        if abs(abs(draw) - 90.0) < 0.5:
            break
    else:
        pytest.fail("no seed drew a near-90 degree angle")
    r0, r1, c0, c1 = _box(augment_mask(m, np.random.default_rng(seed), cfg))
    assert abs((r1 - r0) - 40) <= 1 and abs((c1 - c0) - 20) <= 1


def test_out_shape_rescales_in_normalised_coordinates() -> None:
    m = _blob(64, 64)
    out = augment_mask(m, np.random.default_rng(0), MaskAugmentConfig(**IDENTITY), out_shape=(128, 128))
    assert out.sum() == pytest.approx(4 * m.sum(), rel=0.05)
    r0, r1, c0, c1 = _box(out)
    assert (abs(r0 - 20) <= 1, abs(r1 - 60) <= 1, abs(c0 - 24) <= 1, abs(c1 - 68) <= 1) == (True,) * 4


def test_random_placement_only_translates_and_respects_margin() -> None:
    m = _blob()
    base = MaskAugmentConfig(random_placement=False)
    placed_cfg = MaskAugmentConfig(random_placement=True, placement_margin=5)
    moved = 0
    for seed in range(20):
        fixed = augment_mask(m, np.random.default_rng(seed), base)
        placed = augment_mask(m, np.random.default_rng(seed), placed_cfg)
        fr0, fr1, fc0, fc1 = _box(fixed)
        pr0, pr1, pc0, pc1 = _box(placed)
        assert np.array_equal(fixed[fr0:fr1, fc0:fc1], placed[pr0:pr1, pc0:pc1])
        assert pr0 >= 5 and pc0 >= 5 and pr1 <= 64 - 5 and pc1 <= 64 - 5
        moved += (pr0, pc0) != (fr0, fc0)
    assert moved >= 15


def test_dilation_grows_and_erosion_shrinks() -> None:
    m = np.zeros((64, 64), dtype=bool)
    m[20:40, 20:40] = True
    grow = MaskAugmentConfig(**{**IDENTITY, "dilate_prob": 1.0, "morph_radius": (2, 2)})
    shrink = MaskAugmentConfig(**{**IDENTITY, "erode_prob": 1.0, "morph_radius": (2, 2)})
    # square ⊕ disc(2): 400 + 4 sides x 20 x 2 + 1 diagonal pixel per corner
    assert int(augment_mask(m, np.random.default_rng(0), grow).sum()) == 400 + 160 + 4
    expected = np.zeros_like(m)
    expected[22:38, 22:38] = True
    assert np.array_equal(augment_mask(m, np.random.default_rng(0), shrink), expected)


def test_closing_keeps_a_mask_touching_the_border() -> None:
    m = np.zeros((32, 32), dtype=bool)
    m[0:10, 0:10] = True
    cfg = MaskAugmentConfig(**{**IDENTITY, "close_prob": 1.0, "morph_radius": (3, 3)})
    assert np.array_equal(augment_mask(m, np.random.default_rng(0), cfg), m)


def test_all_empty_tries_return_empty_mask_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    m = np.zeros((32, 32), dtype=bool)
    m[16, 4:28] = True  # a 1-px line: any erosion removes it
    cfg = MaskAugmentConfig(**{**IDENTITY, "erode_prob": 1.0, "morph_radius": (1, 1), "max_tries": 3})
    with caplog.at_level(logging.WARNING, logger="fast_core.masks.augment"):
        out = augment_mask(m, np.random.default_rng(0), cfg)
    assert out.shape == (32, 32) and not out.any()
    assert "3 tries" in caplog.text


def test_bad_inputs_and_configs_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        augment_mask(np.zeros((8, 8), bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="2-D"):
        augment_mask(np.ones((2, 8, 8), bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="hflip_prob"):
        MaskAugmentConfig(hflip_prob=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        MaskAugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="'bilinear', 'nearest'"):
        MaskAugmentConfig(interpolation="cubic")  # type: ignore[arg-type]


def test_config_round_trips_through_dict() -> None:
    cfg = MaskAugmentConfig(rotation_deg=12.0, morph_radius=(2, 4), placement_margin=3)
    assert from_dict(MaskAugmentConfig, to_dict(cfg)) == cfg

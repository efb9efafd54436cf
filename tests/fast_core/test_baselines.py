"""Tests of fast_core.baselines: CutPaste (patch, scar) and DRAEM-style Perlin generators share one exact contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fast_core.baselines import CutPaste, CutPasteConfig, PerlinAnomaly, PerlinConfig, perlin_noise_2d
from fast_core.baselines.cutpaste import color_jitter, hsv_to_rgb, rgb_to_hsv, rotate_patch


def _noise_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _generate(kind: str, image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "perlin":
        return PerlinAnomaly().generate(image, rng, texture=_noise_image((40, 50, 3), seed=99))
    return CutPaste(CutPasteConfig(mode=kind)).generate(image, rng)


KINDS = ["patch", "scar", "perlin"]
SHAPES = [(64, 80), (64, 80, 1), (64, 80, 3)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_contract_shape_dtype_exact_mask(kind: str, shape: tuple[int, ...]) -> None:
    image = _noise_image(shape)
    original = image.copy()
    for seed in range(4):
        out, mask = _generate(kind, image, seed)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == shape[:2] and mask.dtype == np.bool_
        assert mask.any()
        np.testing.assert_array_equal(out[~mask], image[~mask])  # bit-identical outside the mask
        changed = (out != image).reshape(*shape[:2], -1).any(axis=-1)
        assert not (changed & ~mask).any()
        assert changed[mask].mean() > 0.5  # on a noise image the pasted/blended region really differs
        np.testing.assert_array_equal(image, original)  # input untouched


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes(kind: str) -> None:
    image = _noise_image((48, 48, 3))
    out1, mask1 = _generate(kind, image, 7)
    out2, mask2 = _generate(kind, image, 7)
    assert out1.tobytes() == out2.tobytes() and mask1.tobytes() == mask2.tobytes()
    out3, mask3 = _generate(kind, image, 8)
    assert out3.tobytes() != out1.tobytes() or mask3.tobytes() != mask1.tobytes()


def test_patch_area_within_bounds_square() -> None:
    height, width = 64, 80
    cfg = CutPasteConfig(area_ratio=(0.05, 0.1), aspect_ratio=(1.0, 1.0))
    side_lo, side_hi = round(math.sqrt(0.05 * height * width)), round(math.sqrt(0.1 * height * width))
    for seed in range(20):
        _, mask = CutPaste(cfg).generate(_noise_image((height, width)), np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert h == w and mask.sum() == h * w  # an unrotated filled square
        assert side_lo <= h <= side_hi


def test_patch_area_and_aspect_within_bounds() -> None:
    cfg = CutPasteConfig(area_ratio=(0.02, 0.15), aspect_ratio=(0.3, 1 / 0.3))
    areas = []
    for seed in range(30):
        _, mask = CutPaste(cfg).generate(_noise_image((128, 128)), np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        ratio = mask.sum() / 128**2
        areas.append(ratio)
        assert 0.02 * 0.8 <= ratio <= 0.15 * 1.2  # rounding of each side to whole pixels
        assert 0.3 * 0.8 <= w / h <= 1.2 / 0.3
    assert max(areas) - min(areas) > 0.03  # the area really varies


def test_scar_size_and_rotation() -> None:
    cfg = CutPasteConfig(mode="scar", scar_width=(2, 4), scar_length=(20, 25), scar_rotation=(30.0, 60.0))
    for seed in range(10):
        _, mask = CutPaste(cfg).generate(_noise_image((64, 64)), np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert 0.7 * 2 * 20 <= mask.sum() <= 1.3 * 4 * 25
        assert h > 4 and w > 4  # rotated by 30..60 degrees: neither side stays thin
        assert mask.sum() < 0.6 * h * w  # a thin diagonal footprint, not a filled box


def test_rotate_patch_quarter_turn_and_identity() -> None:
    patch = np.arange(10, dtype=np.uint8).reshape(2, 5)
    rotated, footprint = rotate_patch(patch, 90.0)
    assert footprint.shape == (5, 2) and footprint.all()
    np.testing.assert_array_equal(rotated, np.rot90(patch))  # counter-clockwise on screen
    same, full = rotate_patch(patch, 0.0)
    np.testing.assert_array_equal(same, patch)
    assert full.all()


def test_cutpaste_cuts_from_source() -> None:
    image = _noise_image((32, 32, 3))
    source = np.full((20, 24, 3), 7, dtype=np.uint8)
    cfg = CutPasteConfig(color_jitter=0.0)
    out, mask = CutPaste(cfg).generate(image, np.random.default_rng(0), source=source)
    assert (out[mask] == 7).all()
    with pytest.raises(ValueError, match="channel layout"):
        CutPaste(cfg).generate(image, np.random.default_rng(0), source=source[..., 0])


def test_cutpaste_errors() -> None:
    with pytest.raises(ValueError, match="no patch fits"):
        CutPaste(CutPasteConfig(mode="scar", max_tries=5)).generate(_noise_image((8, 8)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        CutPaste().generate(np.zeros((16, 16), dtype=np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="'patch', 'scar'"):
        CutPasteConfig(mode="stripe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="area_ratio"):
        CutPasteConfig(area_ratio=(0.2, 0.1))


def test_color_jitter_and_hsv_round_trip() -> None:
    rgb = np.random.default_rng(0).random((16, 16, 3))
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-12)
    # pure red is hue 0, pure blue hue 2/3
    np.testing.assert_allclose(rgb_to_hsv(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))[:, 0], [0.0, 2 / 3])
    patch = _noise_image((8, 8, 3))
    np.testing.assert_array_equal(color_jitter(patch, 0.0, np.random.default_rng(0)), patch)
    jittered = color_jitter(patch, 0.1, np.random.default_rng(0))
    assert jittered.dtype == np.uint8 and not np.array_equal(jittered, patch)
    assert np.abs(jittered.astype(int) - patch.astype(int)).mean() < 40  # mild change


def test_perlin_noise_properties() -> None:
    noise = perlin_noise_2d((8, 8), (2, 2), np.random.default_rng(0))
    assert noise.shape == (8, 8) and noise.dtype == np.float64
    np.testing.assert_allclose(noise[::4, ::4], 0.0, atol=1e-12)  # gradient noise vanishes on lattice points
    big = perlin_noise_2d((96, 128), (4, 8), np.random.default_rng(1), angle_deg=30.0)
    assert np.abs(big).max() <= 1.0 and big.std() > 0.1
    assert np.abs(np.diff(big, axis=1)).max() < 0.3  # smooth between neighbouring pixels
    again = perlin_noise_2d((96, 128), (4, 8), np.random.default_rng(1), angle_deg=30.0)
    assert again.tobytes() == big.tobytes()


def test_perlin_blend_formula_and_gray_texture_conversion() -> None:
    image = _noise_image((32, 40))
    texture = _noise_image((16, 20, 3), seed=5)
    cfg = PerlinConfig(opacity=(0.25, 0.25), texture_augmentations=0)
    out, mask = PerlinAnomaly(cfg).generate(image, np.random.default_rng(2), texture=texture)
    resized = np.asarray(Image.fromarray(texture).resize((40, 32), resample=Image.Resampling.BILINEAR))
    luma = resized.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = np.rint(0.75 * image + 0.25 * luma).astype(np.uint8)
    np.testing.assert_array_equal(out[mask], expected[mask])


def test_perlin_area_bounds_foreground_and_failure() -> None:
    fg = np.zeros((48, 48), dtype=bool)
    fg[10:40, 5:30] = True
    gen = PerlinAnomaly(PerlinConfig(area_ratio=(0.02, 0.2)))
    for seed in range(5):
        mask = gen.sample_mask((48, 48), np.random.default_rng(seed), foreground=fg)
        assert not (mask & ~fg).any()
        assert 0.02 <= mask.mean() <= 0.2
    with pytest.raises(RuntimeError, match="no non-empty mask"):
        PerlinAnomaly(PerlinConfig(threshold=1.4, max_tries=3)).sample_mask((16, 16), np.random.default_rng(0))
    with pytest.raises(ValueError, match="texture_augmentations"):
        PerlinConfig(texture_augmentations=99)

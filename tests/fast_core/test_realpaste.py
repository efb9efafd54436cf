"""Tests of fast_core.baselines.realpaste (real-defect paste) and its foreground estimate."""

from __future__ import annotations

import numpy as np
import pytest

from fast_core.baselines import RealPaste, RealPasteConfig, border_foreground
from fast_core.baselines.foreground import dilate, erode, fill_holes
from fast_core.baselines.realpaste import feather_alpha, paste_in_place


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _l_mask(shape: tuple[int, int], y: int = 10, x: int = 12) -> np.ndarray:
    """An L-shaped mask (no flip or quarter turn maps it onto itself)."""
    mask = np.zeros(shape, dtype=bool)
    mask[y : y + 12, x : x + 4] = True
    mask[y + 8 : y + 12, x : x + 9] = True
    return mask


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _paste(image: np.ndarray, defect: np.ndarray, mask: np.ndarray, seed: int, **cfg: object):
    return RealPaste(RealPasteConfig(**cfg)).generate(  # type: ignore[arg-type]
        image, np.random.default_rng(seed), defect=defect, defect_mask=mask
    )


@pytest.mark.parametrize("shape", [(64, 80), (64, 80, 1), (64, 80, 3)])
@pytest.mark.parametrize("feather", [0, 2])
def test_contract_shape_dtype_and_feather_band(shape: tuple[int, ...], feather: int) -> None:
    image, defect, src_mask = _noise(shape, 0), _noise(shape, 1), _l_mask(shape[:2])
    original = image.copy()
    for seed in range(6):
        out, mask = _paste(image, defect, src_mask, seed, feather=feather)
        assert out.shape == image.shape and out.dtype == np.uint8  # grey stays grey, RGB stays RGB
        assert mask.shape == shape[:2] and mask.dtype == np.bool_
        assert mask.sum() == src_mask.sum()  # the whole defect is placed, none cropped
        changed = (out != image).reshape(*shape[:2], -1).any(axis=-1)
        assert not (changed & ~dilate(mask, feather)).any()  # outside the feather band: bit-identical
        np.testing.assert_array_equal(out[~dilate(mask, feather)], image[~dilate(mask, feather)])
        assert changed[mask].mean() > 0.5  # on noise the pasted defect really differs
        if feather:
            assert changed[dilate(mask, feather) & ~mask].any()  # the band is blended
        np.testing.assert_array_equal(image, original)


def test_label_is_exactly_where_pixels_changed() -> None:
    """Defect pixels 250 on a defect image whose background equals the normal image: only the defect changes."""
    image = np.full((48, 48, 3), 50, np.uint8)
    defect = np.full((48, 48, 3), 50, np.uint8)
    src_mask = _l_mask((48, 48))
    defect[src_mask] = 250
    for seed in range(5):
        for feather in (0, 3):
            out, mask = _paste(image, defect, src_mask, seed, feather=feather)
            changed = (out != image).any(axis=-1)
            np.testing.assert_array_equal(changed, mask)
            assert (out[mask] == 250).all()


def test_intensity_match_shifts_by_ring_mean_difference() -> None:
    """δ = mean(target ring) − mean(source ring) = 100 − 40: the defect (10) lands at 70, its context at 100."""
    image = np.full((40, 40), 100, np.uint8)
    defect = np.full((40, 40), 40, np.uint8)
    src_mask = _l_mask((40, 40))
    defect[src_mask] = 10
    out, mask = _paste(image, defect, src_mask, 3)
    assert (out[mask] == 70).all()
    np.testing.assert_array_equal(out != image, mask)  # the shifted context equals the new surroundings
    out, mask = _paste(image, defect, src_mask, 3, intensity_match=False)
    assert (out[mask] == 10).all()
    band = dilate(mask, 2) & ~mask
    assert (out[band] < 100).any()  # unmatched context darkens the feather band


def test_same_seed_same_bytes() -> None:
    image, defect, src_mask = _noise((48, 48, 3), 0), _noise((48, 48, 3), 1), _l_mask((48, 48))
    out1, mask1 = _paste(image, defect, src_mask, 7)
    out2, mask2 = _paste(image, defect, src_mask, 7)
    assert out1.tobytes() == out2.tobytes() and mask1.tobytes() == mask2.tobytes()
    others = [_paste(image, defect, src_mask, s) for s in range(8, 12)]
    assert any(o.tobytes() != out1.tobytes() or m.tobytes() != mask1.tobytes() for o, m in others)


def test_flips_and_quarter_turns() -> None:
    image, defect, src_mask = _noise((64, 64), 0), _noise((64, 64), 1), _l_mask((64, 64))
    crop = _crop(src_mask)
    dihedral = [np.rot90(c, k) for c in (crop, crop[:, ::-1]) for k in range(4)]
    shapes = set()
    for seed in range(40):
        _, mask = _paste(image, defect, src_mask, seed)
        placed = _crop(mask)
        assert any(placed.shape == d.shape and (placed == d).all() for d in dihedral)
        shapes.add(placed.tobytes() + bytes(placed.shape))
    assert len(shapes) >= 5  # of the 8 orientations of an L, most are drawn
    for seed in range(5):
        _, mask = _paste(image, defect, src_mask, seed, flip_h=0.0, flip_v=0.0, rotate90=False)
        np.testing.assert_array_equal(_crop(mask), crop)


def test_quarter_turn_skipped_when_it_does_not_fit() -> None:
    image, defect = _noise((40, 80), 0), _noise((40, 80), 1)
    src_mask = np.zeros((40, 80), bool)
    src_mask[5:15, 10:60] = True  # 10×50: turned it would be 50 high, more than 40
    for seed in range(10):
        _, mask = _paste(image, defect, src_mask, seed)
        assert _crop(mask).shape == (10, 50)


def test_placement_inside_foreground_of_dark_bordered_image() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((96, 96, 3), np.uint8)
    image[32:80, 24:72] = rng.integers(170, 190, size=(48, 48, 3), dtype=np.uint8)
    obj = np.zeros((96, 96), bool)
    obj[32:80, 24:72] = True
    np.testing.assert_array_equal(border_foreground(image), obj)
    defect = _noise((96, 96, 3), 1)
    src_mask = np.zeros((96, 96), bool)
    src_mask[5:13, 70:78] = True  # at the corner of the defect image, far from where the object is
    for seed in range(20):
        _, mask = _paste(image, defect, src_mask, seed)
        assert obj[mask].mean() >= 0.95
    # a foreground smaller than min_foreground falls back to the whole image
    assert border_foreground(image, min_fraction=0.5).all()
    _, mask = _paste(image, defect, src_mask, 0, min_foreground=0.5, max_tries=1)
    assert mask.sum() == 64


def test_placement_falls_back_to_best_position() -> None:
    """A foreground too small for the defect: still placed (fully inside the image), as far inside as drawn."""
    image = np.zeros((64, 64), np.uint8)
    image[20:44, 20:44] = 200  # 24×24 object, 14% of the image
    defect, src_mask = _noise((64, 64), 1), np.zeros((64, 64), bool)
    src_mask[0:30, 0:30] = True  # larger than the object
    for seed in range(5):
        _, mask = _paste(image, defect, src_mask, seed, rotate90=False)
        assert mask.sum() == 900 and mask[20:44, 20:44].sum() >= 0.4 * 900  # the best of 50 draws (at most 0.64)


def test_errors() -> None:
    image, defect = _noise((32, 32, 3)), _noise((32, 32, 3), 1)
    with pytest.raises(ValueError, match="empty"):
        _paste(image, defect, np.zeros((32, 32), bool), 0)
    with pytest.raises(ValueError, match="does not match"):
        _paste(image, defect, np.ones((16, 32), bool), 0)
    with pytest.raises(ValueError, match="channel layout"):
        _paste(image, defect[..., 0], np.ones((32, 32), bool), 0)
    big, big_mask = _noise((64, 64, 3)), np.zeros((64, 64), bool)
    big_mask[2:60, 4:40] = True
    with pytest.raises(ValueError, match="bigger than the 32x32 image"):
        _paste(image, big, big_mask, 0)
    with pytest.raises(ValueError, match="uint8"):
        _paste(image.astype(np.float32), defect, np.ones((32, 32), bool), 0)
    with pytest.raises(ValueError, match="flip_h"):
        RealPasteConfig(flip_h=1.5)
    with pytest.raises(ValueError, match="feather"):
        RealPasteConfig(feather=-1)
    with pytest.raises(ValueError, match="max_tries"):
        RealPasteConfig(max_tries=0)


def test_feather_alpha_and_morphology() -> None:
    mask = np.zeros((20, 20), bool)
    mask[8:12, 8:12] = True
    alpha = feather_alpha(mask, 3)
    assert (alpha[mask] == 1).all()
    np.testing.assert_array_equal(alpha > 0, dilate(mask, 3))
    assert ((alpha > 0) & (alpha < 1) == (dilate(mask, 3) & ~mask)).all()
    np.testing.assert_array_equal(feather_alpha(mask, 0), mask.astype(float))
    np.testing.assert_array_equal(erode(dilate(mask, 2), 2), mask)
    ring = dilate(mask, 1) & ~mask  # a closed 6×6 frame around a 4×4 hole
    assert fill_holes(ring).sum() == 36
    broken = ring.copy()
    broken[7, 9] = False  # a gap: the inside is connected to the image frame
    np.testing.assert_array_equal(fill_holes(broken), broken)


def test_paste_in_place_writes_the_resized_level_matched_defect_inside_the_mask_only() -> None:
    image = np.full((20, 30), 100, np.uint8)
    defect = np.full((10, 15), 50, np.uint8)
    defect[4:6, 6:9] = 10  # a dark spot on a darker-than-image surround
    mask = np.zeros((20, 30), bool)
    mask[8:12, 12:18] = True  # the defect's own box, at twice its size
    out = paste_in_place(image, defect, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert int(out[mask].min()) < 100 - 30  # the spot keeps its contrast to the surround ...
    assert abs(int(out[8, 12]) - 100) < 25  # ... whose level follows the image (δ = +50)
    rgb = paste_in_place(np.stack([image] * 3, -1), np.stack([defect] * 3, -1), mask)
    np.testing.assert_array_equal(rgb[..., 0], out)
    with pytest.raises(ValueError, match="channels"):
        paste_in_place(image, np.stack([defect] * 3, -1), mask)
    with pytest.raises(ValueError, match="nonempty"):
        paste_in_place(image, defect, np.zeros_like(mask))
    with pytest.raises(ValueError, match="nonempty"):
        paste_in_place(image, defect, mask[:10])

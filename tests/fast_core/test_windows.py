"""Native-resolution windows: placement, cutting, and the paste that keeps every pixel outside the mask."""

from __future__ import annotations

import numpy as np
import pytest

from fast_core.data.windows import (
    Window,
    cut_around,
    cut_image,
    cut_mask,
    mask_at,
    min_side,
    paste_window,
    random_window,
    window_around,
    window_side,
)


def _blob(h: int, w: int, y: slice, x: slice) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y, x] = True
    return m


def test_small_defect_gets_a_native_window_that_contains_it_wherever_it_is() -> None:
    rng = np.random.default_rng(0)
    for y0, x0 in [(0, 0), (190, 290), (100, 3), (5, 150)]:
        m = _blob(200, 300, slice(y0, y0 + 8), slice(x0, x0 + 6))
        for r in (None, rng):
            w = window_around(m, 64, 0.25, r)
            assert w.side == 64
            assert 0 <= w.y0 <= y0 and y0 + 8 <= w.y0 + 64 <= 200
            assert 0 <= w.x0 <= x0 and x0 + 6 <= w.x0 + 64 <= 300


def test_random_offsets_vary_and_the_centred_window_centres() -> None:
    m = _blob(200, 200, slice(96, 104), slice(96, 104))
    starts = {window_around(m, 64, 0.25, np.random.default_rng(s)).y0 for s in range(30)}
    assert len(starts) > 10 and min(starts) >= 104 - 64 and max(starts) <= 96
    centred = window_around(m, 64, 0.25)
    assert (centred.y0, centred.x0) == (68, 68)


def test_a_large_defect_gets_a_larger_window_resized_to_the_model() -> None:
    m = _blob(256, 256, slice(10, 210), slice(40, 80))
    w = window_around(m, 64, 0.25)
    assert w.side == window_side((10, 209, 40, 79), 64, 0.25) == 250
    image = np.random.default_rng(1).integers(0, 256, (3, 256, 256), dtype=np.uint8)
    assert cut_image(image, w, 64).shape == (3, 64, 64)
    small = cut_mask(m, w, 64)
    assert small.shape == (64, 64) and set(np.unique(small)) == {0, 1}
    # any coverage counts: a one-pixel-wide line survives a 4× shrink
    line = _blob(256, 256, slice(0, 256), slice(100, 101))
    assert cut_mask(line, Window(0, 0, 256), 64).sum() == 64


def test_a_zoom_cuts_a_smaller_window_around_a_small_defect_resized_up_and_pasted_back_down() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (1, 120, 150), dtype=np.uint8)
    m = _blob(120, 150, slice(50, 56), slice(70, 77))  # a 6 × 7 defect
    for r in (None, np.random.default_rng(4)):
        w = window_around(m, 64, 0.25, r, zoom=2.0)
        assert w.side == min_side(64, 2.0) == 32
        assert w.y0 <= 50 < 56 <= w.y0 + 32 and w.x0 <= 70 < 77 <= w.x0 + 32
    cut = cut_around(image[0], m, 64, 1, 0.25, zoom=2.0)
    assert cut.window.side == 32 and cut.image.shape == (1, 64, 64)
    assert cut.mask.sum() >= 4 * m.sum()  # twice the side in the model's pixels: the defect spans 4× the cells
    # the zoom only sets the smallest side: a large defect's window is the same as without it
    big = _blob(120, 150, slice(10, 110), slice(20, 40))
    assert window_around(big, 64, 0.25, zoom=2.0) == window_around(big, 64, 0.25)
    # back at native size: only the mask's pixels change, by the generated window shrunk to 32 px
    generated = np.full((1, 64, 64), 200, np.uint8)
    out = paste_window(image, generated, m, cut.window, reference=cut.image)
    np.testing.assert_array_equal(out[:, ~m], image[:, ~m])
    assert out[0][m].mean() > image[0][m].mean() + 30


def test_windows_past_a_small_image_are_padded_and_the_paste_stays_inside() -> None:
    image = np.random.default_rng(2).integers(0, 256, (1, 40, 100), dtype=np.uint8)
    m = _blob(40, 100, slice(10, 20), slice(90, 95))
    w = window_around(m, 64, 0.25)
    assert w.y0 == 0 and w.side == 64  # taller than the image: starts at 0, padded below
    cut = cut_image(image, w, 64)
    np.testing.assert_array_equal(cut[:, :40, : 100 - w.x0], image[:, :, w.x0 :])
    generated = np.full((1, 64, 64), 7, np.uint8)
    out = paste_window(image, generated, m, w)
    np.testing.assert_array_equal(out[:, ~m], image[:, ~m])
    assert (out[:, m] == 7).all()


def test_paste_resizes_a_large_window_back_and_refuses_a_mask_outside_it() -> None:
    image = np.zeros((3, 120, 120), np.uint8)
    m = _blob(120, 120, slice(0, 100), slice(0, 100))
    w = window_around(m, 32, 0.1)
    assert w.side == 110
    out = paste_window(image, np.full((3, 32, 32), 200, np.uint8), m, w)
    assert (out[:, m] == 200).all() and not out[:, ~m].any()
    with pytest.raises(ValueError, match="outside the window"):
        paste_window(image, np.zeros((3, 32, 32), np.uint8), m, Window(50, 50, 32))


def test_residual_paste_carries_the_change_and_keeps_the_native_grain() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(60, 200, (1, 120, 120), dtype=np.uint8)  # grain: independent pixel noise
    m = _blob(120, 120, slice(10, 90), slice(20, 100))
    w = window_around(m, 32, 0.1)
    assert w.side > 32  # the window is shrunk to 32² for the model
    reference = cut_image(image, w, 32)
    generated = np.clip(reference.astype(np.int16) - 40, 0, 255).astype(np.uint8)  # the model darkened the window
    out = paste_window(image, generated, m, w, reference=reference)
    np.testing.assert_array_equal(out[:, ~m], image[:, ~m])
    change = out[:, m].astype(np.int16) - image[:, m].astype(np.int16)
    assert abs(float(change.mean()) + 40) < 2  # the darkening arrives ...
    assert float(change.std()) < 3  # ... as a smooth shift: the native grain (std ≈ 40) survives under it
    replaced = paste_window(image, generated, m, w)  # the upsampled window instead: grain lost
    assert float((replaced[:, m].astype(np.int16) - image[:, m]).std()) > 20
    same = paste_window(image, reference, m, w, reference=reference)  # no change → native bytes
    np.testing.assert_array_equal(same, image)
    at_size = window_around(_blob(120, 120, slice(40, 50), slice(40, 50)), 32, 0.1)
    ref32 = cut_image(image, at_size, 32)
    gen32 = rng.integers(0, 256, (1, 32, 32), dtype=np.uint8)
    small = _blob(120, 120, slice(40, 50), slice(40, 50))
    np.testing.assert_array_equal(  # side = S: residual and replace paste the same bytes
        paste_window(image, gen32, small, at_size, reference=ref32), paste_window(image, gen32, small, at_size)
    )
    with pytest.raises(ValueError, match="reference"):
        paste_window(image, gen32, small, at_size, reference=ref32[:, :16])


def test_mask_of_another_size_is_resized_nearest_and_an_empty_mask_is_refused() -> None:
    m = _blob(10, 10, slice(0, 5), slice(0, 5))
    big = mask_at(m.astype(np.uint8) * 255, 20, 40)
    assert big.shape == (20, 40) and big[:10, :20].all() and not big[10:, :].any()
    with pytest.raises(ValueError, match="empty"):
        window_around(np.zeros((8, 8), bool), 4, 0.25)


def test_random_window_fits_or_starts_at_zero() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        w = random_window(50, 200, 64, rng)
        assert w.y0 == 0 and 0 <= w.x0 <= 136 and w.side == 64

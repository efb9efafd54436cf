"""Placing box- and stretch-frame shapes: sizes (and aspects) drawn from real masks, shapes resized, cleaned of
specks, trimmed and put fully inside."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from fast_core.masks.placement import (
    MIN_SIDE,
    box_record,
    draw_box,
    draw_side,
    drop_specks,
    place_shape,
    placement_rng,
    resize_shape,
    side_fraction,
)
from fast_core.masks.shapes import normalised_shape, stretched_shape

S = 32


def _disc(size: int = S) -> np.ndarray:
    """A disc that fills its frame, as the normalised shape of a round blowhole does."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return yy**2 + xx**2 <= (size / 2) ** 2


def _bar(size: int = S) -> np.ndarray:
    """A one-cell horizontal bar across the frame (the shape of a long thin crack)."""
    m = np.zeros((size, size), bool)
    m[size // 2, :] = True
    return m


def test_side_fraction_is_the_box_side_over_the_frame_scale() -> None:
    m = np.zeros((60, 240), bool)
    m[10:13, 20:26] = True  # a 3 × 6 blob
    assert side_fraction(m) == pytest.approx(6 / math.sqrt(60 * 240))
    m[50, 200] = True  # a stray pixel stretches the box to 41 × 181
    assert side_fraction(m) == pytest.approx(181 / 120)
    with pytest.raises(ValueError, match="empty"):
        side_fraction(np.zeros((4, 4), bool))


@pytest.mark.parametrize(
    ("shape", "side", "hw"), [(_disc(), 9, (40, 48)), (_bar(), 45, (45, 200)), (_disc(), 2, (8, 8))]
)
def test_placed_shape_is_whole_inside_the_frame(shape: np.ndarray, side: int, hw: tuple[int, int]) -> None:
    resized = resize_shape(shape, side)
    assert resized.shape == (side, side) and resized.any()
    seen = set()
    for seed in range(40):
        out = place_shape(shape, (side, side), hw, np.random.default_rng(seed))
        assert out.shape == hw and out.dtype == np.bool_
        assert out.sum() == resized.sum()  # nothing cut off at a border
        rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
        box = out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        r, c = np.flatnonzero(resized.any(axis=1)), np.flatnonzero(resized.any(axis=0))
        assert np.array_equal(box, resized[r[0] : r[-1] + 1, c[0] : c[-1] + 1])  # the trimmed shape, unchanged
        seen.add((rows[0], cols[0]))
    assert len(seen) > 5  # positions are drawn, not fixed


def test_same_seed_same_mask_and_draw_order() -> None:
    sides = [0.05, 0.1, 0.3]
    masks = []
    for seed in (7, 7, 8):
        rng = placement_rng(seed)
        side = draw_side(sides, (64, 80), rng, jitter=0.15)
        masks.append(place_shape(_disc(), (side, side), (64, 80), rng))
    assert np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])
    # the placement stream is not the row seed's plain numpy stream
    assert placement_rng(7).random() != np.random.default_rng(7).random()
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        placement_rng(-1)


def test_draw_side_uses_the_real_fractions_jitter_and_clamps() -> None:
    hw = (100, 400)  # √(H · W) = 200
    rng = np.random.default_rng(0)
    exact = {draw_side([0.1, 0.25], hw, rng, jitter=0.0) for _ in range(50)}
    assert exact == {20, 50}
    j = 0.3
    drawn = [draw_side([0.25], hw, rng, jitter=j) for _ in range(400)]
    assert min(drawn) >= math.floor(50 * math.exp(-j)) and max(drawn) <= math.ceil(50 * math.exp(j))
    assert min(drawn) < 40 and max(drawn) > 62  # the spread reaches towards both ends
    assert draw_side([3.0], hw, rng, jitter=0.0) == 100  # clamped to min(H, W)
    assert draw_side([1e-4], hw, rng, jitter=0.0) == MIN_SIDE  # clamped to 2
    with pytest.raises(ValueError, match="no side fractions"):
        draw_side([], hw, rng, 0.1)
    with pytest.raises(ValueError, match="jitter must be a finite number >= 0"):
        draw_side([0.1], hw, rng, -0.1)
    with pytest.raises(ValueError, match="finite numbers > 0"):
        draw_side([0.1, 0.0], hw, rng, 0.1)
    with pytest.raises(ValueError, match="smaller than 2 pixels"):
        draw_side([0.1], (1, 50), rng, 0.1)


def test_empty_shape_gives_an_empty_mask() -> None:
    empty = place_shape(np.zeros((S, S), bool), (20, 20), (40, 40), np.random.default_rng(0))
    assert empty.shape == (40, 40) and not empty.any()
    # a one-cell bar shrunk 4× covers a quarter of a pixel: the downscale empties it, and nothing fills it back
    assert not place_shape(_bar(), (S // 4, S // 4), (40, 40), np.random.default_rng(0)).any()


def test_thin_bar_survives_upscaling_as_one_straight_crack() -> None:
    crack = np.zeros((120, 500), bool)
    crack[60:62, 40:440] = True  # 2 × 400 px
    shape = normalised_shape(crack, 64)  # any-pooling keeps the line: one or two rows of 64 cells
    assert shape.any(axis=0).all() and 1 <= shape.any(axis=1).sum() <= 2
    side = draw_side([side_fraction(crack)], (120, 500), np.random.default_rng(0), jitter=0.0)
    assert side == 120  # 400 / √(120 · 500) · √(120 · 500) = 400, clamped to H
    out = place_shape(shape, (side, side), (120, 500), np.random.default_rng(1))
    labels, n = ndimage.label(out)
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    assert n == 1 and len(cols) == 120 and 1 <= len(rows) <= 4  # unbroken, full length, a few pixels thick


def test_downscaled_blob_keeps_its_outline() -> None:
    small = resize_shape(_disc(), 8)
    assert small.shape == (8, 8)
    assert small[4, 4] and not small[0, 0]  # inside on, corners off
    assert 0.6 < small.mean() < 0.9  # the disc covers π/4 ≈ 0.79 of its frame


def test_bad_inputs_are_clear_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"box_hw must be two integers in 1..40 and 1..60"):
        place_shape(_disc(), (41, 41), (40, 60), rng)
    with pytest.raises(ValueError, match=r"box_hw must be two integers in 1..40 and 1..60"):
        place_shape(_disc(), 4, (40, 60), rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        place_shape(np.zeros((4, 6), bool), (3, 3), (40, 60), rng)
    with pytest.raises(ValueError, match="out_hw must hold two integers"):
        place_shape(_disc(), (4, 4), (40.0, 60), rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(a, b, fill\) triples of numbers in \(0, 1\]"):
        draw_box([(0.1, 0.2, 0.5), (0.1, 0.2)], (40, 60), rng, 0.1)
    with pytest.raises(ValueError, match=r"triples of numbers in \(0, 1\]"):
        draw_box([(0.1, 1.2, 0.5)], (40, 60), rng, 0.1)
    with pytest.raises(ValueError, match="no box records"):
        draw_box([], (40, 60), rng, 0.1)
    with pytest.raises(ValueError, match="jitter must be a finite number >= 0"):
        draw_box([(0.1, 0.2, 0.5)], (40, 60), rng, float("inf"))
    with pytest.raises(ValueError, match=r"fill must lie in \(0, 1\]"):
        draw_box([(0.1, 0.2, 0.5)], (40, 60), rng, 0.1, fill=0.0)
    with pytest.raises(ValueError, match="empty"):
        box_record(np.zeros((4, 4), bool), 8)
    with pytest.raises(ValueError, match="max_components must be an integer >= 1"):
        drop_specks(_disc(), 4, 0)


def test_thin_crack_comes_back_thin_through_the_stretch_frame() -> None:
    crack = np.zeros((120, 500), bool)
    rows = 58 + (np.arange(400) // 100)  # a 5 × 400 crack that steps down one row every 100 px
    for dr in (0, 1):
        crack[rows + dr, 40 + np.arange(400)] = True
    shape = stretched_shape(crack, 64)
    assert shape.any(axis=0).all() and shape.any(axis=1).all()  # the box fills the square both ways
    record = box_record(crack, 64)
    assert record[:2] == (5 / 120, 400 / 500) and 0.3 < record[2] < 0.6  # a band over about 2/5 of the square
    box = draw_box([record], (120, 500), np.random.default_rng(0), jitter=0.0, fill=0.9)
    assert box == (5, 400)  # the real size and aspect, exactly (one record: the fill has nothing to choose)
    assert draw_box([record], (60, 1000), np.random.default_rng(0), jitter=0.0) == (3, 800)  # per axis: 2.5 → 3
    out = place_shape(shape, box, (120, 500), np.random.default_rng(1))
    r, c = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    assert (len(r), len(c)) == (5, 400) and ndimage.label(out, structure=np.ones((3, 3)))[1] == 1
    assert 0.3 < out.sum() / crack.sum() < 1.7  # as thin as the real one, not a filled box
    # the box frame pads the same crack to a square, so its one-cell line is what the model has to learn
    assert normalised_shape(crack, 64).any(axis=1).sum() <= 2


def test_draw_box_keeps_real_aspects_matches_fill_and_spreads_sizes() -> None:
    hw = (100, 400)
    rng = np.random.default_rng(0)
    solid, sparse = (0.1, 0.25, 0.9), (0.5, 0.025, 0.05)
    records = [solid, sparse, (0.1, 0.25, 0.8), (0.5, 0.025, 0.04)]
    assert {draw_box(records, hw, rng, jitter=0.0) for _ in range(80)} == {(10, 100), (50, 10)}  # no fill: any
    assert {draw_box(records, hw, rng, jitter=0.0, fill=0.7) for _ in range(40)} == {(10, 100)}  # the 2 nearest
    assert {draw_box(records, hw, rng, jitter=0.0, fill=0.02) for _ in range(40)} == {(50, 10)}
    drawn = [draw_box([(0.25, 0.125, 0.5)], hw, rng, jitter=0.3) for _ in range(400)]
    assert all(abs(w / h - 2.0) < 0.1 for h, w in drawn)  # one factor scales both sides (up to rounding)
    assert min(h for h, _ in drawn) < 20 and max(h for h, _ in drawn) > 31
    assert draw_box([(1.0, 1.0, 1.0)], hw, rng, jitter=0.5) <= (100, 400)  # clamped to the frame


def test_specks_are_dropped_before_the_box_is_trimmed() -> None:
    shape = np.zeros((S, S), bool)
    shape[8:24, 8:24] = True  # the defect
    shape[0, 31] = True  # a one-cell speck in a corner, 1/16 px at this scale
    box = (16, 16)
    kept = place_shape(shape, box, (64, 64), np.random.default_rng(0))
    assert kept.sum() == 64 + 0  # the 8 × 8 body resized down 2×, and the speck (¼ of a pixel) gone by itself
    big = (64, 64)
    plain = place_shape(shape, big, (64, 64), np.random.default_rng(0))
    cleaned = place_shape(shape, big, (64, 64), np.random.default_rng(0), specks=(5, 5))
    assert ndimage.label(plain)[1] == 2 and plain.sum() == 32 * 32 + 4
    assert ndimage.label(cleaned)[1] == 1 and cleaned.sum() == 32 * 32  # the 2 × 2 speck is below 5 px
    r, c = np.flatnonzero(cleaned.any(axis=1)), np.flatnonzero(cleaned.any(axis=0))
    assert (len(r), len(c)) == (32, 32)  # the box is the body's, not stretched by the speck
    many = np.zeros((S, S), bool)
    many[::4, ::4] = True  # 64 one-cell dots
    many[10:20, 10:20] = True
    assert ndimage.label(drop_specks(many, 1, 3), structure=np.ones((3, 3)))[1] == 3  # the largest three

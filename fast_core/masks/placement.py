"""The box frame of the mask diffusion model: a mask's size apart from its shape, and a sampled shape put back.

A box-frame mask model (``MaskDiffusionConfig.frame == "box"``) learns shapes, not sizes or positions. Each real
training mask M of size (H, W) is reduced to its shape :func:`fast_core.masks.shapes.normalised_shape` (bounding box
padded to a centred square, resampled to S × S) and to its size

    f = max(box_h, box_w) / √(H · W)                                          (:func:`side_fraction`)

and the model keeps every key's real fractions f_1..f_n with its weights. A sample (an S × S shape) is put into an
output frame of (H, W) by two functions that draw from one generator, in this order:

    side = clamp(⌊f* · eᵘ · √(H · W) + ½⌋, 2, min(H, W)),   f* ~ U{f_1..f_n},  u ~ U(−j, j)       (:func:`draw_side`)
    mask = the shape resized to side × side, trimmed to its own bounding box, at a uniformly random position where
           it fits entirely                                                                   (:func:`place_shape`)

The jitter j (≥ 0) spreads the sizes around the real ones by a factor within [e^−j, e^j]. A caller that wants a
row's mask to depend on that row alone seeds the generator from the row: :func:`placement_rng`. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fast_core.masks.shapes import bounding_box

__all__ = ["MIN_SIDE", "PLACEMENT_STREAM", "draw_side", "place_shape", "placement_rng", "resize_shape", "side_fraction"]

MIN_SIDE = 2  # the smallest side draw_side returns (a one-pixel defect is left to the filters' min_component_px)
PLACEMENT_STREAM = 0x706C6163  # "plac": second word of placement_rng's seed, apart from the row's other streams


def placement_rng(seed: int) -> np.random.Generator:
    """The placement generator of one row: ``np.random.default_rng([seed, PLACEMENT_STREAM])``.

    The row's torch noise stream is ``torch.Generator().manual_seed(seed)``; the extra word keeps the two apart.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"placement_rng: seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([int(seed), PLACEMENT_STREAM])


def side_fraction(mask: np.ndarray) -> float:
    """f = max(box_h, box_w) / √(H · W) of a binary (H, W) mask (its bounding box side over the frame's scale).

    >>> m = np.zeros((100, 400), bool); m[10:14, 50:250] = True   # a 4 × 200 crack in a 100 × 400 image
    >>> side_fraction(m)
    1.0

    Raises:
        ValueError: not 2-D, or no anomaly pixel (an empty mask has no box).
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"side_fraction expects a 2-D (H, W) mask, got shape {m.shape}")
    box = bounding_box(m)
    if box is None:
        raise ValueError("side_fraction: the mask is empty, so it has no bounding box")
    return float(max(box.shape) / math.sqrt(m.shape[0] * m.shape[1]))


def bad_side_fractions(sides: Sequence[float]) -> list[object]:
    """The entries of ``sides`` that are not finite numbers > 0 (bools are not numbers here)."""
    return [f for f in sides if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f < math.inf]


def _check_frame(out_hw: tuple[int, int], where: str) -> tuple[int, int]:
    if len(out_hw) != 2:
        raise ValueError(f"{where}: out_hw must be (H, W), got {out_hw!r}")
    h, w = out_hw
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ValueError(f"{where}: out_hw must hold two integers, got {out_hw!r}")
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{where}: out_hw = {(int(h), int(w))} is smaller than {MIN_SIDE} pixels on a side")
    return int(h), int(w)


def draw_side(sides: Sequence[float], out_hw: tuple[int, int], rng: np.random.Generator, jitter: float) -> int:
    """The side in pixels of one placed shape: side = clamp(⌊f* · eᵘ · √(H · W) + ½⌋, 2, min(H, W)).

    Args:
        sides: the key's real side fractions f_1..f_n (each finite and > 0); f* is one of them, uniformly.
        out_hw: the output frame (H, W).
        rng: draws the index of f*, then u ~ U(−jitter, jitter), in that order.
        jitter: j ≥ 0; 0 gives the real sizes exactly (up to rounding and the clamp).

    >>> draw_side([0.25], (64, 256), np.random.default_rng(0), jitter=0.0)   # 0.25 · √(64 · 256) = 32
    32
    >>> draw_side([5.0], (64, 256), np.random.default_rng(0), jitter=0.0)    # clamped to min(H, W)
    64
    """
    h, w = _check_frame(out_hw, "draw_side")
    if not len(sides):
        raise ValueError("draw_side: no side fractions given; a box-frame model records at least one per key")
    bad = bad_side_fractions(sides)
    if bad:
        raise ValueError(f"draw_side: side fractions must be finite numbers > 0, got {bad[:3]}")
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < math.inf:
        raise ValueError(f"draw_side: jitter must be a finite number >= 0, got {jitter!r}")
    f = float(sides[int(rng.integers(len(sides)))])
    u = float(rng.uniform(-jitter, jitter))
    side = math.floor(f * math.exp(u) * math.sqrt(h * w) + 0.5)
    return int(min(max(side, MIN_SIDE), min(h, w)))


def _area_overlaps(size: int, side: int) -> np.ndarray:
    """(side, size) int64 o[u, i] = |[u·S, (u+1)·S) ∩ [i·side, (i+1)·side)|: the overlap of output cell u with input
    cell i along one axis, in units of 1/side of an input cell (a row sums to S = ``size``)."""
    u = np.arange(side, dtype=np.int64)[:, None]
    i = np.arange(size, dtype=np.int64)[None, :]
    lo = np.maximum(u * size, i * side)
    hi = np.minimum((u + 1) * size, (i + 1) * side)
    return np.maximum(hi - lo, 0)


def resize_shape(shape: np.ndarray, side: int) -> np.ndarray:
    """A square bool (S, S) shape resized to (side, side).

    * side ≥ S, nearest neighbour: out[u, v] = shape[⌊u·S/side⌋, ⌊v·S/side⌋]. Every cell of the shape covers at least
      one output pixel, so nothing is lost (a one-cell line becomes a line ⌊side/S⌋ or ⌈side/S⌉ pixels wide).
    * side < S, area average then ≥ ½: out[u, v] = [Σ_ij a_ui a_vj shape[i, j] ≥ ½], with a_ui the fraction of output
      pixel u's extent (S/side cells) that cell i covers. Computed in integers (o = S · a, :func:`_area_overlaps`):
      [2 · (O · shape · Oᵀ)[u, v] ≥ S²], so it is exact. Blobs keep their outline to within a pixel. Thin shapes do
      not: a structure w cells thin covers at most w · side / S of an output pixel across its width, so below
      side = S / (2w) it vanishes; above, it survives only where it covers half an output pixel, which depends on
      where it falls on the output grid, so a one-cell line shrunk at all can break into dashes (a diagonal one) or
      vanish (a straight one astride two output pixels). An empty result is the caller's to reject; it is never
      filled in.

    >>> bar = np.zeros((8, 8), bool); bar[3, :] = True                  # a one-cell bar
    >>> np.flatnonzero(resize_shape(bar, 20).all(axis=1)).tolist()     # up 2.5×: full rows, 2 (or 3) thick
    [8, 9]
    >>> resize_shape(bar, 4).sum(axis=1).tolist()                      # down 2×: it covers half of row 1
    [0, 4, 0, 0]
    >>> bool(resize_shape(bar, 3).any())                                # down 8/3×: 3/8 of a row at most
    False
    >>> disc = np.add.outer((np.arange(8) - 3.5) ** 2, (np.arange(8) - 3.5) ** 2) <= 9
    >>> resize_shape(disc, 4).astype(int).tolist()
    [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
    """
    s = np.asarray(shape).astype(bool)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        raise ValueError(f"resize_shape expects a square (S, S) shape, got shape {s.shape}")
    if isinstance(side, bool) or not isinstance(side, int | np.integer) or side < 1:
        raise ValueError(f"resize_shape: side must be an integer >= 1, got {side!r}")
    size, side = s.shape[0], int(side)
    if side >= size:
        src = np.arange(side) * size // side
        return s[np.ix_(src, src)]
    o = _area_overlaps(size, side)  # (side, S)
    covered = o @ s.astype(np.int64) @ o.T  # (side, side): S² · the area fraction
    return 2 * covered >= size * size


def place_shape(shape: np.ndarray, side: int, out_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Put a sampled S × S shape into an empty (H, W) frame at ``side`` pixels (the module docstring's second step).

    The shape is resized to side × side (:func:`resize_shape`: nearest up, area average ≥ ½ down), trimmed to its own
    bounding box (h, w), and put at top ~ U{0..H − h}, left ~ U{0..W − w}: always entirely inside. An empty shape,
    or one that the downscale empties, gives an all-False mask and draws nothing.

    Args:
        shape: bool (S, S), True = anomaly.
        side: the side in pixels, 1 ≤ side ≤ min(H, W) (:func:`draw_side`).
        out_hw: the output frame (H, W).
        rng: draws top, then left.

    Returns:
        bool (H, W).

    >>> bar = np.zeros((8, 8), bool); bar[3, 1:7] = True
    >>> m = place_shape(bar, 16, (20, 30), np.random.default_rng(0))
    >>> m.shape, int(m.sum()), int(m.any(axis=1).sum()), int(m.any(axis=0).sum())   # 12 × 2 pixels
    ((20, 30), 24, 2, 12)
    """
    h, w = _check_frame(out_hw, "place_shape")
    if isinstance(side, bool) or not isinstance(side, int | np.integer) or not 1 <= side <= min(h, w):
        raise ValueError(f"place_shape: side must be an integer in 1..{min(h, w)} (min(H, W)), got {side!r}")
    resized = resize_shape(shape, int(side))
    out = np.zeros((h, w), dtype=bool)
    box = bounding_box(resized)
    if box is None:
        return out
    bh, bw = box.shape
    top = int(rng.integers(0, h - bh + 1))
    left = int(rng.integers(0, w - bw + 1))
    out[top : top + bh, left : left + bw] = box
    return out

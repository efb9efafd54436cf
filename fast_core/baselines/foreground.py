"""Foreground estimate of one image from its border colour, and the binary morphology it needs (pure numpy).

:func:`border_foreground` answers "where is the object?" for a single normal image photographed on a roughly uniform
background: with ``b`` the per-channel median of a frame of width ``w = max(1, min(H, W) // 32)`` (the background
colour) and ``d = max_c |I_c − b_c|``, the raw foreground is ``d > tolerance``; it is closed with a square of side
``2r + 1`` (small gaps between object parts bridged) and its holes are filled (regions of background not
4-connected to the image frame become foreground). When the result covers less than ``min_fraction`` of the image
(no object distinct from the border: a texture, a blank image, an object colour close to the background) the whole
image is returned instead, so callers never get an empty or tiny region.

Morphology conventions: square structuring elements of side ``2r + 1``; for :func:`dilate` the outside of the image
is background, for :func:`erode` it is foreground (a closing does not eat into regions touching the frame).
"""

from __future__ import annotations

import numpy as np


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` dilated by a (2r+1)×(2r+1) square: a pixel is set when any pixel within Chebyshev distance r is."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, radius)
    rows = np.zeros((h + 2 * radius, w), dtype=bool)
    for d in range(2 * radius + 1):
        rows |= padded[:, d : d + w]
    out = np.zeros((h, w), dtype=bool)
    for d in range(2 * radius + 1):
        out |= rows[d : d + h]
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` eroded by a (2r+1)×(2r+1) square, the outside of the image counting as set: ``¬dilate(¬mask, r)``."""
    return ~dilate(~mask, radius)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every unset region that is not 4-connected to the image frame (geodesic flood fill)."""
    free = ~mask
    reach = np.zeros_like(free)
    reach[[0, -1], :] = free[[0, -1], :]
    reach[:, [0, -1]] |= free[:, [0, -1]]
    while True:
        grown = reach.copy()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= free
        if np.array_equal(grown, reach):
            return ~reach
        reach = grown


def border_foreground(
    image: np.ndarray, *, tolerance: float = 20.0, close_radius: int = 2, min_fraction: float = 0.1
) -> np.ndarray:
    """Foreground estimate of one uint8 image (see the module docstring); bool (H, W).

    Args:
        image: (H, W) or (H, W, C) image.
        tolerance: grey levels by which a pixel must differ from the border colour (in some channel).
        close_radius: r of the closing; 0 skips it.
        min_fraction: below this covered fraction the whole image is the foreground.

    >>> img = np.zeros((64, 64), np.uint8); img[16:48, 16:48] = 200; img[30:34, 30:34] = 0
    >>> int(border_foreground(img).sum())  # the 32×32 square, its dark hole filled
    1024
    >>> bool(border_foreground(np.zeros((8, 8), np.uint8)).all())  # nothing distinct from the border: everything
    True
    """
    x = image.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    h, w = x.shape[:2]
    fw = max(1, min(h, w) // 32)
    frame = np.ones((h, w), dtype=bool)
    frame[fw : h - fw, fw : w - fw] = False
    background = np.median(x[frame], axis=0)  # (C,)
    fg = np.abs(x - background).max(axis=-1) > tolerance
    if close_radius > 0:
        fg = erode(dilate(fg, close_radius), close_radius)
    fg = fill_holes(fg)
    if fg.mean() < min_fraction:
        return np.ones((h, w), dtype=bool)
    return fg

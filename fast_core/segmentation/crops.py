"""Native-resolution training crops: fixed-size windows cut from images of any size, biased towards defects.

A segmenter that sees whole images resized to S × S learns a blurred version of small defects, and one resize
erases a blowhole of a few pixels. Training instead on ``c × c`` crops at the images' own pixel size keeps every
defect at the scale the test images show it; inference then runs on whole images at their own size
(:func:`fast_core.segmentation.inference.predict_images`).

For image i (C, H, W) with mask M_i, a crop of side c is cut as follows (all draws from one ``numpy`` Generator):

1. an image with a side below c is reflect-padded at the bottom/right up to c (edge-replicated when it is smaller
   than the padding), and its mask zero-padded, so defects stay where they were;
2. with probability ``defect_fraction`` — and only when M_i has a positive pixel — a positive pixel (y, x) is drawn
   uniformly from M_i and the top-left corner from ``y0 ~ U{max(0, y − c + 1) … min(y, H − c)}`` (likewise x0), so
   the crop contains that pixel; otherwise ``y0 ~ U{0 … H − c}``, ``x0 ~ U{0 … W − c}``.

Picking a positive pixel uniformly weights large defects by their area; half the anomaly crops forced onto the
defect (the default) keeps both the defect and its normal surroundings in every batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fast_core.data.windows import pad_bottom_right


def pad_to_min_side(image: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (C, H, W) ``image`` (reflect) and (H, W) ``mask`` (zeros) at the bottom/right to at least ``side``.

    >>> img, m = pad_to_min_side(np.arange(6, dtype=np.uint8).reshape(1, 2, 3), np.ones((2, 3), bool), 4)
    >>> img.shape, m.shape, int(m.sum())
    ((1, 4, 4), (4, 4), 6)
    """
    _, h, w = image.shape
    height, width = max(h, side), max(w, side)
    return pad_bottom_right(image, height, width, "reflect"), pad_bottom_right(mask, height, width, "constant")


def crop_window(mask: np.ndarray, side: int, defect_fraction: float, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner (y0, x0) of one ``side × side`` crop of an (H, W) mask with H, W ≥ side (module docstring).

    >>> m = np.zeros((100, 100), bool); m[90, 5] = True
    >>> y0, x0 = crop_window(m, 32, 1.0, np.random.default_rng(0))
    >>> bool(y0 <= 90 < y0 + 32 and x0 <= 5 < x0 + 32)
    True
    """
    h, w = mask.shape
    if h < side or w < side:
        raise ValueError(f"mask {h}×{w} is smaller than the crop side {side}; pad it first")
    if defect_fraction > 0 and rng.random() < defect_fraction:
        ys, xs = np.nonzero(mask)
        if ys.size:
            k = int(rng.integers(ys.size))
            y, x = int(ys[k]), int(xs[k])
            y0 = int(rng.integers(max(0, y - side + 1), min(y, h - side) + 1))
            x0 = int(rng.integers(max(0, x - side + 1), min(x, w - side) + 1))
            return y0, x0
    return int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))


def sample_crops(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    indices: Sequence[int],
    side: int,
    defect_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One crop per index: uint8 (B, C, side, side) images and bool (B, side, side) masks.

    Args:
        images: uint8 (C, H_i, W_i) images, any sizes, one channel count.
        masks: (H_i, W_i) masks (nonzero = anomaly), the same sizes as their images.
        indices: which images, in batch order.
        side: the crop side c.
        defect_fraction: probability that a crop of an image with a defect is forced onto it.
        rng: the only source of randomness (one call order: per index, the draws of :func:`crop_window`).
    """
    if side < 1 or not 0.0 <= defect_fraction <= 1.0:
        raise ValueError(f"need side >= 1 and defect_fraction in [0, 1], got {side}, {defect_fraction}")
    out_images, out_masks = [], []
    for i in indices:
        image, mask = images[i], masks[i] > 0
        if image.ndim != 3 or mask.shape != image.shape[1:]:
            raise ValueError(f"image {i} {image.shape} and mask {mask.shape} must be (C, H, W) and (H, W)")
        image, mask = pad_to_min_side(image, mask, side)
        y0, x0 = crop_window(mask, side, defect_fraction, rng)
        out_images.append(image[:, y0 : y0 + side, x0 : x0 + side])
        out_masks.append(mask[y0 : y0 + side, x0 : x0 + side])
    return np.stack(out_images), np.stack(out_masks)

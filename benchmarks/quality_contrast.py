"""Is the anomaly visible, and does it carry the image's grain? Ring contrast and grain ratio of each training set's
pairs, next to the real defects'.

For an image ``x`` (grey levels 0–255) and a non-empty mask ``M``, with ``R`` the ring of pixels
within ``RING_PX`` of ``M`` but outside it (a binary dilation of ``M`` minus ``M``)::

    signed contrast = mean_{p ∈ M} x(p) − mean_{p ∈ R} x(p)       (< 0: darker than its surroundings)
    ring contrast   = | signed contrast |
    grain ratio   = mean_{p ∈ M ⊖ 1} |x − box₃(x)|(p) / mean_{p ∈ (M ⊕ (1 + RING_PX)) ∖ (M ⊕ 1)} |x − box₃(x)|(p)

(box₃: the 3 × 3 mean; ⊖ / ⊕ 1: erosion / dilation by one pixel, so no 3 × 3 box straddles the mask's edge). Real
defects sit near 1: their inside is as grainy as their surroundings. A pasted region much smoother than its ring
(ratio ≪ 1) gives a segmenter a cue no real defect has: it learns "smooth patch = defect" and finds nothing at test.

It is computed on exactly what a grey segmenter sees (``to_model_image`` / ``to_model_mask`` at its input size, or at
each image's own size for a window-frame run) for
every pair of a dataset version and for the real generator-training
third (ground-truth masks), and summarised per defect type by the median. A generator whose median is far below the
real defects' paints anomalies a segmenter cannot see; one far above paints easier-than-real anomalies. A pair whose
mask touches nothing but the border (empty ring) is skipped.
"""

from __future__ import annotations

import glob
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageFilter

from fast_core.data.layout import load_image, load_mask, read_dataset, split_anomalies
from fast_core.data.transforms import decode_png, to_model_image, to_model_mask, to_uint8_chw
from fast_core.data.windows import mask_at

RING_PX = 3


def _grey(image: np.ndarray) -> np.ndarray:
    """Grey levels as float64 (H, W): the image itself, or the mean of its colour channels."""
    grey = image.astype(np.float64)
    return grey.mean(axis=2) if grey.ndim == 3 else grey


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary dilation of ``mask`` (bool) by ``px`` pixels (square structuring element); px = 0 returns it."""
    if px == 0:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * px + 1))) > 0


def signed_contrast(image: np.ndarray, mask: np.ndarray, ring_px: int = RING_PX) -> float | None:
    """mean inside ``mask`` − mean over the ``ring_px`` ring around it, in grey levels (negative: a dark defect); None
    when either is empty.

    >>> x = np.full((9, 9), 200, np.uint8); x[3:6, 3:6] = 50
    >>> signed_contrast(x, x < 100, 1)
    -150.0
    """
    grey = _grey(image)
    inside = mask.astype(bool)
    ring = _grow(inside, ring_px) & ~inside
    if not inside.any() or not ring.any():
        return None
    return float(grey[inside].mean() - grey[ring].mean())


def ring_contrast(image: np.ndarray, mask: np.ndarray, ring_px: int = RING_PX) -> float | None:
    """|mean inside ``mask`` − mean over the ``ring_px`` ring around it| in grey levels; None when either is empty.

    >>> x = np.zeros((9, 9), np.uint8); x[3:6, 3:6] = 200
    >>> m = x > 0
    >>> ring_contrast(x, m, 1)
    200.0
    """
    c = signed_contrast(image, mask, ring_px)
    return None if c is None else abs(c)


def grain_ratio(image: np.ndarray, mask: np.ndarray, ring_px: int = RING_PX) -> float | None:
    """High-frequency energy |x − box₃(x)| inside ``mask`` (eroded by 1 px) over the ring around it (see the module
    docstring); None when either region is empty or the ring is perfectly flat.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.integers(0, 256, (32, 32)).astype(np.uint8); m = np.zeros((32, 32), bool); m[8:24, 8:24] = True
    >>> 0.8 < grain_ratio(x, m) < 1.2  # the same noise inside and out
    True
    >>> x[m] = 128; grain_ratio(x, m)  # a flat fill
    0.0
    """
    grey = _grey(image)
    padded = np.pad(grey, 1, mode="reflect")
    h, w = grey.shape
    box = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    energy = np.abs(grey - box)
    inside = mask.astype(bool)
    inner = ~_grow(~inside, 1)  # erosion by one pixel
    ring = _grow(inside, 1 + ring_px) & ~_grow(inside, 1)
    if not inner.any() or not ring.any():
        return None
    around = energy[ring].mean()
    return None if around == 0 else float(energy[inner].mean() / around)


def _at_segmenter_size(image: np.ndarray, mask: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(grey levels float (S, S), mask bool (S, S)) as a segmenter at S × S sees them: ``to_model_image`` (bicubic,
    converted to L) and ``to_model_mask`` (nearest); ``size`` None: at the image's own size (the mask resized to it
    when another size, nearest), as the native-resolution segmenter sees them."""
    if size is None:
        grey = to_uint8_chw(image, 1)[0].astype(np.float64)
        return grey, mask_at(mask, *grey.shape)
    grey = (to_model_image(image, size, 1)[0].numpy() + 1.0) * 127.5
    return grey, to_model_mask(mask, size)[0].numpy() > 0.5


def _medians(values: dict[str, list[float]], digits: int) -> dict[str, float]:
    return {k: round(statistics.median(v), digits) for k, v in sorted(values.items()) if v}


class Tally:
    """Ring contrast (and its signed value) and grain ratio of pairs, per defect key (a measure that is undefined for a
    pair is left out)."""

    def __init__(self) -> None:
        self.contrast: dict[str, list[float]] = defaultdict(list)
        self.signed: dict[str, list[float]] = defaultdict(list)
        self.grain: dict[str, list[float]] = defaultdict(list)

    def add(self, key: str, grey: np.ndarray, mask: np.ndarray) -> None:
        c, g = signed_contrast(grey, mask), grain_ratio(grey, mask)
        if c is not None:
            self.contrast[key].append(abs(c))
            self.signed[key].append(c)
        if g is not None:
            self.grain[key].append(g)

    def summary(self) -> dict[str, Any]:
        """Median ring contrast per key, the median of those medians, the counts, and the median grain ratio per key."""
        per_key = _medians(self.contrast, 2)
        return {
            "median_per_defect_type": per_key,
            "median_of_medians": round(statistics.median(per_key.values()), 2) if per_key else None,
            "pairs": {k: len(v) for k, v in sorted(self.contrast.items())},
            "grain_ratio_per_defect_type": _medians(self.grain, 3),
            "signed_median_per_defect_type": _medians(self.signed, 2),
        }


def dataset_contrast(uri: str, size: int | None) -> dict[str, Any]:
    """Ring contrast and grain ratio of every pair of the (local) dataset version at ``uri``."""
    tally = Tally()
    for part in sorted(glob.glob(str(Path(uri) / "data" / "part-*.parquet"))):
        for row in pq.read_table(part, columns=["category", "defect_type", "image", "mask"]).to_pylist():
            x, m = _at_segmenter_size(decode_png(row["image"]["bytes"]), decode_png(row["mask"]["bytes"]), size)
            tally.add(f"{row['category']}/{row['defect_type']}", x, m)
    return tally.summary()


def real_third_contrast(root: str, size: int | None) -> dict[str, Any]:
    """Ring contrast and grain ratio of the real generator-training third (each image with its ground-truth mask)."""
    tally = Tally()
    for record in split_anomalies(read_dataset(root).records).gen_train:
        if record.mask_path is None:
            continue
        x, m = _at_segmenter_size(load_image(record.image_path), load_mask(record.mask_path), size)
        tally.add(f"{record.category}/{record.defect_type}", x, m)
    return tally.summary()

"""Is the anomaly visible? Ring contrast of each training set's pairs, next to the real defects'.

For an image ``x`` (grey levels 0–255) and a non-empty mask ``M``, with ``R`` the ring of pixels
within ``RING_PX`` of ``M`` but outside it (a binary dilation of ``M`` minus ``M``)::

    ring contrast = | mean_{p ∈ M} x(p) − mean_{p ∈ R} x(p) |

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


def ring_contrast(image: np.ndarray, mask: np.ndarray, ring_px: int = RING_PX) -> float | None:
    """|mean inside ``mask`` − mean over the ``ring_px`` ring around it| in grey levels; None when either is empty.

    >>> x = np.zeros((9, 9), np.uint8); x[3:6, 3:6] = 200
    >>> m = x > 0
    >>> ring_contrast(x, m, 1)
    200.0
    """
    grey = image.astype(np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    inside = mask.astype(bool)
    grown = Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * ring_px + 1))
    ring = (np.asarray(grown) > 0) & ~inside
    if not inside.any() or not ring.any():
        return None
    return float(abs(grey[inside].mean() - grey[ring].mean()))


def _at_segmenter_size(image: np.ndarray, mask: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(grey levels float (S, S), mask bool (S, S)) as a segmenter at S × S sees them: ``to_model_image`` (bicubic,
    converted to L) and ``to_model_mask`` (nearest); ``size`` None: at the image's own size (the mask resized to it
    when another size, nearest), as the native-resolution segmenter sees them."""
    if size is None:
        grey = to_uint8_chw(image, 1)[0].astype(np.float64)
        return grey, mask_at(mask, *grey.shape)
    grey = (to_model_image(image, size, 1)[0].numpy() + 1.0) * 127.5
    return grey, to_model_mask(mask, size)[0].numpy() > 0.5


def _summary(values: dict[str, list[float]]) -> dict[str, Any]:
    """Median per key, the median of those medians, and the counts."""
    per_key = {k: round(statistics.median(v), 2) for k, v in sorted(values.items()) if v}
    return {
        "median_per_defect_type": per_key,
        "median_of_medians": round(statistics.median(per_key.values()), 2) if per_key else None,
        "pairs": {k: len(v) for k, v in sorted(values.items())},
    }


def dataset_contrast(uri: str, size: int | None) -> dict[str, Any]:
    """Ring contrast of every pair of the (local) dataset version at ``uri``."""
    values: dict[str, list[float]] = defaultdict(list)
    for part in sorted(glob.glob(str(Path(uri) / "data" / "part-*.parquet"))):
        for row in pq.read_table(part, columns=["category", "defect_type", "image", "mask"]).to_pylist():
            x, m = _at_segmenter_size(decode_png(row["image"]["bytes"]), decode_png(row["mask"]["bytes"]), size)
            c = ring_contrast(x, m)
            if c is not None:
                values[f"{row['category']}/{row['defect_type']}"].append(c)
    return _summary(values)


def real_third_contrast(root: str, size: int | None) -> dict[str, Any]:
    """Ring contrast of the real generator-training third (each image with its ground-truth mask)."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in split_anomalies(read_dataset(root).records).gen_train:
        if record.mask_path is None:
            continue
        x, m = _at_segmenter_size(load_image(record.image_path), load_mask(record.mask_path), size)
        c = ring_contrast(x, m)
        if c is not None:
            values[f"{record.category}/{record.defect_type}"].append(c)
    return _summary(values)

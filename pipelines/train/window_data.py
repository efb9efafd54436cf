"""Training data in the window frame (FAST_SPEC §9): native-resolution S × S windows instead of resized images.

    defect rows   for each training-third anomaly image with a mask, ``windows_per_defect`` windows:
                  w = window_around(M, S, margin, rng, zoom)  (random offset; box inside; side ≠ S resized to S)
                  image, mask = cut_image(I, w), cut_mask(M, w), then a random k·90° turn when window_rot90
    normal rows   for each ``train/good`` image, ``windows_per_normal`` random windows of side ⌈S / zoom⌉ (S at
                  zoom 1), resized to S (padded when the image is smaller)
    window_flips  each window (and its mask) then flipped left-right and upside down with probability 1/2 each, once
    window_level  each window then scaled by g = L / b, b its mean grey level outside its mask (a normal window's
                  whole mean), L the median of b over every window cut (fast_core.data.window_level), rounded
                  and clipped to [0, 255]; L is returned with the data (TrainingData.window_level)
    window_jitter each window's grey levels then moved once, x ← c (x − x̄) + x̄ + b, c ~ U[1 − j, 1 + j],
                  b ~ U[−j, j] · 128, x̄ its mean, rounded and clipped to [0, 255], from a stream of its own, so
                  the windows and masks are those cut without it

The result is an ordinary :class:`TrainingData` (every array S × S), so the stages, the row feed and the resume
logic are those of the global frame. Every draw comes from ``numpy.random.default_rng([seed, 9])`` in file order,
so one seed gives the same windows. A mask whose size differs from its image is resized to it (nearest); an
anomaly image without a usable mask has no window to place and is skipped with its reason.
"""

from __future__ import annotations

import logging

import numpy as np

from fast_core.data.layout import GOOD, ImageRecord, load_image, load_mask, read_dataset, split_anomalies
from fast_core.data.transforms import to_uint8_chw
from fast_core.data.window_level import background_mean, level_gain, scale_uint8
from fast_core.data.windows import cut_image, cut_mask, mask_at, min_side, random_window, window_around
from pipelines.train.config import DatasetConfig
from pipelines.train.data import TrainingData, defect_key, stack_training_data

logger = logging.getLogger(__name__)

_STREAM = 9  # second word of the window generator's seed, apart from other consumers of the run seed


def load_window_data(cfg: DatasetConfig, seed: int) -> TrainingData:
    """The window-frame training set of ``cfg`` (module docstring).

    Raises:
        FileNotFoundError / ValueError: the folder or a category is missing, or no usable image was found.
    """
    index = read_dataset(cfg.local_root, cfg.layout, cfg.categories)
    split = split_anomalies(index.records)
    size, channels = cfg.image_size, cfg.image_channels
    normal_side = min_side(size, cfg.window_zoom)
    mode = "L" if channels == 1 else "RGB"
    rng = np.random.default_rng([seed, _STREAM])
    jitter_rng = np.random.default_rng([seed, _STREAM, 1])  # its own stream: the windows' places do not depend on it
    skipped: list[tuple[str, str]] = []
    keys = [GOOD, *sorted({defect_key(r) for r in split.gen_train})]
    key_index = {k: i for i, k in enumerate(keys)}

    def native(record: ImageRecord) -> np.ndarray | None:
        try:
            return to_uint8_chw(load_image(record.image_path, mode), channels)
        except (OSError, ValueError) as exc:
            skipped.append((str(record.image_path), f"unreadable image: {exc}"))
            return None

    def flipped(*arrays: np.ndarray) -> list[np.ndarray]:
        """``arrays`` (…, S, S) flipped together by one draw of two coins, when window_flips (else unchanged)."""
        if not cfg.window_flips:
            return list(arrays)
        h, v = rng.random(2) < 0.5
        out = [a[..., ::-1] if h else a for a in arrays]
        return [np.ascontiguousarray(a[..., ::-1, :] if v else a) for a in out]

    def jittered(x: np.ndarray) -> np.ndarray:
        """The window (C, S, S) uint8 with its grey levels moved by one draw, when window_jitter (else unchanged)."""
        j = cfg.window_jitter
        if not j:
            return x
        u = jitter_rng.random(2)
        c, b = 1.0 + j * (2.0 * u[0] - 1.0), 128.0 * j * (2.0 * u[1] - 1.0)
        mean = float(x.mean())
        return np.clip(np.rint(c * (x.astype(np.float32) - mean) + mean + b), 0, 255).astype(np.uint8)

    normal: list[np.ndarray] = []
    for record in split.train_good:
        image = native(record)
        if image is None:
            continue
        for _ in range(cfg.windows_per_normal):
            cut = cut_image(image, random_window(*image.shape[1:], normal_side, rng), size)
            normal.extend(flipped(cut))
    windows, masks, ids = [], [], []
    for record in split.gen_train:
        image = native(record)
        if image is None:
            continue
        if record.mask_path is None:
            skipped.append((str(record.image_path), "anomaly image without a mask: no window can be placed"))
            continue
        try:
            mask = mask_at(load_mask(record.mask_path), *image.shape[1:])
        except (OSError, ValueError) as exc:
            skipped.append((str(record.mask_path), f"unreadable mask: {exc}"))
            continue
        if not mask.any():
            skipped.append((str(record.mask_path), "empty mask: no window can be placed"))
            continue
        for _ in range(cfg.windows_per_defect):
            window = window_around(mask, size, cfg.window_margin, rng, cfg.window_zoom)
            x, m = cut_image(image, window, size), cut_mask(mask, window, size)
            k = int(rng.integers(4)) if cfg.window_rot90 else 0
            x, m = flipped(np.rot90(x, k, axes=(1, 2)), np.rot90(m, k)[None])
            windows.append(np.ascontiguousarray(x))
            masks.append(np.ascontiguousarray(m))
            ids.append(key_index[defect_key(record)])
    level = None
    if cfg.window_level:
        backgrounds = [background_mean(w) for w in normal]
        backgrounds += [background_mean(w, m[0]) for w, m in zip(windows, masks, strict=True)]
        if backgrounds:
            level = float(np.median(backgrounds))
            gains = [level_gain(level, b) for b in backgrounds]
            normal = [scale_uint8(w, g) for w, g in zip(normal, gains[: len(normal)], strict=True)]
            windows = [scale_uint8(w, g) for w, g in zip(windows, gains[len(normal) :], strict=True)]
            logger.info("window level: L = %.2f (median background of %d windows)", level, len(backgrounds))
    normal = [jittered(w) for w in normal]  # normal windows first, as they were cut: the jitter stream's order
    windows = [jittered(w) for w in windows]
    data = stack_training_data(cfg.root, keys, channels, size, normal, (windows, masks, ids), skipped)
    data.window_level = level
    return data

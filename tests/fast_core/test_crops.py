"""Native-resolution crops: defect-biased windows, padding of small images, determinism, and crop training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_core.segmentation import build_segmenter
from fast_core.segmentation.crops import crop_window, pad_to_min_side, sample_crops
from fast_core.segmentation.training import SegTrainConfig, train_segmenter


def _pair(h: int, w: int, box: tuple[int, int, int, int] | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (3, h, w), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    if box is not None:
        y0, y1, x0, x1 = box
        mask[y0:y1, x0:x1] = True
        image[:, y0:y1, x0:x1] = 250
    return image, mask


def test_forced_crops_contain_the_defect_and_free_crops_cover_the_image() -> None:
    image, mask = _pair(200, 300, (180, 184, 290, 295))  # a small defect in a corner
    rng = np.random.default_rng(0)
    forced = [crop_window(mask, 64, 1.0, rng) for _ in range(50)]
    assert all(y0 <= 183 and y0 + 64 > 180 and x0 <= 294 and x0 + 64 > 290 for y0, x0 in forced)
    assert all(0 <= y0 <= 200 - 64 and 0 <= x0 <= 300 - 64 for y0, x0 in forced)
    free = [crop_window(mask, 64, 0.0, rng) for _ in range(200)]
    assert min(y for y, _ in free) < 20 and max(x for _, x in free) > 200  # spread over the whole image
    hits = [sample_crops([image], [mask], [0] * 400, 64, 0.5, np.random.default_rng(1))[1].any(axis=(1, 2))]
    assert 0.4 < np.mean(hits) < 0.7  # about half forced onto the defect, a few free ones hit it too
    _, empty_mask = _pair(100, 100, None)
    assert crop_window(empty_mask, 64, 1.0, np.random.default_rng(0)) is not None  # no defect: a free crop


def test_small_images_are_padded_keeping_the_defect_in_place() -> None:
    image, mask = _pair(40, 90, (10, 12, 20, 25))
    padded, pmask = pad_to_min_side(image, mask, 64)
    assert padded.shape == (3, 64, 90) and pmask.shape == (64, 90)
    assert np.array_equal(padded[:, :40], image) and np.array_equal(pmask[:40], mask) and not pmask[40:].any()
    assert np.array_equal(padded[:, 40], image[:, 38])  # reflection (without repeating the edge row)
    tiny, tmask = pad_to_min_side(*_pair(10, 10, (2, 4, 2, 4)), 64)  # smaller than the padding: edge replication
    assert tiny.shape == (3, 64, 64) and int(tmask.sum()) == 4
    images, masks = sample_crops([image], [mask], [0, 0], 64, 1.0, np.random.default_rng(0))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    assert masks.sum(axis=(1, 2)).tolist() == [10, 10]


def test_crops_are_deterministic_and_check_their_inputs() -> None:
    pairs = [_pair(70 + 10 * i, 90, (5, 9, 5, 9), seed=i) for i in range(3)]
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    a = sample_crops(images, masks, [2, 0, 1], 64, 0.5, np.random.default_rng(7))
    b = sample_crops(images, masks, [2, 0, 1], 64, 0.5, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="must be \\(C, H, W\\) and \\(H, W\\)"):
        sample_crops([images[0]], [masks[1]], [0], 64, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="defect_fraction in \\[0, 1\\]"):
        sample_crops(images, masks, [0], 64, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop_size = 48 must be a multiple of 32"):
        SegTrainConfig(crop_size=48)


def test_crop_training_on_images_of_different_sizes_learns_and_repeats() -> None:
    """The pretrained segmenter finds bright squares after a few crop steps; the same seed gives the same weights."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(8):
        h, w = int(rng.integers(40, 90)), int(rng.integers(60, 120))
        y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
        pairs.append(_pair(h, w, (y, y + 10, x, x + 10), seed=i))
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    cfg = SegTrainConfig(steps=30, batch_size=4, lr=3e-3, crop_size=64, log_every=10, seed=1)
    runs = []
    for _ in range(2):
        model = build_segmenter("unet", 3, seed=0, encoder="efficientnet_lite0", pretrained=True)
        history = train_segmenter(model, images, masks, cfg)
        runs.append((model, history))
    assert runs[0][1][-1]["loss"] < runs[0][1][0]["loss"]
    for p, q in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values(), strict=True):
        assert torch.equal(p, q)

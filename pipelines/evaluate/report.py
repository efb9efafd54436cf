"""Testing the trained segmenter and writing its report: metric accumulation, ``metrics.json`` and ``predictions.png``.

Predictions are made at the test images' own size (``resolution: native``: whole images, or overlapping tiles for
images with a side above ``inference_tile``) or at S × S (``resize``: images bicubic- and ground-truth masks
nearest-resized); a pixel is predicted anomalous when σ(logit) ≥ ``threshold``. All counts are accumulated over
every test pixel (pooled, not averaged per image) with :class:`fast_core.evaluation.SegmentationMetrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from fast_core.evaluation import SegmentationMetrics
from fast_core.segmentation.inference import predict_images, sliding_window_proba
from fast_core.segmentation.training import images_from_uint8
from pipelines.evaluate.data import PairSet, is_normal_key

#: What each metric means; copied into metrics.json.
DEFINITIONS = {
    "anomaly_iou": "TP / (TP + FP + FN), anomaly = positive class",
    "background_iou": "TN / (TN + FN + FP)",
    "miou": "mean of anomaly_iou and background_iou (FAST_SPEC §8.4); each IoU from counts accumulated over all "
    "test pixels of the group",
    "aacc": "(TP + TN) / all pixels (pixel accuracy)",
    "macc": "TP / (TP + FN): anomaly-pixel recall (the paper's mAcc/Acc)",
    "mean_class_acc": "(TP / (TP + FN) + TN / (TN + FP)) / 2 (mmseg's mAcc), for reference",
    "pixel_auroc": "area under the pixel ROC curve of the predicted probabilities",
    "pixel_ap": "average precision of the predicted probabilities (scikit-learn's definition)",
    "overall": "one confusion matrix pooled over every test pixel (anomaly and test/good images)",
    "per_category": "pooled over all test pixels of the category (its anomalies and its test/good images)",
    "mean_over_categories": "unweighted mean over categories of each per-category metric (nan skipped)",
    "per_defect_type": "pooled over the test anomaly images of one category/defect type (test/good excluded)",
    "mean_over_defect_types": "unweighted mean over category/defect types (nan skipped)",
    "normal_images": "test/good images per category: any predicted pixel is a false positive (aacc = 1 − FP rate)",
    "nan": "null in this file: the metric is undefined (0/0), e.g. anomaly IoU with no anomaly pixel and none "
    "predicted",
}


@dataclass
class EvalOutcome:
    """Metrics of one test run and the predictions of the preview images."""

    metrics: dict[str, Any]
    preview: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # image, truth, pred


def preview_indices(keys: list[str], count: int) -> list[int]:
    """Up to ``count`` test rows: anomalies round-robin over their keys (sorted), then one normal image.

    >>> preview_indices(["c/a", "c/a", "c/b", "c/good"], 3)
    [0, 2, 3]
    """
    if count <= 0:
        return []
    by_key: dict[str, list[int]] = {}
    normals = []
    for i, k in enumerate(keys):
        (normals if is_normal_key(k) else by_key.setdefault(k, [])).append(i)
    picked: list[int] = []
    budget = count - 1 if normals else count
    depth = 0
    while len(picked) < budget and any(depth < len(v) for v in by_key.values()):
        picked += [by_key[k][depth] for k in sorted(by_key) if depth < len(by_key[k])][: budget - len(picked)]
        depth += 1
    picked += normals[: count - len(picked)]
    return sorted(picked)


def score_segmenter(
    model: torch.nn.Module,
    test: PairSet,
    threshold: float,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    num_preview: int = 6,
    tile: int = 1024,
) -> EvalOutcome:
    """Predict every test image at its own size and accumulate the metrics (see :data:`DEFINITIONS`).

    Images whose longer side exceeds ``tile`` are predicted from overlapping ``tile × tile`` windows.
    """
    by_category, per_category_scores = SegmentationMetrics(), {}
    by_defect, normals = SegmentationMetrics(max_exact_scores=0), SegmentationMetrics(max_exact_scores=0)
    show = set(preview_indices(test.keys, num_preview))
    preview = []
    n = len(test.keys)
    chunk = 4 * batch_size  # images held as float tensors at once
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        xs = [images_from_uint8(test.images[i][None])[0] for i in range(start, stop)]
        small = [j for j, x in enumerate(xs) if max(x.shape[-2:]) <= tile]
        probs: dict[int, np.ndarray] = {}
        for j, p in zip(small, predict_images(model, [xs[j] for j in small], batch_size, device), strict=True):
            probs[j] = p[0].numpy()
        for j in (j for j in range(len(xs)) if j not in probs):
            probs[j] = sliding_window_proba(model, xs[j], tile, batch_size=batch_size, device=device)[0].numpy()
        for j, i in enumerate(range(start, stop)):
            key, truth, prob = test.keys[i], test.masks[i], probs[j]
            pred = prob >= threshold
            category = key.rsplit("/", 1)[0]
            by_category.update(pred, truth, key=category)
            by_category.update_scores(prob, truth)
            per_category_scores.setdefault(category, SegmentationMetrics()).update_scores(prob, truth)
            if is_normal_key(key):
                by_defect.update(pred, truth, key=None)
                normals.update(pred, truth, key=key)
            else:
                by_defect.update(pred, truth, key=key)
            if i in show:
                preview.append((test.images[i], truth, pred))
    cat = by_category.compute()
    defect = by_defect.compute()
    per_category = {}
    for name, values in cat["per_key"].items():
        scores = per_category_scores[name].compute()
        per_category[name] = {**values, "pixel_auroc": scores["pixel_auroc"], "pixel_ap": scores["pixel_ap"]}
    metrics = {
        "overall": {**cat["overall"], "pixel_auroc": cat["pixel_auroc"], "pixel_ap": cat["pixel_ap"]},
        "per_category": per_category,
        "mean_over_categories": cat["mean_over_keys"],
        "per_defect_type": defect["per_key"],
        "mean_over_defect_types": defect["mean_over_keys"],
        "normal_images": normals.compute()["per_key"],
        "score_mode": cat["score_mode"],
    }
    return EvalOutcome(metrics=metrics, preview=preview)


def json_safe(value: Any) -> Any:
    """``value`` with every nan/inf float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _rgb(panel: np.ndarray, side: int) -> np.ndarray:
    """A uint8 (h, w, 3) picture of a (C, H, W) uint8 image or an (H, W) bool mask (white = anomaly), shrunk so its
    longer side is at most ``side``."""
    if panel.dtype == np.bool_:
        rgb = np.repeat((panel.astype(np.uint8) * 255)[..., None], 3, axis=2)
    else:
        img = panel.transpose(1, 2, 0)
        rgb = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    h, w = rgb.shape[:2]
    if max(h, w) > side:
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.BOX))
    return rgb


def contact_sheet(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], gap: int = 4, max_side: int = 256
) -> np.ndarray:
    """One row per test image: image | ground truth | prediction, on a grey background: uint8 (H, W, 3).

    Images may differ in size; each cell is as large as the largest panel (longer side at most ``max_side``).

    >>> sheet = contact_sheet([(np.zeros((1, 8, 8), np.uint8), np.ones((8, 8), bool), np.zeros((8, 8), bool))])
    >>> sheet.shape
    (16, 40, 3)
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    pictures = [[_rgb(panel, max_side) for panel in panels] for panels in rows]
    ch = max(p.shape[0] for row in pictures for p in row)
    cw = max(p.shape[1] for row in pictures for p in row)
    height, width = len(rows) * (ch + gap) + gap, 3 * (cw + gap) + gap
    sheet = np.full((height, width, 3), 96, np.uint8)
    for r, panels in enumerate(pictures):
        for c, picture in enumerate(panels):
            y, x = gap + r * (ch + gap), gap + c * (cw + gap)
            sheet[y : y + picture.shape[0], x : x + picture.shape[1]] = picture
    return sheet

"""Pixel-level segmentation metrics of the evaluation protocol (FAST_SPEC §8.4), accumulated over a whole test set.

:class:`SegmentationMetrics` pools a binary confusion matrix (anomaly = positive class) over every pixel it is given,
overall and per key (e.g. ``"category/defect"``), and reports anomaly IoU, background IoU, mIoU, aAcc, mAcc (anomaly
recall) and the mean class accuracy. From continuous scores it also computes pixel AUROC and average precision,
exactly (sorting, ties handled) while the stored scores fit a memory bound and from a fine histogram afterwards.
Pure numpy (torch tensors are accepted and converted).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CONFUSION_FIELDS = ("anomaly_iou", "background_iou", "miou", "aacc", "macc", "mean_class_acc")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view of a numpy array or torch tensor (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _as_bool(x: Any, name: str) -> np.ndarray:
    """A bool array from a bool array or an integer/float array holding only 0 and 1."""
    arr = _to_numpy(x, name)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise ValueError(f"{name} must be bool (or hold only 0 and 1), got dtype {arr.dtype}")


def _ratio(num: int, den: int) -> float:
    """``num / den``, or nan when ``den == 0`` (the metric is undefined and excluded from means)."""
    return num / den if den > 0 else math.nan


def _nanmean(values: list[float]) -> float:
    """Mean of the non-nan values; nan when all are nan."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


@dataclass
class Confusion:
    """Binary pixel confusion counts, anomaly = positive: TP, FP, FN, TN."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, other: Confusion) -> None:
        """Add ``other``'s counts in place."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn

    def metrics(self) -> dict[str, float]:
        """The metrics of these counts (see :class:`SegmentationMetrics` for the definitions) plus the raw counts."""
        anomaly_iou = _ratio(self.tp, self.tp + self.fp + self.fn)
        background_iou = _ratio(self.tn, self.tn + self.fn + self.fp)
        anomaly_recall = _ratio(self.tp, self.tp + self.fn)
        background_recall = _ratio(self.tn, self.tn + self.fp)
        pixels = self.tp + self.fp + self.fn + self.tn
        return {
            "anomaly_iou": anomaly_iou,
            "background_iou": background_iou,
            "miou": _nanmean([anomaly_iou, background_iou]),
            "aacc": _ratio(self.tp + self.tn, pixels),
            "macc": anomaly_recall,
            "mean_class_acc": _nanmean([anomaly_recall, background_recall]),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "pixels": pixels,
        }


def _curve_stats(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """AUROC and AP from per-threshold positive/negative counts ordered by descending score.

    Entry ``i`` holds the counts of all samples sharing the ``i``-th highest distinct score (a tie group). With
    cumulative ``TP_i``, ``FP_i``, ``P = TP_last``, ``N = FP_last``:
    ``AUROC = Σ_i (FP_i − FP_{i−1})/N · (TP_i + TP_{i−1})/(2P)`` (trapezoids through the tie groups, i.e. ties
    count 1/2 as in the Mann–Whitney U statistic) and ``AP = Σ_i (TP_i − TP_{i−1})/P · TP_i/(TP_i + FP_i)`` (the
    step-wise precision–recall area of scikit-learn's ``average_precision_score``). AUROC is nan without positives or
    without negatives; AP is nan without positives.
    """
    keep = (pos + neg) > 0
    pos, neg = pos[keep].astype(np.int64), neg[keep].astype(np.int64)
    tps, fps = np.cumsum(pos), np.cumsum(neg)
    n_pos = int(tps[-1]) if tps.size else 0
    n_neg = int(fps[-1]) if fps.size else 0
    if n_pos == 0:
        return math.nan, math.nan
    tps_f, fps_f = tps.astype(np.float64), fps.astype(np.float64)
    precision = tps_f / (tps_f + fps_f)
    ap = float(np.sum(pos / n_pos * precision))
    if n_neg == 0:
        return math.nan, ap
    tps_prev = np.concatenate([[0.0], tps_f[:-1]])
    auroc = float(np.sum(neg / n_neg * (tps_f + tps_prev) / (2.0 * n_pos)))
    return auroc, ap


def _exact_counts(scores: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct score (descending) the number of positive and negative samples."""
    uniq, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights=target, minlength=uniq.size).astype(np.int64)
    total = np.bincount(inverse, minlength=uniq.size).astype(np.int64)
    return pos[::-1], (total - pos)[::-1]


def binary_auroc(scores: Any, target: Any) -> float:
    """Exact area under the ROC curve of ``scores`` against the bool ``target`` (ties count 1/2); nan if undefined."""
    s = _to_numpy(scores, "scores").astype(np.float64).ravel()
    return _curve_stats(*_exact_counts(s, _as_bool(target, "target").ravel()))[0]


def binary_average_precision(scores: Any, target: Any) -> float:
    """Exact average precision ``Σ_n (R_n − R_{n−1})·P_n`` over distinct thresholds (scikit-learn's definition)."""
    s = _to_numpy(scores, "scores").astype(np.float64).ravel()
    return _curve_stats(*_exact_counts(s, _as_bool(target, "target").ravel()))[1]


class SegmentationMetrics:
    """Accumulate binary segmentation results over a test set and compute the FAST_SPEC §8.4 metrics.

    With anomaly as the positive class and TP, FP, FN, TN pixel counts:

    - ``anomaly_iou = TP / (TP + FP + FN)``; ``background_iou = TN / (TN + FN + FP)``;
    - ``miou`` = mean of the two IoUs (the mIoU of the paper's tables);
    - ``aacc = (TP + TN) / (TP + FP + FN + TN)`` (pixel accuracy);
    - ``macc = TP / (TP + FN)``: anomaly-pixel recall, the "mAcc"/"Acc" of FAST_SPEC §8.4;
    - ``mean_class_acc = (TP / (TP + FN) + TN / (TN + FP)) / 2``: mean class accuracy (mmseg's mAcc), kept under this
      separate name.

    A ratio whose denominator is 0 is nan (undefined) and is left out of every mean: e.g. a key with no anomaly pixel
    in the target and none predicted has ``anomaly_iou = nan`` (the IoU of empty ∪ empty is skipped), and then
    ``miou`` equals its background IoU. ``compute()`` reports ``overall`` (one confusion pooled over all pixels of all
    updates), ``per_key`` (pooled per key; updates with ``key=None`` count only overall) and ``mean_over_keys`` (the
    nan-skipping mean over keys of each per-key metric).

    Pixel AUROC and AP come from :meth:`update_scores`. Scores are stored and evaluated exactly (sorted, ties as
    groups) until more than ``max_exact_scores`` are held; then they are binned into ``num_bins`` equal-width bins
    over ``score_range`` and every later score is binned too. In histogram mode scores in one bin count as tied,
    so AUROC and AP are those of scores quantised to the bin width ``(hi − lo) / num_bins`` (1e-4 for the defaults).
    Scores must lie inside ``score_range`` (inclusive) in both modes, so switching never changes which inputs are valid.
    """

    def __init__(
        self,
        *,
        max_exact_scores: int = 20_000_000,
        num_bins: int = 10_000,
        score_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if max_exact_scores < 0:
            raise ValueError(f"max_exact_scores = {max_exact_scores} must be >= 0")
        if num_bins < 1:
            raise ValueError(f"num_bins = {num_bins} must be >= 1")
        if not (math.isfinite(score_range[0]) and math.isfinite(score_range[1]) and score_range[0] < score_range[1]):
            raise ValueError(f"score_range = {score_range} must be finite (lo, hi) with lo < hi")
        self.max_exact_scores = max_exact_scores
        self.num_bins = num_bins
        self.score_range = (float(score_range[0]), float(score_range[1]))
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated pixel and score."""
        self.overall = Confusion()
        self.per_key: dict[str, Confusion] = {}
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._num_exact = 0
        self._hist_pos: np.ndarray | None = None
        self._hist_neg: np.ndarray | None = None

    @property
    def score_mode(self) -> str:
        """``"exact"`` or ``"histogram"``."""
        return "exact" if self._hist_pos is None else "histogram"

    def update(self, pred: Any, target: Any, key: str | None = None) -> None:
        """Add binary predictions and ground truth of one image (H, W) or a batch (B, H, W).

        Args:
            pred: bool (or 0/1) predicted anomaly mask.
            target: bool (or 0/1) ground-truth anomaly mask of the same shape.
            key: group name such as ``"category/defect"``; None counts the pixels only in ``overall``.
        """
        p = _as_bool(pred, "pred")
        t = _as_bool(target, "target")
        if p.shape != t.shape or p.ndim not in (2, 3):
            raise ValueError(f"pred {p.shape} and target {t.shape} must share a shape (H, W) or (B, H, W)")
        tp = int(np.count_nonzero(p & t))
        n_pred, n_true = int(np.count_nonzero(p)), int(np.count_nonzero(t))
        conf = Confusion(tp=tp, fp=n_pred - tp, fn=n_true - tp, tn=p.size - n_pred - n_true + tp)
        self.overall.add(conf)
        if key is not None:
            self.per_key.setdefault(key, Confusion()).add(conf)

    def update_scores(self, scores: Any, target: Any) -> None:
        """Add continuous anomaly scores (higher = more anomalous) and the bool ground truth of the same shape."""
        s = _to_numpy(scores, "scores").astype(np.float64, copy=False).ravel()
        t = _as_bool(target, "target").ravel()
        if s.size != t.size:
            raise ValueError(f"scores ({s.size} values) and target ({t.size} values) must have the same size")
        lo, hi = self.score_range
        if s.size and not (np.isfinite(s).all() and s.min() >= lo and s.max() <= hi):
            raise ValueError(
                f"scores must be finite and inside score_range {self.score_range}; got "
                f"[{np.nanmin(s)}, {np.nanmax(s)}] (pass score_range=... for logits)"
            )
        if self._hist_pos is None and self._num_exact + s.size <= self.max_exact_scores:
            self._scores.append(s.copy())
            self._targets.append(t.copy())
            self._num_exact += s.size
            return
        if self._hist_pos is None:
            logger.info(
                "pixel scores exceed %d values: switching to a %d-bin histogram", self.max_exact_scores, self.num_bins
            )
            self._hist_pos = np.zeros(self.num_bins, dtype=np.int64)
            self._hist_neg = np.zeros(self.num_bins, dtype=np.int64)
            for old_s, old_t in zip(self._scores, self._targets, strict=True):
                self._add_histogram(old_s, old_t)
            self._scores, self._targets, self._num_exact = [], [], 0
        self._add_histogram(s, t)

    def _add_histogram(self, s: np.ndarray, t: np.ndarray) -> None:
        """Bin scores: ``bin = min(⌊(s − lo)/(hi − lo)·num_bins⌋, num_bins − 1)``."""
        lo, hi = self.score_range
        idx = np.minimum(((s - lo) / (hi - lo) * self.num_bins).astype(np.int64), self.num_bins - 1)
        pos = np.bincount(idx[t], minlength=self.num_bins)
        self._hist_pos += pos
        self._hist_neg += np.bincount(idx, minlength=self.num_bins) - pos

    def merge(self, other: SegmentationMetrics) -> None:
        """Add the state of another accumulator (e.g. from a parallel worker) with the same score settings."""
        if (other.num_bins, other.score_range) != (self.num_bins, self.score_range):
            raise ValueError("cannot merge SegmentationMetrics with different num_bins or score_range")
        self.overall.add(other.overall)
        for key, conf in other.per_key.items():
            self.per_key.setdefault(key, Confusion()).add(conf)
        for s, t in zip(other._scores, other._targets, strict=True):
            self.update_scores(s, t)
        if other._hist_pos is not None:
            if self._hist_pos is None:  # force histogram mode, then add the other's bins
                self._hist_pos = np.zeros(self.num_bins, dtype=np.int64)
                self._hist_neg = np.zeros(self.num_bins, dtype=np.int64)
                for s, t in zip(self._scores, self._targets, strict=True):
                    self._add_histogram(s, t)
                self._scores, self._targets, self._num_exact = [], [], 0
            self._hist_pos += other._hist_pos
            self._hist_neg += other._hist_neg

    def _score_stats(self) -> tuple[float, float, int]:
        """(AUROC, AP, number of scored pixels)."""
        if self._hist_pos is not None and self._hist_neg is not None:
            total = int(self._hist_pos.sum() + self._hist_neg.sum())
            return (*_curve_stats(self._hist_pos[::-1], self._hist_neg[::-1]), total)
        if self._num_exact == 0:
            return math.nan, math.nan, 0
        s, t = np.concatenate(self._scores), np.concatenate(self._targets)
        return (*_curve_stats(*_exact_counts(s, t)), int(s.size))

    def compute(self) -> dict[str, Any]:
        """All metrics as a plain dict (nan marks an undefined value).

        Returns:
            ``{"overall": {...}, "per_key": {key: {...}}, "mean_over_keys": {...}, "pixel_auroc": float,
            "pixel_ap": float, "score_pixels": int, "score_mode": "exact" | "histogram"}``, where each ``{...}``
            holds ``anomaly_iou, background_iou, miou, aacc, macc, mean_class_acc`` (``overall`` and ``per_key``
            also hold ``tp, fp, fn, tn, pixels``; ``mean_over_keys`` also holds ``num_keys``).
        """
        per_key = {key: self.per_key[key].metrics() for key in sorted(self.per_key)}
        mean_over_keys: dict[str, Any] = {
            name: _nanmean([m[name] for m in per_key.values()]) for name in CONFUSION_FIELDS
        }
        mean_over_keys["num_keys"] = len(per_key)
        auroc, ap, n_scores = self._score_stats()
        return {
            "overall": self.overall.metrics(),
            "per_key": per_key,
            "mean_over_keys": mean_over_keys,
            "pixel_auroc": auroc,
            "pixel_ap": ap,
            "score_pixels": n_scores,
            "score_mode": self.score_mode,
        }

"""Tests of fast_core.evaluation.metrics: confusion metrics against hand-written counts, pooling, AUROC/AP with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fast_core.evaluation import SegmentationMetrics, binary_auroc, binary_average_precision

# Image A: TP at (0,0), FP at (0,1), FN at (1,0), TN elsewhere -> TP=1, FP=1, FN=1, TN=3.
PRED_A = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
TARGET_A = np.array([[1, 0, 0], [1, 0, 0]], dtype=bool)
# Image B: nothing in target or prediction -> TP=FP=FN=0, TN=6.
EMPTY = np.zeros((2, 3), dtype=bool)
# Image C: empty target, two false positives -> TP=0, FP=2, FN=0, TN=4.
PRED_C = np.array([[0, 0, 0], [0, 1, 1]], dtype=bool)


def test_single_image_hand_counts() -> None:
    m = SegmentationMetrics()
    m.update(PRED_A, TARGET_A, key="bottle/crack")
    out = m.compute()["overall"]
    assert (out["tp"], out["fp"], out["fn"], out["tn"], out["pixels"]) == (1, 1, 1, 3, 6)
    assert out["anomaly_iou"] == pytest.approx(1 / 3)  # 1 / (1 + 1 + 1)
    assert out["background_iou"] == pytest.approx(3 / 5)  # 3 / (3 + 1 + 1)
    assert out["miou"] == pytest.approx((1 / 3 + 3 / 5) / 2)
    assert out["aacc"] == pytest.approx(4 / 6)
    assert out["macc"] == pytest.approx(1 / 2)  # anomaly recall 1 / (1 + 1)
    assert out["mean_class_acc"] == pytest.approx((1 / 2 + 3 / 4) / 2)  # background recall 3 / (3 + 1)


def test_empty_target_and_prediction_gives_nan_anomaly_iou() -> None:
    m = SegmentationMetrics()
    m.update(EMPTY, EMPTY, key="good")
    out = m.compute()["overall"]
    assert math.isnan(out["anomaly_iou"]) and math.isnan(out["macc"])
    assert out["background_iou"] == 1.0
    assert out["miou"] == 1.0  # nan skipped
    assert out["mean_class_acc"] == 1.0
    m.update(PRED_C, EMPTY, key="fp")
    fp = m.compute()["per_key"]["fp"]
    assert fp["anomaly_iou"] == 0.0  # defined: 0 / (0 + 2 + 0)
    assert fp["background_iou"] == pytest.approx(4 / 6)


def test_pooled_versus_per_key() -> None:
    m = SegmentationMetrics()
    m.update(PRED_A, TARGET_A, key="a")
    m.update(EMPTY, EMPTY, key="b")
    m.update(PRED_C, EMPTY, key=None)  # only in the pooled confusion
    out = m.compute()
    assert sorted(out["per_key"]) == ["a", "b"]
    overall = out["overall"]
    # pooled: TP=1, FP=1+0+2, FN=1, TN=3+6+4
    assert (overall["tp"], overall["fp"], overall["fn"], overall["tn"]) == (1, 3, 1, 13)
    assert overall["anomaly_iou"] == pytest.approx(1 / 5)
    assert overall["background_iou"] == pytest.approx(13 / 17)
    assert overall["aacc"] == pytest.approx(14 / 18)
    assert overall["macc"] == pytest.approx(1 / 2)
    mean = out["mean_over_keys"]
    assert mean["num_keys"] == 2
    assert mean["anomaly_iou"] == pytest.approx(1 / 3)  # b's nan excluded
    assert mean["background_iou"] == pytest.approx((3 / 5 + 1.0) / 2)
    assert mean["miou"] == pytest.approx(((1 / 3 + 3 / 5) / 2 + 1.0) / 2)
    assert mean["aacc"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert mean["macc"] == pytest.approx(1 / 2)


def test_batch_update_equals_separate_updates_and_accepts_torch() -> None:
    batch_pred = np.stack([PRED_A, PRED_C])
    batch_target = np.stack([TARGET_A, EMPTY])
    batched = SegmentationMetrics()
    batched.update(torch.from_numpy(batch_pred), torch.from_numpy(batch_target).to(torch.uint8), key="k")
    separate = SegmentationMetrics()
    separate.update(PRED_A, TARGET_A, key="k")
    separate.update(PRED_C, EMPTY, key="k")
    assert batched.compute()["per_key"]["k"] == separate.compute()["per_key"]["k"]


@pytest.mark.parametrize(
    "pred, target",
    [
        (np.zeros((2, 3)), np.zeros((3, 2), dtype=bool)),  # shape mismatch
        (np.full((2, 3), 0.5), EMPTY),  # not binary
        (np.zeros(6, dtype=bool), np.zeros(6, dtype=bool)),  # not (H, W) / (B, H, W)
    ],
)
def test_update_rejects_bad_inputs(pred: np.ndarray, target: np.ndarray) -> None:
    with pytest.raises(ValueError):
        SegmentationMetrics().update(pred, target)


# (scores, target, AUROC, AP), worked by hand:
# 1. pairs (pos > neg): 0.8>0.1, 0.8>0.4, 0.35>0.1 -> 3/4; AP = 0.5·1 + 0.5·(2/3).
# 2. ties: pos {0.8, 0.3}, neg {0.8, 0.8, 0.3}: pairs 0.5+0.5+1 + 0+0+0.5 = 2.5 of 6; thresholds 0.8 -> (TP 1, FP 2),
#    0.3 -> (TP 2, FP 3): AP = 0.5·(1/3) + 0.5·(2/5).
# 3. all tied: AUROC 1/2, AP = precision at the only threshold = 2/5.
CURVE_CASES = [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75, 0.5 + 0.5 * 2 / 3),
    ([0.8, 0.8, 0.8, 0.3, 0.3], [1, 0, 0, 1, 0], 2.5 / 6, 0.5 / 3 + 0.5 * 2 / 5),
    ([0.5] * 5, [1, 0, 1, 0, 0], 0.5, 2 / 5),
    ([0.9, 0.7, 0.2], [1, 1, 0], 1.0, 1.0),
]


@pytest.mark.parametrize("scores, target, auroc, ap", CURVE_CASES)
def test_exact_auroc_and_ap_hand_values(scores: list[float], target: list[int], auroc: float, ap: float) -> None:
    s, t = np.array(scores), np.array(target, dtype=bool)
    assert binary_auroc(s, t) == pytest.approx(auroc)
    assert binary_average_precision(s, t) == pytest.approx(ap)
    m = SegmentationMetrics()
    m.update_scores(s[:2], t[:2])  # accumulated over two updates
    m.update_scores(s[2:], t[2:])
    out = m.compute()
    assert out["score_mode"] == "exact" and out["score_pixels"] == len(scores)
    assert out["pixel_auroc"] == pytest.approx(auroc)
    assert out["pixel_ap"] == pytest.approx(ap)


def test_exact_curves_match_brute_force_with_many_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 12, size=300) / 11.0  # heavy ties
    target = rng.random(300) < 0.25
    pos, neg = scores[target], scores[~target]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert binary_auroc(scores, target) == pytest.approx(pairs / (pos.size * neg.size))
    ap, prev_recall = 0.0, 0.0
    for thr in np.unique(scores)[::-1]:
        tp, fp = np.sum(target & (scores >= thr)), np.sum(~target & (scores >= thr))
        recall = tp / target.sum()
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    assert binary_average_precision(scores, target) == pytest.approx(ap)


def test_auroc_ap_undefined_cases() -> None:
    assert math.isnan(binary_auroc(np.array([0.1, 0.2]), np.array([False, False])))
    assert math.isnan(binary_average_precision(np.array([0.1, 0.2]), np.array([False, False])))
    assert math.isnan(binary_auroc(np.array([0.1, 0.2]), np.array([True, True])))
    assert binary_average_precision(np.array([0.1, 0.2]), np.array([True, True])) == 1.0
    out = SegmentationMetrics().compute()
    assert math.isnan(out["pixel_auroc"]) and out["score_pixels"] == 0


def test_histogram_mode_matches_exact_when_bins_separate_scores() -> None:
    scores, target = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], dtype=bool)
    m = SegmentationMetrics(max_exact_scores=2, num_bins=10_000)
    m.update_scores(scores[:2], target[:2])
    assert m.score_mode == "exact"
    m.update_scores(scores[2:], target[2:])  # 4 > 2 stored scores: switch
    out = m.compute()
    assert out["score_mode"] == "histogram" and out["score_pixels"] == 4
    assert out["pixel_auroc"] == pytest.approx(0.75)
    assert out["pixel_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_histogram_mode_treats_one_bin_as_a_tie() -> None:
    scores, target = np.array([0.81, 0.89, 1.0, 0.0]), np.array([1, 0, 1, 0], dtype=bool)
    assert binary_auroc(scores, target) == pytest.approx(3 / 4)  # 0.81 < 0.89 counts 0
    m = SegmentationMetrics(max_exact_scores=0, num_bins=10)
    m.update_scores(scores, target)
    # bins: 0.81 and 0.89 share bin 8 (tie, 1/2); 1.0 lands in the last bin; 0.0 in bin 0.
    assert m.compute()["pixel_auroc"] == pytest.approx(3.5 / 4)


def test_scores_outside_range_rejected() -> None:
    m = SegmentationMetrics()
    with pytest.raises(ValueError, match="score_range"):
        m.update_scores(np.array([0.5, 1.5]), np.array([True, False]))
    m = SegmentationMetrics(score_range=(-10.0, 10.0))
    m.update_scores(np.array([-3.0, 4.0]), np.array([False, True]))
    assert m.compute()["pixel_auroc"] == 1.0


def test_merge_combines_confusions_and_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    target = rng.random(200) < 0.3
    a, b, whole = SegmentationMetrics(), SegmentationMetrics(max_exact_scores=50), SegmentationMetrics()
    a.update(PRED_A, TARGET_A, key="x")
    b.update(PRED_C, EMPTY, key="x")
    a.update_scores(scores[:100], target[:100])
    b.update_scores(scores[100:], target[100:])  # b is in histogram mode
    whole.update(PRED_A, TARGET_A, key="x")
    whole.update(PRED_C, EMPTY, key="x")
    a.merge(b)
    assert a.compute()["per_key"] == whole.compute()["per_key"]
    assert a.score_mode == "histogram"
    # 1e-4 bins separate 200 uniform scores almost surely: equal to the exact value.
    assert a.compute()["pixel_auroc"] == pytest.approx(binary_auroc(scores, target), abs=1e-3)

"""Error bars of the quality benchmark: mean ± std over seeds and the 2σ rule of every target."""

from __future__ import annotations

import pytest

from benchmarks.quality_report import targets
from benchmarks.quality_stats import aggregate_seeds, compare, mean_std


def _run(miou: float, crack: float | None = 0.2) -> dict:
    return {
        "overall": {"miou": miou, "anomaly_iou": 2 * miou - 1},
        "per_defect_type": {"c/crack": {"anomaly_iou": crack}},
        "mean_over_defect_types": {"anomaly_iou": crack},
    }


def _method(*mious: float) -> dict:
    return aggregate_seeds({seed: _run(m) for seed, m in enumerate(mious)})


def test_aggregate_seeds_mean_and_sample_std() -> None:
    agg = aggregate_seeds({0: _run(0.60, 0.1), 1: _run(0.64, 0.3), 2: _run(0.62, None)})
    assert agg["n_seeds"] == 3
    assert agg["overall"]["miou"] == pytest.approx(0.62) and agg["overall_std"]["miou"] == pytest.approx(0.02)
    assert agg["overall"]["pixel_auroc"] is None  # not reported by any seed
    assert agg["per_defect_type"]["c/crack"]["anomaly_iou"] == pytest.approx(0.2)  # the undefined seed is left out
    assert agg["per_defect_type_std"]["c/crack"]["anomaly_iou"] == pytest.approx(0.1414213562)
    assert mean_std([]) == (None, None) and mean_std([float("nan"), 0.5]) == (0.5, None)


def test_two_sigma_rule() -> None:
    a, b = _method(0.70, 0.72, 0.74), _method(0.60, 0.62, 0.64)  # gap 10 points, σ 2 points
    assert compare(a, b, goal=5.0) == {"points": 10.0, "sigma": 2.0, "met": True}
    assert compare(a, b, goal=12.0)["met"] is False  # below the goal
    noisy = _method(0.50, 0.70, 0.90)  # σ_pooled ≈ 14 points: a 10-point gap is noise
    assert compare(a, noisy)["met"] is False and compare(a, noisy)["points"] == pytest.approx(2.0)
    single = _method(0.90)
    assert compare(single, b) == {"points": 28.0, "sigma": None, "met": None}  # one seed: undecided, never "met"
    assert compare(a, None)["met"] is None


def test_targets_pick_the_best_baseline_and_apply_the_rule() -> None:
    methods = {
        "fast": _method(0.70, 0.71, 0.72),
        "cutpaste": _method(0.60, 0.61, 0.62),
        "perlin": _method(0.64, 0.65, 0.66),
        "realpaste": _method(0.695, 0.705, 0.715),
        "real_third": _method(0.66, 0.67, 0.68),
        "real_third_fast": _method(0.69, 0.70, 0.71),
    }
    t = targets({"methods": methods})
    assert t["fast_minus_best_baseline"]["against"] == "perlin"
    assert t["fast_minus_best_baseline"]["points"] == pytest.approx(6.0) and t["fast_minus_best_baseline"]["met"]
    assert t["fast_minus_realpaste"]["points"] == pytest.approx(0.5) and t["fast_minus_realpaste"]["met"] is False
    assert t["real_third_fast_minus_real_third"]["met"] is True  # +3 ≥ +2 and 3 > 2 · 1
    assert t["fast_minus_no_farm"]["met"] is None and t["fast_minus_ddpm"]["met"] is None  # not run

"""Seeds and error bars of the quality benchmark: per-method mean ± std over segmenter seeds, and the 2σ rule.

Each training set is evaluated with k segmenter seeds (initialisation, crop/batch order, augmentation and the choice of
normal images change; the synthetic pairs do not). For a metric with per-seed values v_1 … v_k::

    mean = (1/k) Σ v_i,    std = sqrt( Σ (v_i − mean)² / (k − 1) )     (sample std; undefined for k = 1)

A comparison of methods a and b reports the gap d = mean_a − mean_b and the pooled std
σ = sqrt((std_a² + std_b²) / 2). A difference counts only beyond its noise: a target "A beats B by g" is met when
d ≥ g **and** d > 2σ; it is undecided (None) when either side has fewer than two seeds. An equivalence target
("|d| ≤ t") is met when |d| ≤ t, whatever the seeds; a non-inferiority target ("A is not worse than B beyond the
noise") when d ≥ −2σ. All values here are in percentage points.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

#: The metrics aggregated over seeds (keys of metrics.json's ``overall``).
METRICS = ("miou", "anomaly_iou", "background_iou", "aacc", "macc", "pixel_auroc", "pixel_ap")


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample std) of the finite values; std None with fewer than two, both None with none.

    >>> mean_std([0.5, 0.7])
    (0.6, 0.14142135623730948)
    >>> mean_std([0.5, None])
    (0.5, None)
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean = statistics.fmean(finite)
    return (round(mean, 12), statistics.stdev(finite) if len(finite) > 1 else None)


def aggregate_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One method's seed runs (metrics.json contents by seed) → means, stds and per-defect-type means.

    Returns ``{"n_seeds", "overall", "overall_std", "per_defect_type", "per_defect_type_std",
    "mean_over_defect_types"}`` with the same metric keys as metrics.json (fractions, not points).
    """
    runs = [per_seed[s] for s in sorted(per_seed)]
    overall, overall_std = {}, {}
    for key in METRICS:
        overall[key], overall_std[key] = mean_std([r["overall"].get(key) for r in runs])
    defects = sorted({d for r in runs for d in r["per_defect_type"]})
    per_defect, per_defect_std = {}, {}
    for d in defects:
        m, s = mean_std([r["per_defect_type"].get(d, {}).get("anomaly_iou") for r in runs])
        per_defect[d], per_defect_std[d] = {"anomaly_iou": m}, {"anomaly_iou": s}
    mean_over = {"anomaly_iou": mean_std([r["mean_over_defect_types"].get("anomaly_iou") for r in runs])[0]}
    return {
        "n_seeds": len(runs),
        "overall": overall,
        "overall_std": overall_std,
        "per_defect_type": per_defect,
        "per_defect_type_std": per_defect_std,
        "mean_over_defect_types": mean_over,
    }


def compare(
    a: dict[str, Any] | None, b: dict[str, Any] | None, goal: float = 0.0, metric: str = "miou"
) -> dict[str, Any]:
    """Gap a − b in points, the pooled σ in points, and whether "a beats b by ≥ goal and by > 2σ" holds.

    >>> x = {"overall": {"miou": 0.60}, "overall_std": {"miou": 0.01}}
    >>> y = {"overall": {"miou": 0.50}, "overall_std": {"miou": 0.01}}
    >>> compare(x, y, goal=5.0)["met"], compare(y, x)["met"]
    (True, False)
    """
    if a is None or b is None or a["overall"].get(metric) is None or b["overall"].get(metric) is None:
        return {"points": None, "sigma": None, "met": None}
    gap = round(100.0 * (a["overall"][metric] - b["overall"][metric]), 2)
    sa, sb = a["overall_std"].get(metric), b["overall_std"].get(metric)
    if sa is None or sb is None:
        return {"points": gap, "sigma": None, "met": None}
    sigma = round(100.0 * math.sqrt((sa**2 + sb**2) / 2.0), 2)
    return {"points": gap, "sigma": sigma, "met": bool(gap >= goal and gap > 2.0 * sigma)}


def within(a: dict[str, Any] | None, b: dict[str, Any] | None, tolerance: float, metric: str = "miou") -> dict:
    """Gap a − b in points and whether |gap| ≤ ``tolerance`` (an equivalence target)."""
    result = compare(a, b, 0.0, metric)
    result["met"] = None if result["points"] is None else abs(result["points"]) <= tolerance
    return result


def not_worse(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str = "miou") -> dict[str, Any]:
    """Gap a − b in points, the pooled σ, and whether "a is not worse than b by more than 2σ" (d ≥ −2σ) holds.

    >>> x = {"overall": {"miou": 0.60}, "overall_std": {"miou": 0.02}}
    >>> y = {"overall": {"miou": 0.62}, "overall_std": {"miou": 0.02}}
    >>> not_worse(x, y)["met"], not_worse({**x, "overall": {"miou": 0.50}}, y)["met"]
    (True, False)
    """
    result = compare(a, b, 0.0, metric)
    if result["sigma"] is not None:
        result["met"] = bool(result["points"] >= -2.0 * result["sigma"])
    return result

"""The mask fidelity summary: counts per key and source, Wasserstein ratios and the mask issue's checks."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.mask_fidelity import checks, markdown, summarise


def _fid(w_area: float, w_aspect: float, near: float) -> dict[str, Any]:
    return {
        "stats": {"area_fraction": {"wasserstein": w_area}, "bbox_aspect": {"wasserstein": w_aspect}},
        "shape": {"near_copy_fraction": near, "real_near_copy_fraction": 0.05},
    }


def _rows(key: str, source: str, n: int, reason: str | None = None) -> list[dict[str, Any]]:
    category, defect = key.split("/")
    row = {"category": category, "defect_type": defect, "source": source}
    return [dict(row, reason=reason) if reason else dict(row) for _ in range(n)]


def test_summary_counts_ratios_and_checks() -> None:
    stats = {
        "fidelity_by_source": {
            "augment": {"t/hole": _fid(0.01, 0.2, 0.0), "t/crack": _fid(0.02, 0.1, 0.0)},
            "diffusion": {"t/hole": _fid(0.015, 0.3, 0.02), "t/crack": _fid(0.05, 0.1, 0.0)},
        }
    }
    accepted = _rows("t/hole", "augment", 10) + _rows("t/hole", "diffusion", 19) + _rows("t/crack", "diffusion", 18)
    accepted += _rows("t/crack", "augment", 9)
    rejected = _rows("t/hole", "diffusion", 1, "component_too_small") + _rows("t/crack", "diffusion", 2, "empty")
    s = summarise(stats, accepted, rejected)
    hole = s["per_key"]["t/hole"]["diffusion"]
    assert (hole["accepted"], hole["rejected"], hole["pass"]) == (19, 1, 0.95)
    c = s["checks"]
    assert c["pass_rate"] == pytest.approx(37 / 40) and c["pass_rate_met"] is True
    assert c["w_ratio"]["t/hole"] == {"w_area": pytest.approx(1.5), "w_aspect": pytest.approx(1.5)}
    assert c["w_ratio"]["t/crack"]["w_area"] == pytest.approx(2.5) and c["w_ratio_met"] is False
    assert c["near_copy"] == pytest.approx((0.02 * 19 + 0.0 * 18) / 37) and c["near_copy_met"] is True
    assert c["near_copy_met_every_type"] is True
    assert s["rejected_by_reason"] == {"diffusion": {"empty": 2, "component_too_small": 1}}
    table = markdown(s)
    assert "| `crack` | 1.00 | 0.90 | 0.0200 / 0.0500 (2.5×)" in table and "met: True" in table


def test_without_sampled_masks_nothing_is_decided() -> None:
    s = summarise({"fidelity_by_source": {}}, _rows("t/hole", "augment", 3), [])
    assert s["checks"] == {
        "pass_rate": None,
        "pass_rate_met": None,
        "w_ratio": {},
        "w_ratio_met": None,
        "near_copy": None,
        "near_copy_met": None,
        "near_copy_met_every_type": None,
    }
    assert checks({"t/x": {"diffusion": {"accepted": 1, "rejected": 0}}})["w_ratio_met"] is None  # no distances

"""The quality benchmark end to end on a tiny dataset and model: every training set, the report, and a resumed rerun."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import quality
from benchmarks.quality_report import METHOD_ORDER, anomaly_pairs
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import publish_tiny_model

pytestmark = pytest.mark.ray


def test_quality_benchmark_tiny(tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 3}, n_good=6)
    for mask_file in sorted((root / "tiny" / "ground_truth").rglob("*.png")):  # defects big enough for a 32² model
        mask = np.zeros((32, 40), np.uint8)
        mask[8:20, 10:26] = 255
        Image.fromarray(mask).save(mask_file)
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1)
    # A small segmenter input keeps the trainings short; everything else is the cpu-small preset.
    small = quality.Preset(**{**quality.PRESETS["cpu-small"].__dict__, "seg_size": 32, "synth_cpus": 1})
    monkeypatch.setitem(quality.PRESETS, "cpu-small", small)
    methods = ["fast", "cutpaste", "perlin", "real_third", "real_third_fast"]  # the other samplers: same code path
    argv = [
        str(root),
        "--model-uri",
        model,
        "--pairs-per-defect",
        "2",
        "--seg-steps",
        "2",
        "--work",
        str(tmp_path / "w"),
        "--methods",
        *methods,
    ]
    assert quality.main(argv) == 0
    report_dir = tmp_path / "w" / "report"
    report = json.loads((report_dir / "results.json").read_text())
    assert set(report["methods"]) == set(methods) and report["failed"] == {}
    for name, method in report["methods"].items():
        assert 0.0 <= method["overall"]["miou"] <= 1.0, name
    pairs = {name: anomaly_pairs(m) for name, m in report["methods"].items()}
    assert pairs["fast"] == 4 and pairs["real_third"] == 2 and pairs["real_third_fast"] == 6  # 2 types × 2, 1 + 1
    assert report["datasets"]["perlin"]["written"] == 4 and report["pairs_per_defect"] == 2
    assert report["targets"]["fast_minus_no_farm"]["met"] is None  # FAST w/o FARM was not run
    assert report["targets"]["fast_minus_best_baseline"]["points"] is not None
    contrast = report["ring_contrast"]
    assert set(contrast) == {"real_third", "fast", "cutpaste", "perlin"}
    assert contrast["real_third"]["pairs"] == {"tiny/crack": 1, "tiny/scratch": 1}
    assert all(v >= 0 for v in contrast["cutpaste"]["median_per_defect_type"].values())
    markdown = (report_dir / "results.md").read_text()
    assert "| FAST (AIAS-10 + FARM) | 4 |" in markdown and "| real third + FAST | 6 |" in markdown
    chart = np.asarray(Image.open(report_dir / "miou.png"))
    assert chart.ndim == 3 and chart.shape[0] > 100
    assert [m for m in METHOD_ORDER if m in report["methods"]] == list(report["methods"])

    # A rerun reuses every dataset version and evaluation: same metrics, nothing synthesized or trained again.
    assert quality.main(argv) == 0
    again = json.loads((report_dir / "results.json").read_text())
    assert all(d["already_complete"] for d in again["datasets"].values())
    assert {k: m["overall"] for k, m in again["methods"].items()} == {
        k: m["overall"] for k, m in report["methods"].items()
    }
    assert not any(k.startswith("evaluate_") for k in again["timing_s"])

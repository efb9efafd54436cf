"""The quality benchmark end to end on a tiny dataset and model: training sets × two segmenter seeds, equal pair
counts, mean ± std and the 2σ targets in the report, and a resumed rerun."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from benchmarks import quality
from benchmarks.quality_report import METHOD_ORDER
from fast_core.data.transforms import decode_png
from fast_core.masks.diffusion import MaskDiffusionConfig, MaskDiffusionModel
from fast_core.segmentation import load_segmenter
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import publish_tiny_model

pytestmark = pytest.mark.ray


@pytest.mark.timeout(1200)
def test_quality_benchmark_tiny(tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 3}, n_good=6)
    for mask_file in sorted((root / "tiny" / "ground_truth").rglob("*.png")):  # defects big enough for a 32² model
        mask = np.zeros((32, 40), np.uint8)
        mask[8:20, 10:26] = 255
        Image.fromarray(mask).save(mask_file)
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1, frame="window")  # as the CPU preset's
    # Small segmenter crops keep the trainings short; everything else is the cpu-quick preset.
    changes = {"seg_crop": 32, "seg_batch": 2, "synth_cpus": 1, "window_baseline_size": 48}
    small = quality.Preset(**{**quality.PRESETS["cpu-quick"].__dict__, **changes})
    monkeypatch.setitem(quality.PRESETS, "cpu-quick", small)
    methods = ["fast", "cutpaste", "real_third", "real_third_fast"]  # other samplers and baselines: same code path
    argv = [
        str(root),
        "--model-uri",
        model,
        "--pairs-per-defect",
        "2",
        "--seg-steps",
        "2",
        "--seeds",
        "0",
        "1",
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
        assert method["n_seeds"] == 2 and set(method["per_seed"]) == {"0", "1"}, name
        mious = [s["overall"]["miou"] for s in method["per_seed"].values()]
        assert method["overall"]["miou"] == pytest.approx(np.mean(mious)), name
        assert method["overall_std"]["miou"] == pytest.approx(np.std(mious, ddof=1)), name
        assert 0.0 <= method["overall"]["miou"] <= 1.0, name
    # The baselines read no model: a model-free manifest, pairs at the window run's baseline size; FAST pairs of a
    # window-frame model keep the images' own 32 × 40, in the generator's own folder.
    fast_uri, cutpaste_uri = Path(report["datasets"]["fast"]["uri"]), Path(report["datasets"]["cutpaste"]["uri"])
    assert fast_uri.parent.name == quality.generator_tag(model) and cutpaste_uri.parent.name == "datasets-48px-1ch"
    assert report["frame"] == "window" and report["baseline_geometry"] == {"image_size": 48, "image_channels": 1}
    assert {decode_png(r["image"]["bytes"]).shape for r in pq.read_table(fast_uri / "data").to_pylist()} == {(32, 40)}
    assert (tmp_path / "w" / "manifest-n3-seed0-nomodel").is_dir()
    # Segmenters sit beside their datasets: a second generator in this work folder would keep its own.
    for name, folder in [("fast", fast_uri.parent), ("real_third_fast", fast_uri.parent), ("cutpaste", tmp_path / "w")]:
        assert (folder / "eval" / name / "seed1" / "metrics.json").is_file(), name
    assert (tmp_path / "w" / "eval" / "real_third" / "seed0" / "metrics.json").is_file()
    assert not (tmp_path / "w" / "eval" / "fast").exists()
    # equal footing: the manifest asked ⌈2 · 1.25⌉ = 3 rows per type, every synthetic method trains on 2 per type
    assert report["requested_per_defect"] == 3 and report["datasets"]["cutpaste"]["written"] == 6
    pairs = {name: m["anomaly_pairs"] for name, m in report["methods"].items()}
    assert pairs == {"fast": 4, "cutpaste": 4, "real_third": 2, "real_third_fast": 6}
    assert all(m["shortfall"] == 0 for m in report["methods"].values())
    assert report["methods"]["cutpaste"]["pairs_by_key"] == {
        next(s for s in report["methods"]["cutpaste"]["pairs"] if s.startswith("synthetic:")): {
            "tiny/crack": 2,
            "tiny/scratch": 2,
        }
    }
    assert report["targets"]["fast_minus_no_farm"]["met"] is None  # FAST w/o FARM was not run
    best = report["targets"]["fast_minus_best_baseline"]
    assert best["against"] == "cutpaste" and best["points"] is not None and best["sigma"] is not None
    assert best["met"] == (best["points"] >= 5.0 and best["points"] > 2 * best["sigma"])
    contrast = report["ring_contrast"]
    assert set(contrast) == {"real_third", "fast", "cutpaste"}
    assert contrast["real_third"]["pairs"] == {"tiny/crack": 1, "tiny/scratch": 1}
    assert all(v >= 0 for v in contrast["cutpaste"]["median_per_defect_type"].values())
    assert set(contrast["fast"]["grain_ratio_per_defect_type"]) == {"tiny/crack", "tiny/scratch"}
    signed = contrast["cutpaste"]["signed_median_per_defect_type"]
    unsigned = contrast["cutpaste"]["median_per_defect_type"]
    assert set(signed) == set(unsigned) and all(abs(signed[k]) <= unsigned[k] + 0.01 for k in signed)
    markdown = (report_dir / "results.md").read_text()
    assert "| FAST (AIAS-10 + FARM) | 4 | 0 |" in markdown and "| real third + FAST | 6 | 0 |" in markdown
    assert " ± " in markdown and "Median grain ratio" in markdown and "Median signed contrast" in markdown
    chart = np.asarray(Image.open(report_dir / "miou.png"))
    assert chart.ndim == 3 and chart.shape[0] > 100
    assert [m for m in METHOD_ORDER if m in report["methods"]] == list(report["methods"])

    # A rerun reuses every dataset version and evaluation: same metrics, nothing synthesized or trained again.
    assert quality.main(argv) == 0
    again = json.loads((report_dir / "results.json").read_text())
    assert all(d["already_complete"] for d in again["datasets"].values())
    assert {k: m["per_seed"] for k, m in again["methods"].items()} == {
        k: m["per_seed"] for k, m in report["methods"].items()
    }
    assert not any(k.startswith("evaluate_") for k in again["timing_s"])


def test_baseline_only_run_on_rgb_data_stays_rgb(
    tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No FAST method: no generator is trained or read, baselines paint at the preset's size in colour, and the
    segmenter sees colour images."""
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("rgb",), defects={"spot": 3}, n_good=4, mode="RGB")
    small = quality.Preset(
        **{
            **quality.PRESETS["cpu-quick"].__dict__,
            "seg_crop": 32,
            "seg_batch": 2,
            "synth_cpus": 1,
            "contrast_size": 32,
        }
    )
    monkeypatch.setitem(quality.PRESETS, "cpu-quick", small)
    argv = [str(root), "--pairs-per-defect", "2", "--seg-steps", "1", "--work", str(tmp_path / "w")]
    argv += ["--methods", "cutpaste", "realpaste", "real_third"]
    assert quality.main(argv) == 0
    report = json.loads((tmp_path / "w" / "report" / "results.json").read_text())
    assert report["model_uri"] == "" and report["baseline_geometry"] == {"image_size": 32, "image_channels": 3}
    assert not (tmp_path / "w" / "train").exists()  # no generator was trained
    for method in ("cutpaste", "realpaste"):
        version = Path(report["datasets"][method]["uri"])
        assert version.parent.name == "datasets-32px-3ch" and report["datasets"][method]["written"] == 3
        for row in pq.read_table(version / "data").to_pylist():
            image = decode_png(row["image"]["bytes"])
            assert image.shape == (32, 32, 3) and not np.array_equal(image[..., 0], image[..., 1])
    segmenter = load_segmenter(tmp_path / "w" / "eval" / "cutpaste" / "seed0" / "segmenter")
    assert segmenter.in_channels == 3 and report["methods"]["cutpaste"]["anomaly_pairs"] == 2
    realpaste = report["methods"]["realpaste"]
    assert realpaste["pairs_by_key"] == {f"synthetic:{report['datasets']['realpaste']['uri']}": {"rgb/spot": 2}}


@pytest.mark.timeout(1200)
def test_fast_on_generated_mask_sets(tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """#16's downstream check: FAST on augmented and on augmented + sampled masks, the same counts, seeds and pool."""
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3}, n_good=6)
    for mask_file in sorted((root / "tiny" / "ground_truth").rglob("*.png")):
        mask = np.zeros((32, 40), np.uint8)
        mask[8:20, 10:26] = 255
        Image.fromarray(mask).save(mask_file)
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1, frame="window")
    mask_cfg = MaskDiffusionConfig(
        keys=("tiny/crack",), image_size=16, block_out_channels=(8, 8), norm_num_groups=4,
        frame="box", box_sides={"tiny/crack": [0.4]},
    )  # fmt: skip
    mask_model = MaskDiffusionModel(mask_cfg, seed=0).save(tmp_path / "mask_model")
    changes = {"seg_crop": 32, "seg_batch": 2, "synth_cpus": 1, "window_baseline_size": 48}
    small = quality.Preset(**{**quality.PRESETS["cpu-quick"].__dict__, **changes})
    monkeypatch.setitem(quality.PRESETS, "cpu-quick", small)
    common = [str(root), "--model-uri", model, "--pairs-per-defect", "2", "--seg-steps", "1", "--work"]
    methods = ["--methods", "fast_masks_augment", "fast_masks_mix", "--seeds", "0", "1"]
    with pytest.raises(SystemExit):  # sampled masks without a mask model: refused before any work
        quality.main([*common, str(tmp_path / "w"), *methods])
    assert not (tmp_path / "w").exists()
    assert quality.main([*common, str(tmp_path / "w"), *methods, "--mask-model-uri", str(mask_model)]) == 0
    report = json.loads((tmp_path / "w" / "report" / "results.json").read_text())
    assert set(report["methods"]) == {"fast_masks_augment", "fast_masks_mix"} and report["failed"] == {}
    tag = tmp_path / "w" / quality.generator_tag(model)
    for source in ("augment", "mix"):
        masks = tag / f"masks-{source}-n3-seed0"
        stats = json.loads((masks / "stats.json").read_text())
        assert stats["rows"] == 3, source
        manifest = pq.read_table(tag / f"manifest-n3-seed0-{masks.name}" / "manifest.parquet").to_pylist()
        assert all(r["mask_png"] is not None for r in manifest), source  # the mask stage's masks, embedded
        assert report["datasets"][f"fast_masks_{source}"]["written"] >= 2, source
    assert set(json.loads((tag / "masks-mix-n3-seed0" / "stats.json").read_text())["fidelity_by_source"]) <= {
        "augment",
        "diffusion",
    }
    target = report["targets"]["masks_mix_minus_augment"]
    assert target["sigma"] is not None and target["met"] == (target["points"] >= -2 * target["sigma"])
    manifests = [tag / f"manifest-n3-seed0-masks-{s}-n3-seed0" / "manifest.parquet" for s in ("augment", "mix")]
    normals = [{r["image_uri"] for r in pq.read_table(m).to_pylist()} for m in manifests]
    pool = {str(p) for p in (root / "tiny" / "train" / "good").glob("*.png")}
    assert normals[0] <= pool and normals[1] <= pool  # both paint the dataset's own normal images

"""``pipelines.evaluate``: config checks, training/test set building, metric plumbing, and one Ray Train run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from fast_core.data.layout import read_mvtec, split_anomalies
from fast_core.data.transforms import decode_png
from fast_core.segmentation import load_segmenter
from pipelines.config import load_config
from pipelines.evaluate import EvaluateConfig, ScalingSettings, TrainSource, run_evaluation
from pipelines.evaluate.data import PairSet, build_eval_set, build_train_set, read_synthetic_pairs
from pipelines.evaluate.report import score_segmenter
from tests.helpers.dummy_data import make_dummy_mvtec, truncate_file
from tests.helpers.synthetic_versions import make_synthetic_version


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _cfg(root: Path, out: Path, sources: list[TrainSource], **kw: object) -> EvaluateConfig:
    """The from-scratch ResNet-18 at one resized size (``resolution: resize``); tests of the default pass overrides."""
    base: dict = dict(
        steps=4, batch_size=4, image_size=32, in_channels=1, log_every=2, num_preview=3, resolution="resize",
        encoder="resnet18", pretrained=False,
    )  # fmt: skip
    return EvaluateConfig(dataset_root=str(root), out=str(out), train_sources=sources, **{**base, **kw})


def _native(root: Path, out: Path, sources: list[TrainSource], **kw: object) -> EvaluateConfig:
    """The default segmenter (pretrained EfficientNet-Lite0, native resolution) with tiny crops and budget."""
    base: dict = dict(steps=3, batch_size=2, crop_size=32, log_every=1, num_preview=3)
    return EvaluateConfig(dataset_root=str(root), out=str(out), train_sources=sources, **{**base, **kw})


# --- config -----------------------------------------------------------------------------------------------------------


def test_bad_config_fails_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"dataset_root": "x", "out": "y", "train_sources": [{"kind": "real_third"}]}))
    assert load_config(EvaluateConfig, path).arch == "unet"
    with pytest.raises(ValueError, match="arch = 'segformer' is not one of: 'unet', 'fpn'"):
        load_config(EvaluateConfig, path, ["arch=segformer"])
    with pytest.raises(ValueError, match="unknown key.*'epochs'"):
        load_config(EvaluateConfig, path, ["epochs=3"])
    with pytest.raises(ValueError, match="kind = 'gan'"):
        load_config(EvaluateConfig, path, ["train_sources=[{kind: gan}]"])
    with pytest.raises(ValueError, match="needs uri"):
        load_config(EvaluateConfig, path, ["train_sources=[{kind: synthetic}]"])
    with pytest.raises(ValueError, match="multiple of 32"):
        load_config(EvaluateConfig, path, ["image_size=100"])
    with pytest.raises(ValueError, match="divisible by scaling.num_workers"):
        load_config(EvaluateConfig, path, ["batch_size=5", "scaling.num_workers=2"])
    with pytest.raises(ValueError, match="normal_fraction"):
        load_config(EvaluateConfig, path, ["normal_fraction=1.0"])
    with pytest.raises(ValueError, match="cpus_per_worker = 0"):
        load_config(EvaluateConfig, path, ["scaling.cpus_per_worker=0"])
    default = load_config(EvaluateConfig, path)
    assert (default.encoder, default.pretrained, default.resolution, default.in_channels) == (
        "efficientnet_lite0", True, "native", 3,
    )  # fmt: skip
    with pytest.raises(ValueError, match="efficientnet_lite0 needs in_channels = 3"):
        load_config(EvaluateConfig, path, ["in_channels=1"])
    with pytest.raises(ValueError, match="no pretrained weights for encoder 'resnet18'"):
        load_config(EvaluateConfig, path, ["encoder=resnet18"])
    with pytest.raises(ValueError, match="crop_size = 100 must be a positive multiple of 32"):
        load_config(EvaluateConfig, path, ["crop_size=100"])
    with pytest.raises(ValueError, match="resolution = 'half'"):
        load_config(EvaluateConfig, path, ["resolution=half"])


def test_missing_inputs_fail_before_work(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match="dataset_root not found"):
        run_evaluation(_cfg(tmp_path / "nope", tmp_path / "out", [TrainSource(kind="real_third")]))
    incomplete = make_synthetic_version(tmp_path / "syn", success=False)
    with pytest.raises(ValueError, match="no _SUCCESS"):
        run_evaluation(_cfg(root, tmp_path / "out", [TrainSource(kind="synthetic", uri=str(incomplete))]))
    with pytest.raises(FileNotFoundError, match="synthetic dataset version not found"):
        run_evaluation(_cfg(root, tmp_path / "out", [TrainSource(kind="synthetic", uri=str(tmp_path / "gone"))]))
    assert not (tmp_path / "out").exists()


# --- data -------------------------------------------------------------------------------------------------------------


def test_synthetic_rows_corrupt_png_are_skipped_with_reason(tmp_path: Path) -> None:
    syn = make_synthetic_version(
        tmp_path / "syn",
        defect_types=("scratch", "hole"),
        n_per_defect=5,
        corrupt_images={"widget__scratch__000001"},
        corrupt_masks={"widget__hole__000003"},
    )
    pairs, skipped = read_synthetic_pairs(TrainSource(kind="synthetic", uri=str(syn)), 32, 1)
    images, masks = np.stack(pairs.images), np.stack(pairs.masks)
    assert len(pairs.keys) == 8 and images.shape == (8, 1, 32, 32) and masks.shape == (8, 32, 32)
    assert images.dtype == np.uint8 and masks.dtype == np.bool_
    assert {s.item: s.reason.split(":")[0] for s in skipped} == {
        "widget__scratch__000001": "image",
        "widget__hole__000003": "mask",
    }
    assert all(m.any() for m in pairs.masks)
    limited, _ = read_synthetic_pairs(TrainSource(kind="synthetic", uri=str(syn), max_pairs=3), 32, 1)
    assert limited.items == ["widget__scratch__000000", "widget__scratch__000002", "widget__scratch__000003"]
    none, _ = read_synthetic_pairs(TrainSource(kind="synthetic", uri=str(syn)), 32, 1, categories=["other"])
    assert none.keys == []
    # a part file without the image column is a file-level error naming the file
    bad = tmp_path / "syn" / "data" / "part-00099.parquet"
    pq.write_table(pa.table({"sample_id": ["x"]}), bad)
    with pytest.raises(ValueError, match="part-00099.parquet: missing column"):
        read_synthetic_pairs(TrainSource(kind="synthetic", uri=str(syn)), 32, 1)


def test_train_and_test_sets_follow_the_split(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", n_good=6, n_test_good=2, defects={"scratch": 6, "hole": 4})
    truncate_file(root / "widget" / "test" / "scratch" / "003.png")  # a test anomaly that cannot be decoded
    split = split_anomalies(read_mvtec(root))
    cfg = _cfg(root, tmp_path / "out", [TrainSource(kind="real_third")], normal_fraction=0.5, seed=3)
    train = build_train_set(cfg, split)
    # real third: floor(6/3) + floor(4/3) = 3 anomalies; normal_fraction 0.5 → as many normals
    assert train.counts == {"real_third": 3, "normal": 3}
    assert train.pairs.keys == ["widget/hole"] + ["widget/scratch"] * 2 + ["widget/good"] * 3
    masks = np.stack(train.pairs.masks)
    assert masks[:3].any(axis=(1, 2)).all() and not masks[3:].any()
    assert build_train_set(cfg, split).pairs.items == train.pairs.items  # seeded choice of normals
    test = build_eval_set(cfg, split)
    assert len(test.pairs.keys) == (4 + 3 - 1) + 2
    assert [s.item.endswith("scratch/003.png") for s in test.skipped] == [True]


def test_native_sets_keep_each_image_at_its_own_size_and_colour(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", mode="RGB", vary_size=True, defects={"scratch": 6}, n_test_good=3)
    split = split_anomalies(read_mvtec(root))
    cfg = _native(root, tmp_path / "out", [TrainSource(kind="real_third")], normal_fraction=0.5)
    train, test = build_train_set(cfg, split), build_eval_set(cfg, split)
    for pairs in (train.pairs, test.pairs):
        for image, mask, item in zip(pairs.images, pairs.masks, pairs.items, strict=True):
            original = np.asarray(Image.open(item))
            assert image.shape == (3, *original.shape[:2]) and mask.shape == original.shape[:2]
            assert np.array_equal(image.transpose(1, 2, 0), original)  # RGB end to end, not a grey copy
    assert len({im.shape for im in test.pairs.images}) > 1


def test_synthetic_pairs_return_to_their_normal_image_size_and_equal_counts_per_key(tmp_path: Path) -> None:
    syn = make_synthetic_version(
        tmp_path / "syn",
        defect_types=("hole", "scratch"),
        n_per_defect=5,
        normals_root=tmp_path / "normals",
        corrupt_images={"widget__hole__000001"},
    )
    normal0 = tmp_path / "normals" / "widget" / "train" / "good" / "000.png"
    Image.fromarray(np.full((50, 70), 40, np.uint8)).save(normal0)  # the normal image row 0 was painted on
    (tmp_path / "normals" / "widget" / "train" / "good" / "002.png").unlink()  # rows 2 lose their normal image
    src = TrainSource(kind="synthetic", uri=str(syn), pairs_per_key=3)
    pairs, skipped = read_synthetic_pairs(src, None, 3, source_geometry=True)
    assert pairs.keys == ["widget/hole"] * 3 + ["widget/scratch"] * 3  # 3 per key although hole lost two rows
    assert [i[-1] for i in pairs.items] == ["0", "3", "4", "0", "1", "3"]
    assert pairs.images[0].shape == (3, 50, 70) and pairs.masks[0].shape == (50, 70) and pairs.masks[0].any()
    assert pairs.images[1].shape == (3, 32, 40)
    assert [s.item for s in skipped] == ["widget__hole__000001", "widget__hole__000002", "widget__scratch__000002"]
    assert "source image" in skipped[1].reason and "unreadable" in skipped[1].reason
    stored, _ = read_synthetic_pairs(TrainSource(kind="synthetic", uri=str(syn)), None, 3)
    assert stored.images[0].shape == (3, 32, 40)  # without source geometry: the stored size


def test_metric_plumbing_with_a_known_predictor() -> None:
    """A 'model' that marks bright pixels: perfect on one image, one false-positive pixel on a normal image."""

    class Bright(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x > 0.5).float() * 20 - 10

    images = np.full((3, 1, 32, 32), 10, np.uint8)
    masks = np.zeros((3, 32, 32), bool)
    images[0, 0, 4:8, 4:8] = 250  # anomaly, perfectly found
    masks[0, 4:8, 4:8] = True
    masks[1, 10:12, 10:12] = True  # anomaly that is not bright: 4 false negatives
    images[2, 0, 0, 0] = 250  # normal image with one bright pixel: 1 false positive
    keys = ["c/a", "c/b", "c/good"]
    test = PairSet(list(images), list(masks), keys, ["test"] * 3, ["i0", "i1", "i2"])
    m = score_segmenter(Bright(), test, threshold=0.5, batch_size=2, num_preview=2).metrics
    assert (m["overall"]["tp"], m["overall"]["fp"], m["overall"]["fn"]) == (16, 1, 4)
    assert m["overall"]["anomaly_iou"] == pytest.approx(16 / 21)
    assert m["per_category"]["c"]["miou"] == pytest.approx((16 / 21 + (3 * 1024 - 21) / (3 * 1024 - 16)) / 2)
    assert m["per_defect_type"]["c/a"]["anomaly_iou"] == 1.0 and m["per_defect_type"]["c/b"]["anomaly_iou"] == 0.0
    assert m["mean_over_defect_types"]["anomaly_iou"] == pytest.approx(0.5)
    assert m["normal_images"]["c/good"]["fp"] == 1
    assert 0.5 < m["overall"]["pixel_auroc"] < 1.0


# --- end to end with Ray Train ----------------------------------------------------------------------------------------


@pytest.mark.ray
def test_run_evaluation_end_to_end(tmp_path: Path, ray_local: None) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", n_good=4, n_test_good=2, defects={"scratch": 6})
    syn = make_synthetic_version(tmp_path / "syn", n_per_defect=5, corrupt_images={"widget__scratch__000002"})
    sources = [TrainSource(kind="synthetic", uri=str(syn)), TrainSource(kind="real_third")]
    cfg = _cfg(root, tmp_path / "out", sources, arch="fpn", scaling=ScalingSettings(cpus_per_worker=2))
    report = run_evaluation(cfg)

    out = tmp_path / "out"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == report
    assert report["train"]["pairs"] == {f"synthetic:{syn}": 4, "real_third": 2, "normal": 2}
    assert report["skipped"] == [
        {
            "source": f"synthetic:{syn}",
            "item": "widget__scratch__000002",
            "reason": report["skipped"][0]["reason"],
        }
    ]
    assert report["skipped"][0]["reason"].startswith("image: not a readable image")
    assert report["test"] == {"images": 6, "anomaly_images": 4, "normal_images": 2}
    assert report["overall"]["pixels"] == 6 * 32 * 32
    assert set(report["per_category"]) == {"widget"} and set(report["per_defect_type"]) == {"widget/scratch"}
    assert 0.0 <= report["overall"]["miou"] <= 1.0 and report["threshold"] == 0.5
    assert report["segmenter"]["parameters"] == 13_040_961 and report["train"]["final"]["step"] == 4
    sheet = decode_png((out / "predictions.png").read_bytes())
    assert sheet.shape == (3 * 36 + 4, 3 * 36 + 4, 3)
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["arch"] == "fpn"
    assert load_segmenter(out / "segmenter").arch == "fpn"


@pytest.mark.ray
@pytest.mark.slow
def test_same_config_gives_same_metrics(tmp_path: Path, ray_local: None) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 6})
    reports = [
        run_evaluation(_cfg(root, tmp_path / f"out{i}", [TrainSource(kind="real_third")], steps=3)) for i in (0, 1)
    ]
    for r in reports:
        r.pop("timing_s")
        r["train"].pop("wall_s")
        r["train"]["final"].pop("seconds_per_step")
    assert reports[0] == reports[1]


@pytest.mark.ray
def test_native_pretrained_evaluation_end_to_end(tmp_path: Path, ray_local: None) -> None:
    """The default segmenter: pretrained EfficientNet-Lite0 on native crops, whole RGB test images at their size."""
    root = make_dummy_mvtec(tmp_path / "ds", mode="RGB", vary_size=True, n_good=4, n_test_good=2, defects={"a": 6})
    syn = make_synthetic_version(tmp_path / "syn", n_per_defect=4, mode="RGB", normals_root=tmp_path / "normals")
    sources = [TrainSource(kind="synthetic", uri=str(syn)), TrainSource(kind="real_third")]
    report = run_evaluation(_native(root, tmp_path / "out", sources))
    split = split_anomalies(read_mvtec(root))
    sizes = [Image.open(r.image_path).size for r in [*split.test_anomalies, *split.test_good]]
    assert report["overall"]["pixels"] == sum(w * h for w, h in sizes)  # every test pixel at native size
    assert report["train"]["pairs"] == {f"synthetic:{syn}": 4, "real_third": 2, "normal": 2}
    assert report["train"]["pairs_by_key"][f"synthetic:{syn}"] == {"widget/scratch": 4}
    assert report["segmenter"]["encoder"] == "efficientnet_lite0" and report["resolution"].startswith("native")
    model = load_segmenter(tmp_path / "out" / "segmenter")
    assert model.encoder_name == "efficientnet_lite0" and model.in_channels == 3
    assert decode_png((tmp_path / "out" / "predictions.png").read_bytes()).shape[2] == 3

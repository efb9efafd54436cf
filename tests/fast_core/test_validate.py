"""Dataset validation: every problem kind is found, in one pass, with the file named; counts and split sizes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fast_core.data.layout import read_dataset, read_mvtec
from fast_core.data.validate import validate_dataset
from tests.helpers.dummy_data import (
    add_stray_mask,
    convert_mode,
    delete_mask,
    make_dummy_mvtec,
    resize_mask,
    truncate_file,
    write_empty_mask,
    write_image,
    write_non_binary_mask,
)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_clean_dataset_report(tmp_path: Path, mode: str) -> None:
    root = make_dummy_mvtec(
        tmp_path / "ds", n_good=5, n_test_good=3, defects={"scratch": 7, "hole": 2}, mode=mode, vary_size=True
    )  # type: ignore[arg-type]
    report = validate_dataset(read_dataset(root))
    assert report.ok and report.problems == []
    assert report.counts == {
        ("widget", "train", "good"): 5,
        ("widget", "test", "good"): 3,
        ("widget", "test", "hole"): 2,
        ("widget", "test", "scratch"): 7,
    }
    scratch = report.groups[("widget", "test", "scratch")]
    assert (scratch.gen_train, scratch.test, scratch.masks) == (2, 5, 7)
    hole = report.groups[("widget", "test", "hole")]
    assert (hole.gen_train, hole.test) == (0, 2)
    assert report.groups[("widget", "test", "good")].test == 3
    assert report.groups[("widget", "train", "good")].modes == {mode: 5}
    # vary_size: heights 32, 36, 40 and widths 40, 42, 44, 46 over 7 images.
    assert scratch.height == (32, 40) and scratch.width == (40, 46)
    text = report.format()
    assert "problems: none" in text
    assert any(line.split()[:6] == ["widget", "test", "scratch", "7", "7", "2"] for line in text.splitlines())


def _corrupt(root: Path) -> set[tuple[Path, str]]:
    """Apply one corruption of each kind; returns the (path, kind) pairs that must be reported."""
    cat = root / "widget"
    gt = cat / "ground_truth" / "scratch"
    delete_mask(gt / "000_mask.png")
    (cat / "test" / "good" / "readme.txt").write_text("not an image")
    return {
        (truncate_file(cat / "train" / "good" / "001.png"), "unreadable"),
        (cat / "test" / "scratch" / "000.png", "missing_mask"),  # reported on the image: the mask is gone
        (resize_mask(gt / "001_mask.png", (20, 20)), "size_mismatch"),
        (write_non_binary_mask(gt / "002_mask.png"), "mask_not_binary"),
        (write_empty_mask(gt / "003_mask.png"), "empty_mask"),
        (truncate_file(gt / "004_mask.png", keep=0.6), "unreadable"),
        (add_stray_mask(cat, "scratch", "777"), "stray_mask"),
        (convert_mode(cat / "train" / "good" / "002.png", "RGBA"), "unusual_mode"),
        # 000.tif sorts after 000.png, so it is the one reported.
        (write_image(cat / "test" / "good" / "000.tif", (32, 40), "L", np.random.default_rng(3)), "duplicate_stem"),
        (cat / "test" / "good" / "readme.txt", "unexpected_path"),
    }


def test_every_problem_found_in_one_pass(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 6})
    expected = _corrupt(root)
    report = validate_dataset(read_dataset(root))
    assert {(p.path, p.kind) for p in report.problems} == expected
    assert len(report.problems) == len(expected)
    assert not report.ok
    assert {p.kind for p in report.warnings} == {"unexpected_path"}
    lines = report.format().splitlines()
    for problem in report.problems:
        matching = [line for line in lines if str(problem.path) in line and problem.kind in line]
        assert len(matching) == 1, problem
    assert f"{len(expected) - 1} error(s), 1 warning(s)" in report.format()
    size = next(p for p in report.problems if p.kind == "size_mismatch")
    assert "20x20" in size.message and "40x32" in size.message
    non_binary = next(p for p in report.problems if p.kind == "mask_not_binary")
    assert "expected only 0 and 255" in non_binary.message


def test_binarize_threshold_turns_soft_masks_into_warnings(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 3})
    gt = root / "widget" / "ground_truth" / "scratch"
    write_non_binary_mask(gt / "000_mask.png", 0, 200)  # ramp reaches 200
    write_non_binary_mask(gt / "001_mask.png", 0, 90)  # ramp stays below 100
    strict = validate_dataset(read_dataset(root))
    assert {(p.path.name, p.kind, p.severity) for p in strict.problems} == {
        ("000_mask.png", "mask_not_binary", "error"),
        ("001_mask.png", "mask_not_binary", "error"),
    }
    lenient = validate_dataset(read_dataset(root), binarize_threshold=100)
    assert {(p.path.name, p.kind, p.severity) for p in lenient.problems} == {
        ("000_mask.png", "mask_not_binary", "warning"),
        ("001_mask.png", "mask_not_binary", "warning"),
        ("001_mask.png", "empty_mask", "error"),  # nothing >= 100
    }
    assert "binarized at >= 100" in lenient.problems[0].message
    with pytest.raises(ValueError, match="1..255"):
        validate_dataset(read_dataset(root), binarize_threshold=0)


def test_plain_records_skip_layout_checks(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 3})
    add_stray_mask(root / "widget", "scratch", "555")
    write_empty_mask(root / "widget" / "ground_truth" / "scratch" / "002_mask.png")
    report = validate_dataset(read_mvtec(root))
    assert [(p.path.name, p.kind) for p in report.problems] == [("002_mask.png", "empty_mask")]
    assert report.root is None


def test_mask_mode_and_wide_image(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 3})
    gt = root / "widget" / "ground_truth" / "scratch"
    with Image.open(gt / "000_mask.png") as im:
        im.convert("RGB").save(gt / "000_mask.png")  # still 0/255 but RGB
    convert_mode(root / "widget" / "train" / "good" / "000.png", "I;16")
    report = validate_dataset(read_dataset(root))
    assert {(p.path.name, p.kind) for p in report.problems} == {
        ("000_mask.png", "unusual_mode"),
        ("000.png", "unusual_mode"),
    }
    assert report.groups[("widget", "train", "good")].modes == {"I;16": 1, "L": 3}


def test_report_to_dict_round_trip(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 4})
    shutil.copy(root / "widget" / "test" / "scratch" / "000.png", root / "widget" / "test" / "scratch" / "000.bmp")
    data = validate_dataset(read_dataset(root)).to_dict()
    assert data["ok"] is False
    assert data["problems"] == [
        {
            "path": str(root / "widget" / "test" / "scratch" / "000.png"),
            "kind": "duplicate_stem",
            "severity": "error",
            "message": data["problems"][0]["message"],
        }
    ]
    row = next(g for g in data["groups"] if g["defect_type"] == "scratch")
    assert (row["images"], row["masks"], row["gen_train"], row["test"]) == (5, 5, 1, 4)

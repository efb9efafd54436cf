"""Layout readers (MVTec, BTAD), category detection, the floor(n/3) split, and the pixel loaders."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fast_core.data.layout import (
    ImageRecord,
    find_categories,
    load_image,
    load_mask,
    read_btad,
    read_dataset,
    read_mvtec,
    split_anomalies,
)
from tests.helpers.dummy_data import add_stray_mask, convert_mode, make_dummy_btad, make_dummy_mvtec, write_image


def test_read_mvtec_folder_of_categories(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", categories=("b_cat", "a_cat"), defects={"scratch": 3, "hole": 2})
    records = read_mvtec(root)
    assert len(records) == 2 * (4 + 2 + 3 + 2)
    # Sorted by (category, split, defect, name), whatever the creation order.
    keys = [(r.category, r.split, r.defect_type, r.image_path.name) for r in records]
    assert keys == sorted(keys)
    assert records[0].category == "a_cat"
    by_group: dict[tuple[str, str, str], int] = {}
    for r in records:
        by_group[(r.category, r.split, r.defect_type)] = by_group.get((r.category, r.split, r.defect_type), 0) + 1
    assert by_group[("a_cat", "train", "good")] == 4
    assert by_group[("a_cat", "test", "good")] == 2
    assert by_group[("b_cat", "test", "scratch")] == 3
    assert by_group[("b_cat", "test", "hole")] == 2
    for r in records:
        if r.is_anomaly:
            assert r.mask_path == r.image_path.parents[2] / "ground_truth" / r.defect_type / f"{r.stem}_mask.png"
        else:
            assert r.mask_path is None


def test_root_may_be_a_category_folder(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", categories=("widget", "gadget"))
    whole = read_mvtec(root)
    one = read_mvtec(root / "widget")
    assert one == [r for r in whole if r.category == "widget"]
    assert [p.name for p in find_categories(root / "widget")] == ["widget"]
    assert read_mvtec(root, categories=["widget"]) == one


def test_category_errors(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", categories=("widget",))
    with pytest.raises(ValueError, match=r"unknown category 'nope'; found: widget"):
        read_mvtec(root, categories=["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no category folder found"):
        read_mvtec(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_mvtec(tmp_path / "missing")
    with pytest.raises(ValueError, match="'mvtec', 'btad'"):
        read_dataset(root, layout="visa")  # type: ignore[arg-type]


def test_read_btad(tmp_path: Path) -> None:
    root = make_dummy_btad(tmp_path / "btad", categories=("01", "02"), n_defect=4, mask_ext=".bmp")
    records = read_btad(root)
    assert len(records) == 2 * (4 + 2 + 4)
    assert {r.defect_type for r in records} == {"good", "ko"}
    ko = [r for r in records if r.defect_type == "ko"]
    assert all(r.mask_path is not None and r.mask_path.suffix == ".bmp" for r in ko)
    assert all(r.mask_path.stem == r.stem for r in ko if r.mask_path is not None)
    assert read_dataset(root, "btad").issues == ()
    # Read as MVTec, the BTAD folders do not fit: "ok" in train is not "good".
    mvtec = read_dataset(root, "mvtec")
    assert any(i.kind == "unexpected_path" and i.path.name == "ok" for i in mvtec.issues)


def test_layout_issues_stray_and_unexpected(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds")
    stray = add_stray_mask(root / "widget", "scratch", "999")
    other_defect = add_stray_mask(root / "widget", "crack", "000")  # no test/crack folder at all
    (root / "widget" / "test" / "good" / "notes.txt").write_text("x")
    index = read_dataset(root)
    kinds = {(i.path, i.kind) for i in index.issues}
    assert (stray, "stray_mask") in kinds
    assert (other_defect, "stray_mask") in kinds
    assert (root / "widget" / "test" / "good" / "notes.txt", "unexpected_path") in kinds
    assert len(index.issues) == 3
    assert len(index.records) == 9  # the text file is not a record


def _records(n: int, defect: str = "crack", category: str = "c") -> list[ImageRecord]:
    return [ImageRecord(category, "test", defect, Path(f"{category}/test/{defect}/{i:03d}.png")) for i in range(n)]


@pytest.mark.parametrize(("n", "n_gen"), [(1, 0), (2, 0), (3, 1), (7, 2)])
def test_split_floor_n_over_3(n: int, n_gen: int) -> None:
    recs = _records(n)
    shuffled = recs[:]
    random.Random(n).shuffle(shuffled)
    split = split_anomalies(shuffled)
    assert len(split.gen_train) == n_gen
    assert len(split.test_anomalies) == n - n_gen
    # The first floor(n/3) by file name, whatever the input order.
    assert list(split.gen_train) == recs[:n_gen]
    assert list(split.test_anomalies) == recs[n_gen:]
    assert split == split_anomalies(recs)


def test_split_per_category_and_defect(tmp_path: Path) -> None:
    good_train = ImageRecord("c", "train", "good", Path("c/train/good/a.png"))
    good_test = ImageRecord("c", "test", "good", Path("c/test/good/a.png"))
    recs = [*_records(7, "crack"), *_records(3, "hole"), *_records(6, "crack", "d"), good_train, good_test]
    split = split_anomalies(recs)
    assert len(split.gen_train) == 2 + 1 + 2
    assert len(split.test_anomalies) == 5 + 2 + 4
    assert split.test_good == (good_test,)
    assert split.train_good == (good_train,)
    # Sorted by file name, not by path creation order: "b" sorts after "a".
    named = [ImageRecord("c", "test", "x", Path(f"c/test/x/{s}.png")) for s in ("c", "a", "b")]
    assert [r.stem for r in split_anomalies(named).gen_train] == ["a"]


def test_split_from_disk_is_deterministic(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 7, "hole": 2})
    a, b = split_anomalies(read_mvtec(root)), split_anomalies(read_mvtec(root))
    assert a == b
    assert [r.stem for r in a.gen_train] == ["000", "001"]
    assert len(a.test_good) == 2 and len(a.train_good) == 4


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_load_image_and_mask_varied_sizes(tmp_path: Path, mode: str) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", mode=mode, vary_size=True, defects={"scratch": 3})  # type: ignore[arg-type]
    shapes = set()
    for r in read_mvtec(root):
        img = load_image(r.image_path)
        with Image.open(r.image_path) as im:
            w, h = im.size
        assert img.dtype == np.uint8
        assert img.shape == ((h, w, 3) if mode == "RGB" else (h, w))
        shapes.add(img.shape[:2])
        assert load_image(r.image_path, "L").shape == (h, w)
        assert load_image(r.image_path, "RGB").shape == (h, w, 3)
        if r.mask_path is not None:
            mask = load_mask(r.mask_path)
            raw = np.asarray(Image.open(r.mask_path))
            assert mask.dtype == bool and mask.shape == (h, w)
            assert np.array_equal(mask, raw == 255) and mask.any()
    assert len(shapes) > 1


def test_load_image_mode_rules(tmp_path: Path) -> None:
    p = write_image(tmp_path / "a.png", (8, 10), "RGB", np.random.default_rng(0))
    rgb = load_image(p)
    convert_mode(p, "RGBA")
    with pytest.raises(ValueError, match="needs an explicit mode"):
        load_image(p)
    assert np.array_equal(load_image(p, "RGB"), rgb)
    with pytest.raises(ValueError, match="mode = 'CMYK'"):
        load_image(p, "CMYK")  # type: ignore[arg-type]
    q = write_image(tmp_path / "b.png", (8, 10), "L", np.random.default_rng(0))
    convert_mode(q, "I;16")
    with pytest.raises(ValueError, match="not 8-bit"):
        load_image(q, "L")


def test_load_mask_threshold(tmp_path: Path) -> None:
    p = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1, 127, 128, 255]], np.uint8)).save(p)
    assert load_mask(p).tolist() == [[False, False, False, True, True]]
    assert load_mask(p, threshold=1).tolist() == [[False, True, True, True, True]]
    with pytest.raises(ValueError, match="1..255"):
        load_mask(p, threshold=0)

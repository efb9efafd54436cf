"""``fastgen inspect`` and ``fastgen demo`` through ``jobs.cli.main``; the real datasets in a slow test."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from jobs.cli import main
from tests.helpers.dummy_data import (
    add_stray_mask,
    delete_mask,
    make_dummy_btad,
    make_dummy_mvtec,
    resize_mask,
    truncate_file,
    write_non_binary_mask,
)

SHARED_DATA = Path(os.environ.get("FASTGEN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def _problem_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("ERROR ", "WARNING "))]


def test_inspect_clean_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 7, "hole": 3}, mode="RGB")
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]): line.split()[3:7] for line in out.splitlines() if line.startswith("widget")}
    assert rows[("widget", "train", "good")] == ["4", "-", "-", "-"]
    assert rows[("widget", "test", "good")] == ["2", "-", "-", "2"]
    assert rows[("widget", "test", "scratch")] == ["7", "7", "2", "5"]
    assert rows[("widget", "test", "hole")] == ["3", "3", "1", "2"]
    assert "problems: none" in out and "RGB:7" in out


def test_inspect_corrupted_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", categories=("widget", "gizmo"), defects={"scratch": 4})
    gt = root / "gizmo" / "ground_truth" / "scratch"
    broken = [
        truncate_file(root / "widget" / "test" / "good" / "001.png"),
        resize_mask(gt / "000_mask.png", (10, 12)),
        write_non_binary_mask(gt / "001_mask.png"),
        add_stray_mask(root / "widget", "scratch", "404"),
    ]
    missing = delete_mask(gt / "003_mask.png")
    json_out = tmp_path / "reports" / "inspect.json"
    assert main(["inspect", str(root), "--json", str(json_out)]) == 1
    out = capsys.readouterr().out
    lines = _problem_lines(out)
    assert len(lines) == 5  # one line per problem, nothing else
    for path in broken:
        assert sum(str(path) in line for line in lines) == 1, path
    assert sum(str(missing.parents[2] / "test" / "scratch" / "003.png") in line for line in lines) == 1
    assert "problems: 5 error(s), 0 warning(s)" in out
    data = json.loads(json_out.read_text())
    assert data["ok"] is False
    assert sorted(p["kind"] for p in data["problems"]) == [
        "mask_not_binary",
        "missing_mask",
        "size_mismatch",
        "stray_mask",
        "unreadable",
    ]
    # With a threshold the soft mask becomes a warning, the rest still fails.
    assert main(["inspect", str(root), "--binarize-threshold", "128"]) == 1
    out = capsys.readouterr().out
    assert "problems: 4 error(s), 1 warning(s)" in out
    # One category only.
    assert main(["inspect", str(root), "--category", "gizmo"]) == 1
    assert len(_problem_lines(capsys.readouterr().out)) == 3


def test_inspect_btad_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dummy_btad(tmp_path / "btad")
    assert main(["inspect", str(root), "--layout", "btad"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:4] == ["01", "test", "ko", "3"] for line in out.splitlines())
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgen inspect: error: dataset root not found") and err.count("\n") == 1


def test_demo_dataset_and_inspection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "demo"
    argv = ["demo", "--out", str(out_dir), "--seed", "3", "--size", "48", "--set", "data.n_train_good=3"]
    argv += ["--set", "chain.enabled=false"]
    start = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - start < 30
    out = capsys.readouterr().out
    assert "problems: none" in out
    assert "the demo ended after the inspection" in out
    resolved = yaml.safe_load((out_dir / "config.resolved.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["out"] == str(out_dir)
    assert resolved["data"]["size"] == 48 and resolved["data"]["n_train_good"] == 3
    assert len(list((out_dir / "dataset" / "grid" / "train" / "good").glob("*.png"))) == 3
    assert len(list((out_dir / "dataset" / "woven_fabric" / "ground_truth" / "stain").glob("*_mask.png"))) == 6
    # A rerun with the same settings reuses the folder; other settings are refused with a clear error.
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["demo", "--out", str(out_dir), "--size", "64"]) == 2
    assert "size: 48 there, 64 asked" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x"), "--set", "data.categories=[leather]"]) == 2


@pytest.mark.slow
@pytest.mark.ray
def test_demo_whole_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_local: None) -> None:
    out_dir = tmp_path / "demo"
    argv = [
        "demo",
        "--out",
        str(out_dir),
        "--size",
        "64",
        "--set",
        "data.n_train_good=8",
        "--set",
        "data.n_per_defect=4",
    ]
    argv += ["--set", "chain.train_steps=8", "--set", "chain.evaluate_steps=8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "dataset version (demo, LATEST)" in out
    assert "segmenter trained on the version, tested on held-out real defects: miou" in out
    metrics = json.loads((out_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["overall"]["aacc"] is not None
    assert (out_dir / "runs" / "tiny" / "model" / "model.json").is_file()
    assert (out_dir / "datasets" / "demo" / "LATEST").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (
            "magnetic_tile/magnetic_tile",
            {"good": (762, 190), "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 99},
        ),
        ("kolektorsdd/commutator", {"good": (278, 69), "defect": 52}),
    ],
)
def test_inspect_real_datasets(folder: str, expected: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = SHARED_DATA / folder
    if not root.is_dir():
        pytest.skip(f"real data not present at {root} (set FASTGEN_SHARED_DATA)")
    json_out = tmp_path / "report.json"
    start = time.perf_counter()
    assert main(["inspect", str(root), "--json", str(json_out)]) == 0
    elapsed = time.perf_counter() - start
    assert "problems: none" in capsys.readouterr().out
    data = json.loads(json_out.read_text())
    assert data["problems"] == []
    counts = {(g["split"], g["defect_type"]): (g["images"], g["masks"], g["gen_train"]) for g in data["groups"]}
    expected = dict(expected)
    n_train, n_test = expected.pop("good")
    assert counts.pop(("train", "good"))[0] == n_train
    assert counts.pop(("test", "good"))[0] == n_test
    assert counts == {("test", d): (n, n, n // 3) for d, n in expected.items()}
    assert elapsed < 60

"""Procedural datasets: byte-identical for a seed, exact masks, textures with structure, valid MVTec layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fast_core.data.layout import read_dataset
from fast_core.data.procedural import (
    MARKER_NAME,
    ProceduralConfig,
    file_rng,
    make_procedural_dataset,
    make_texture,
    paint_defect,
    to_uint8,
)
from fast_core.data.validate import validate_dataset

SMALL = {"n_train_good": 2, "n_test_good": 1, "n_per_defect": 2, "size": 48}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = _digest(make_procedural_dataset(tmp_path / "a", seed=7, **SMALL))
    b = _digest(make_procedural_dataset(tmp_path / "b", seed=7, **SMALL))
    c = _digest(make_procedural_dataset(tmp_path / "c", seed=8, **SMALL))
    assert len(a) == 3 * (2 + 1 + 3 * 2 * 2)  # images + masks of 3 defects
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)
    # A file does not depend on how many other files were made.
    d = _digest(make_procedural_dataset(tmp_path / "d", seed=7, categories=("grid",), **{**SMALL, "n_per_defect": 1}))
    assert d["grid/test/hole/000.png"] == a["grid/test/hole/000.png"]


def test_dataset_layout_modes_and_validation(tmp_path: Path) -> None:
    root = make_procedural_dataset(tmp_path / "ds", seed=0, **SMALL)
    index = read_dataset(root)
    assert index.categories == ("brushed_metal", "grid", "woven_fabric")
    report = validate_dataset(index)
    assert report.ok and report.problems == []
    assert report.counts[("woven_fabric", "test", "stain")] == 2
    assert report.groups[("woven_fabric", "train", "good")].modes == {"RGB": 2}
    assert report.groups[("brushed_metal", "train", "good")].modes == {"L": 2}
    assert report.groups[("grid", "test", "hole")].modes == {"L": 2}
    assert report.groups[("grid", "test", "hole")].width == (48, 48)
    for r in index.records:
        if r.mask_path is not None:
            values = np.unique(np.asarray(Image.open(r.mask_path)))
            assert values.tolist() == [0, 255]
    assert json.loads((root / MARKER_NAME).read_text())["seed"] == 0


@pytest.mark.parametrize("category", ["brushed_metal", "woven_fabric", "grid"])
@pytest.mark.parametrize("defect", ["scratch", "hole", "stain"])
def test_mask_is_exactly_the_painted_region(category: str, defect: str) -> None:
    for i in range(3):
        rng = file_rng(3, category, defect, i)
        texture = make_texture(category, 64, rng)
        painted, mask = paint_defect(texture, defect, rng)
        before, after = to_uint8(texture), to_uint8(painted)
        changed = (before != after) if before.ndim == 2 else (before != after).any(axis=-1)
        assert mask.shape == (64, 64) and mask.dtype == bool
        assert 0 < mask.sum() < 0.5 * mask.size
        assert not changed[~mask].any()  # nothing painted outside the mask
        assert changed[mask].mean() > 0.9  # and (almost) every mask pixel visibly changed


def test_textures_have_structure() -> None:
    rng = np.random.default_rng(0)
    metal = make_texture("brushed_metal", 128, rng)
    # Streaks run along x: neighbours along a row differ much less than along a column.
    assert np.abs(np.diff(metal, axis=1)).mean() * 2 < np.abs(np.diff(metal, axis=0)).mean()
    fabric = make_texture("woven_fabric", 128, rng)
    assert fabric.shape == (128, 128, 3) and np.ptp(fabric.mean(axis=(0, 1))) > 0.02  # coloured, not grey
    grid = make_texture("grid", 128, rng)
    # A lattice: the row-wise autocorrelation peaks at the wire period (11..15 px) and is low near half of it.
    r = grid - grid.mean(axis=1, keepdims=True)
    ac = np.array([(r[:, :-k] * r[:, k:]).mean() for k in range(1, 20)]) / (r * r).mean()  # ac[k - 1]: lag k
    assert ac[10:15].max() > 0.5
    assert ac[4:8].min() < 0.2
    for img in (metal, fabric, grid):
        assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1


def test_config_and_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown 'leather'; valid: 'brushed_metal'"):
        ProceduralConfig(categories=("leather",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size = 16 must be >= 32"):
        make_procedural_dataset(tmp_path / "x", size=16)
    with pytest.raises(ValueError, match="n_per_defect = -1"):
        ProceduralConfig(n_per_defect=-1)
    with pytest.raises(ValueError, match="defect = 'dent'"):
        paint_defect(np.zeros((32, 32)), "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="seed = -1"):
        file_rng(-1, "grid")


def test_existing_root_rules(tmp_path: Path) -> None:
    root = make_procedural_dataset(tmp_path / "ds", seed=1, categories=("grid",), **SMALL)
    before = _digest(root)
    make_procedural_dataset(root, seed=1, categories=("grid",), **SMALL)  # same parameters: rewritten identically
    assert _digest(root) == before
    with pytest.raises(ValueError, match="size: 48 there, 64 asked"):
        make_procedural_dataset(root, seed=1, categories=("grid",), **{**SMALL, "size": 64})
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_procedural_dataset(other, seed=1, **SMALL)

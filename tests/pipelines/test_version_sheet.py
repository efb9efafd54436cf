"""The contact sheet (preview.png): tile sizes and content, the outline, placeholders, selection and byte-stability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fast_core.data.transforms import decode_png
from pipelines.shards import ShardCommit, ShardStore
from pipelines.synthesize.preview import shards_to_read, sheet_input
from pipelines.synthesize.schema import DATA_SCHEMA, REJECTED_SCHEMA
from pipelines.synthesize.sheet import (
    MIN_TILE,
    OUTLINE_RGB,
    PLACEHOLDER,
    SheetGroup,
    SheetPair,
    fit,
    inner_outline,
    render_sheet,
)
from tests.helpers.synthetic_versions import make_synthetic_version
from tests.helpers.version_outputs import finish_version, shard_commits, write_model_and_manifest


def _pair(sid: str, h: int, w: int, seed: int, normal: bool = True) -> SheetPair:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 3 : w // 2] = 255
    return SheetPair(sid, image, mask, rng.integers(0, 255, (2 * h, w), dtype=np.uint8) if normal else None)


def _tile(pixels: np.ndarray, box) -> np.ndarray:
    return pixels[box.y : box.y + box.size, box.x : box.x + box.size]


def _centred(tile: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The region of ``tile`` where a centred ``content`` lies."""
    h, w = content.shape[:2]
    oy, ox = (tile.shape[0] - h) // 2, (tile.shape[1] - w) // 2
    return tile[oy : oy + h, ox : ox + w]


def test_tiles_are_readable_size_and_hold_the_scaled_pairs() -> None:
    # an upscale ×4.8 (nearest), a ×1.6 (bicubic) and a downscale ×0.64 (Lanczos); one unreadable normal image
    groups = [
        SheetGroup("widget/crack", 9, (_pair("a", 32, 40, 0), _pair("b", 100, 120, 1, normal=False))),
        SheetGroup("widget/scratch", 1, (_pair("c", 300, 200, 2),)),
    ]
    sheet = render_sheet(groups, "tiles / v1")
    assert sheet.pixels.dtype == np.uint8 and sheet.pixels.shape[2] == 3
    assert [(t.key, t.sample_id, t.kind) for t in sheet.tiles[:3]] == [
        ("widget/crack", "a", "normal"),
        ("widget/crack", "a", "synthesized"),
        ("widget/crack", "a", "outline"),
    ]
    assert len(sheet.tiles) == 9 and all(t.size >= MIN_TILE for t in sheet.tiles)
    pairs = {p.sample_id: p for g in groups for p in g.pairs}
    for box in sheet.tiles:
        tile, pair = _tile(sheet.pixels, box), pairs[box.sample_id]
        synth = fit(pair.image, box.size)
        assert max(synth.shape[:2]) == box.size  # the longer side fills the tile
        if box.kind == "synthesized":
            np.testing.assert_array_equal(_centred(tile, synth), synth)
        elif box.kind == "outline":
            ring = inner_outline(fit(pair.mask, box.size, nearest=True) > 0)
            region = _centred(tile, synth)
            assert ring.sum() > 0 and (region[ring] == OUTLINE_RGB).all()
            np.testing.assert_array_equal(region[~ring], synth[~ring])
        elif pair.normal is None:
            assert (tile[:8, :8] == PLACEHOLDER).all() and (tile[-8:, -8:] == PLACEHOLDER).all()
        else:
            normal = fit(np.repeat(pair.normal[..., None], 3, axis=2), box.size)
            np.testing.assert_array_equal(_centred(tile, normal), normal)


def test_small_images_upscale_with_nearest_and_outline_is_inner() -> None:
    checker = np.array([[0, 255], [255, 0]], np.uint8)
    big = fit(checker, 128)
    assert big.shape == (128, 128) and set(np.unique(big[:64, :64])) == {0} and set(np.unique(big[:64, 64:])) == {255}
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    ring = inner_outline(mask, 1)
    assert ring.sum() == 12 and not ring[2:4, 2:4].any() and not (ring & ~mask).any()


def test_sheet_refuses_small_tiles_and_empty_input() -> None:
    with pytest.raises(ValueError, match="minimum tile side"):
        render_sheet([SheetGroup("c/d", 1, (_pair("a", 8, 8, 0),))], "t", tile=MIN_TILE - 1)
    with pytest.raises(ValueError, match="at least one pair"):
        render_sheet([SheetGroup("c/d", 0, ())], "t")


def test_only_the_shards_holding_the_first_pairs_are_read() -> None:
    def commit(k: int, counts: dict[str, int] | None) -> ShardCommit:
        extra = {} if counts is None else {"written_by_key": counts}
        return ShardCommit(shard=k, sample_ids=[f"s{k}"], rejected_ids=[], files={}, run_id="r", counts=extra)

    commits = {0: commit(0, {"c/a": 3}), 1: commit(1, {"c/a": 3}), 2: commit(2, {"c/a": 1, "c/b": 2})}
    assert shards_to_read(commits, 2) == [0, 2] and shards_to_read(commits, 4) == [0, 1, 2]
    commits[3] = commit(3, None)  # a marker without the counter is always read
    assert shards_to_read(commits, 2) == [0, 2, 3]


def test_preview_is_the_first_pairs_per_defect_type_and_byte_stable(tmp_path: Path) -> None:
    model, manifest = write_model_and_manifest(tmp_path)
    sheets = []
    for copy in ("a", "b"):  # the same version written twice, in two places: the same PNG bytes
        root = make_synthetic_version(
            tmp_path / copy / "tiles" / "versions" / "v1",
            defect_types=("scratch", "crack"),
            n_per_defect=5,
            rows_per_part=3,
            mode="RGB",
            normals_root=tmp_path / copy / "normals",
            success=False,
        )
        finish_version(str(root), shard_commits(root), model, manifest, preview_pairs=3)
        sheets.append((root / "preview.png").read_bytes())
    assert sheets[0] == sheets[1]
    # the written sheet is exactly the render of the first 3 pairs per defect type, in sample order
    root = tmp_path / "a" / "tiles" / "versions" / "v1"
    store = ShardStore(str(root), None, data_schema=DATA_SCHEMA, rejected_schema=REJECTED_SCHEMA)
    chosen = sheet_input(store, shard_commits(root), 3, None)
    assert [g.key for g in chosen.groups] == ["widget/crack", "widget/scratch"]  # sorted keys
    assert [[p.sample_id for p in g.pairs] for g in chosen.groups] == [
        [f"widget__crack__{i:06d}" for i in range(3)],
        [f"widget__scratch__{i:06d}" for i in range(3)],
    ]
    assert [g.total for g in chosen.groups] == [5, 5] and chosen.unreadable_normals == []
    rendered = render_sheet(chosen.groups, "tiles / v1")
    np.testing.assert_array_equal(decode_png(sheets[0]), rendered.pixels)
    assert all(t.size >= MIN_TILE for t in rendered.tiles) and len(rendered.tiles) == 2 * 3 * 3

"""``pipelines.manifest``: pairing, determinism, counts, split hygiene, immutability, validation, shards and S3."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fast_core.data.layout import load_mask, read_mvtec, split_anomalies
from fast_core.data.transforms import decode_png, encode_png
from pipelines import storage
from pipelines.config import load_config
from pipelines.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    SUMMARY_FILE,
    read_manifest,
    row_seed,
    table_to_parquet,
    write_manifest,
)
from pipelines.manifest_config import ManifestConfig
from tests.helpers.dummy_data import make_dummy_mvtec, truncate_file, write_empty_mask


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Two categories; per category scratch has 9 anomalies (3 training masks), hole 4 (1 training mask)."""
    return make_dummy_mvtec(
        tmp_path / "ds", categories=("gizmo", "widget"), n_good=5, defects={"scratch": 9, "hole": 4}
    )


def _cfg(root: Path, out: str | Path, *overrides: str) -> ManifestConfig:
    base = [f"dataset.root={root}", "model_uri=s3://models/tiny", f"out={out}", "counts.default=9"]
    return load_config(ManifestConfig, None, [*base, *overrides])


def test_same_config_same_bytes(dataset: Path, tmp_path: Path) -> None:
    a = write_manifest(_cfg(dataset, tmp_path / "a", "job_seed=3"))
    b = write_manifest(_cfg(dataset, tmp_path / "b", "job_seed=3"))
    assert a.status == b.status == "written" and a.rows == 4 * 9
    for name in (MANIFEST_FILE, SUMMARY_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = write_manifest(_cfg(dataset, tmp_path / "c", "job_seed=4"))
    t_a, t_c = read_manifest(str(tmp_path / "a")), read_manifest(str(tmp_path / "c"))
    assert t_a["sample_id"].to_pylist() == t_c["sample_id"].to_pylist()
    assert t_a["seed"].to_pylist() != t_c["seed"].to_pylist() and other.rows == a.rows


def test_rows_counts_ids_seeds_and_pairing(dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(dataset, tmp_path / "m", "job_seed=7", "counts.per_key={widget/hole: 5, gizmo/scratch: 12}")
    write_manifest(cfg)
    t = read_manifest(str(tmp_path / "m"))
    assert tuple(t.column_names) == MANIFEST_COLUMNS and t.schema.equals(MANIFEST_SCHEMA)
    rows = t.to_pylist()
    counts = Counter(r["prompt"] for r in rows)
    assert counts == {"gizmo/hole": 9, "gizmo/scratch": 12, "widget/hole": 5, "widget/scratch": 9}
    assert [r["sample_id"] for r in rows[:2]] == ["gizmo__hole__000000", "gizmo__hole__000001"]
    assert [r["sample_id"] for r in rows] == sorted(r["sample_id"] for r in rows)  # fixed row order
    for r in rows:
        assert r["prompt"] == f"{r['category']}/{r['defect_type']}"
        assert r["sample_id"] == f"{r['category']}__{r['defect_type']}__{int(r['sample_id'][-6:]):06d}"
        assert r["seed"] == row_seed(7, r["sample_id"]) and 0 <= r["seed"] < 2**63
        assert r["mask_png"] is None and Path(r["mask_uri"]).is_absolute() and r["model_uri"] == "s3://models/tiny"
        assert r["mask_source"] == f"real:{Path(r['mask_uri']).stem}"
    # gizmo/scratch has 3 training masks: 12 rows use each exactly 4 times.
    uses = Counter(r["mask_uri"] for r in rows if r["prompt"] == "gizmo/scratch")
    assert sorted(uses.values()) == [4, 4, 4]
    summary = json.loads((tmp_path / "m" / SUMMARY_FILE).read_text())
    assert summary["rows"] == 35 and summary["keys"]["gizmo/scratch"]["masks_used"] == 3
    assert summary["job_seed"] == 7 and summary["counts"]["widget/hole"] == 5 and summary["masks_skipped"] == 0
    assert len(summary["created_by"]["config_sha256"]) == 64


def test_keys_are_independent_of_each_other(dataset: Path, tmp_path: Path) -> None:
    write_manifest(_cfg(dataset, tmp_path / "all"))
    one_cfg = _cfg(dataset, tmp_path / "one", "dataset.categories=[widget]", "counts.per_key={widget/scratch: 20}")
    write_manifest(one_cfg)
    full, one = read_manifest(str(tmp_path / "all")).to_pylist(), read_manifest(str(tmp_path / "one")).to_pylist()
    by_id = {r["sample_id"]: r for r in full}
    hole = [r for r in one if r["defect_type"] == "hole"]
    assert len(hole) == 9 and hole == [by_id[r["sample_id"]] for r in hole]
    # A larger count keeps the mask cycle (the permutation is drawn before the image indices).
    scratch_full = [r["mask_uri"] for r in full if r["prompt"] == "widget/scratch"]
    scratch_one = [r["mask_uri"] for r in one if r["defect_type"] == "scratch"]
    assert scratch_one[:9] == scratch_full and scratch_one[9:12] == scratch_one[:3]


def test_never_reads_the_test_split(dataset: Path, tmp_path: Path) -> None:
    write_manifest(_cfg(dataset, tmp_path / "m", "counts.default=40"))
    split = split_anomalies(read_mvtec(dataset))
    train_masks = {str(r.mask_path.resolve()) for r in split.gen_train}
    test_files = {str(r.image_path.resolve()) for r in (*split.test_anomalies, *split.test_good)}
    test_files |= {str(r.mask_path.resolve()) for r in split.test_anomalies}
    train_good = {str(r.image_path.resolve()) for r in split.train_good}
    rows = read_manifest(str(tmp_path / "m")).to_pylist()
    assert {r["mask_uri"] for r in rows} == train_masks  # every training mask used, nothing else
    assert {r["image_uri"] for r in rows} <= train_good
    assert not ({r["mask_uri"] for r in rows} | {r["image_uri"] for r in rows}) & test_files
    for r in rows:  # normal images come from the row's own category
        assert f"/{r['category']}/train/good/" in r["image_uri"]


def test_embedded_masks_decode_to_the_real_mask(dataset: Path, tmp_path: Path) -> None:
    write_manifest(_cfg(dataset, tmp_path / "m", "masks.embed_png=true"))
    rows = read_manifest(str(tmp_path / "m")).to_pylist()
    gt = dataset / "widget" / "ground_truth" / "hole" / "000_mask.png"
    row = next(r for r in rows if r["prompt"] == "widget/hole")
    assert row["mask_uri"] is None and row["mask_source"] == "real:000_mask"
    np.testing.assert_array_equal(decode_png(row["mask_png"], "L") > 0, load_mask(gt))


def test_immutability(dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(dataset, tmp_path / "m")
    write_manifest(cfg)
    parquet, summary = tmp_path / "m" / MANIFEST_FILE, tmp_path / "m" / SUMMARY_FILE
    before = parquet.stat().st_mtime_ns, parquet.read_bytes()
    # Same content (categories spelled out) → no-op.
    again = write_manifest(_cfg(dataset, tmp_path / "m", "dataset.categories=[gizmo, widget]"))
    assert again.status == "unchanged" and (parquet.stat().st_mtime_ns, parquet.read_bytes()) == before
    # A manifest.json lost to an interrupted write is completed on rerun.
    summary.unlink()
    assert write_manifest(cfg).status == "unchanged" and json.loads(summary.read_text())["rows"] == 36
    with pytest.raises(ValueError, match="already holds a different manifest.*choose a new out"):
        write_manifest(_cfg(dataset, tmp_path / "m", "job_seed=1"))
    assert parquet.read_bytes() == before[1]


def test_bad_masks_are_skipped_and_counted(dataset: Path, tmp_path: Path) -> None:
    gt = dataset / "widget" / "ground_truth" / "scratch"
    write_empty_mask(gt / "000_mask.png")
    truncate_file(gt / "001_mask.png")
    hole = dataset / "gizmo" / "ground_truth" / "hole" / "000_mask.png"
    write_empty_mask(hole)
    with pytest.raises(ValueError, match="defect gizmo/hole: no usable real mask"):
        write_manifest(_cfg(dataset, tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()  # config problems fail before anything is written
    write_manifest(_cfg(dataset, tmp_path / "m", "dataset.categories=[widget]", "counts.default=3"))
    s = json.loads((tmp_path / "m" / SUMMARY_FILE).read_text())
    assert s["masks_skipped"] == 2 and s["keys"]["widget/scratch"]["masks_skipped"] == 2
    assert s["keys"]["widget/scratch"]["masks_used"] == 1
    reasons = {d["mask_source"]: d["reason"] for d in s["skipped_masks"]}
    assert reasons["real:000_mask"] == "empty" and reasons["real:001_mask"].startswith("unreadable")


def test_bad_config(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown key.*'jobseed'.*valid keys: dataset, masks"):
        _cfg(dataset, tmp_path / "m", "jobseed=1")
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        write_manifest(_cfg(tmp_path / "nope", tmp_path / "m"))
    with pytest.raises(ValueError, match=r"counts.default = 0 must be in 1\.\."):
        _cfg(dataset, tmp_path / "m", "counts.default=0")
    with pytest.raises(ValueError, match=r"per_key\['widget/hole'\] = -1"):
        _cfg(dataset, tmp_path / "m", "counts.per_key={widget/hole: -1}")
    with pytest.raises(ValueError, match="unknown defect key.*'widget/dent'.*gizmo/hole, gizmo/scratch"):
        write_manifest(_cfg(dataset, tmp_path / "m", "counts.per_key={widget/dent: 3}"))
    with pytest.raises(ValueError, match="shards_uri is required"):
        _cfg(dataset, tmp_path / "m", "masks.source=shards")
    assert _cfg(dataset, tmp_path / "m", "model_uri=''").model_uri == ""  # a manifest for baselines only
    with pytest.raises(ValueError, match="dataset roots are local"):
        _cfg("s3://b/ds", tmp_path / "m")  # type: ignore[arg-type]
    assert not (tmp_path / "m").exists()


def _rewrite(folder: Path, table: pa.Table) -> str:
    (folder / MANIFEST_FILE).write_bytes(table_to_parquet(table))
    return str(folder)


def test_read_manifest_validates(dataset: Path, tmp_path: Path) -> None:
    write_manifest(_cfg(dataset, tmp_path / "m"))
    good = read_manifest(str(tmp_path / "m"))
    uri_col = good.column_names.index("mask_uri")
    both = good.set_column(good.column_names.index("mask_png"), "mask_png", pa.array([b"x"] * good.num_rows))
    with pytest.raises(ValueError, match=r"row 0 \(sample_id 'gizmo__hole__000000'\): both mask_uri and mask_png"):
        read_manifest(_rewrite(tmp_path / "m", both))
    uris = good["mask_uri"].to_pylist()
    uris[5] = None
    neither = good.set_column(uri_col, "mask_uri", pa.array(uris, pa.string()))
    with pytest.raises(ValueError, match=r"row 5 \(sample_id 'gizmo__hole__000005'\): neither"):
        read_manifest(_rewrite(tmp_path / "m", neither))
    with pytest.raises(ValueError, match="expected, in this order: sample_id"):
        read_manifest(_rewrite(tmp_path / "m", good.drop_columns(["prompt"])))
    ids = good["sample_id"].to_pylist()
    ids[3] = ids[2]
    dup = good.set_column(0, "sample_id", pa.array(ids))
    with pytest.raises(ValueError, match=r"row 3 \(sample_id 'gizmo__hole__000002'\): duplicate sample_id"):
        read_manifest(_rewrite(tmp_path / "m", dup))
    (tmp_path / "m" / SUMMARY_FILE).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        read_manifest(str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="no manifest at"):
        read_manifest(str(tmp_path / "nothing"))


def _mask_shards(root: Path, dataset: Path) -> Path:
    """A mask-stage output in the output-dataset layout: data/part-*.parquet, masks/ side files, _SUCCESS."""
    rows = []
    for i, (cat, defect) in enumerate([("widget", "hole")] * 3 + [("widget", "scratch")] * 2 + [("other", "x")]):
        sid = f"m{i:03d}"
        mask = np.zeros((16, 16), bool)
        mask[i : i + 4, 2:9] = i != 1  # m001 is empty
        png = encode_png(mask)
        side = root / "masks" / cat / defect / f"{sid}_mask.png"
        side.parent.mkdir(parents=True, exist_ok=True)
        side.write_bytes(png)
        rows.append({"sample_id": sid, "category": cat, "defect_type": defect, "mask": {"bytes": png, "path": None}})
    mask_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("sample_id", pa.string()), ("category", pa.string()), ("defect_type", pa.string())])
    (root / "data").mkdir(parents=True)
    for k in range(2):  # two shards, rows out of sample_id order
        part = pa.Table.from_pylist(rows[k::2], schema=schema.append(pa.field("mask", mask_type)))
        pq.write_table(part, root / "data" / f"part-{k:05d}.parquet")
    (root / "_SUCCESS").write_text("")
    return root


def test_shards_source(dataset: Path, tmp_path: Path) -> None:
    shards = _mask_shards(tmp_path / "shards", dataset)
    base = ["masks.source=shards", f"masks.shards_uri={shards}", "dataset.categories=[widget]"]
    write_manifest(_cfg(dataset, tmp_path / "emb", *base))
    rows = read_manifest(str(tmp_path / "emb")).to_pylist()
    holes = [r for r in rows if r["prompt"] == "widget/hole"]
    assert {r["mask_source"] for r in holes} == {"shard:m000", "shard:m002"}  # m001 (empty) skipped
    assert all(r["mask_uri"] is None and decode_png(r["mask_png"], "L").any() for r in rows)
    s = json.loads((tmp_path / "emb" / SUMMARY_FILE).read_text())
    assert s["skipped_masks"] == [{"key": "widget/hole", "mask_source": "shard:m001", "reason": "empty"}]
    assert s["shard_rows_unused"] == 1 and s["mask_source"]["embed_png"] is True
    write_manifest(_cfg(dataset, tmp_path / "uri", *base, "masks.embed_png=false"))
    by_uri = read_manifest(str(tmp_path / "uri")).to_pylist()
    assert [r["mask_source"] for r in by_uri] == [r["mask_source"] for r in rows]
    assert by_uri[0]["mask_uri"] == str(shards / "masks" / "widget" / "hole" / f"{rows[0]['mask_source'][6:]}_mask.png")
    (shards / "_SUCCESS").unlink()
    with pytest.raises(ValueError, match="no _SUCCESS marker"):
        write_manifest(_cfg(dataset, tmp_path / "x", *base))
    (shards / "_SUCCESS").write_text("")
    with pytest.raises(ValueError, match="defect gizmo/hole: no usable shards mask"):
        write_manifest(_cfg(dataset, tmp_path / "y", *base[:2]))


@pytest.mark.s3
def test_s3_output(dataset: Path, tmp_path: Path, s3_bucket) -> None:
    out = storage.join(s3_bucket.uri, "manifests", "v1")
    cfg = _cfg(dataset, out, "masks.embed_png=true")
    cfg.storage = s3_bucket.storage
    assert write_manifest(cfg).status == "written"
    t = read_manifest(out, s3_bucket.storage)
    local = write_manifest(_cfg(dataset, tmp_path / "local", "masks.embed_png=true"))
    assert t.equals(read_manifest(str(tmp_path / "local")))
    assert (
        storage.read_bytes(storage.join(out, MANIFEST_FILE), s3_bucket.storage)
        == (tmp_path / "local" / MANIFEST_FILE).read_bytes()
    )
    assert write_manifest(cfg).status == "unchanged" and local.rows == t.num_rows
    assert pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, MANIFEST_FILE), s3_bucket.storage))).num_rows

"""The mask stage: real-mask checks, deterministic plans and masks, filter rejections with reasons, the diffusion
sampler's plumbing, and end-to-end Ray runs to a local folder and to S3 that ``fastgen manifest`` can read."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import ndimage

from fast_core.masks import MaskFilterConfig
from fast_core.masks.diffusion import MaskDiffusionConfig, MaskDiffusionModel
from pipelines import storage
from pipelines.config import load_config
from pipelines.manifest import read_manifest, write_manifest
from pipelines.manifest_config import ManifestConfig
from pipelines.masks import MasksConfig, run_masks
from pipelines.masks.plan import build_plan, collect_inputs, real_rejected_table
from pipelines.masks.run import shard_tables
from pipelines.masks.stages import (
    EMPTY,
    NON_BINARY,
    SIZE_MISMATCH,
    UNREADABLE,
    Batch,
    MaskSampler,
    decode_mask,
    filter_shard,
    generate_masks,
    load_real_masks,
    mask_png,
)
from tests.fixtures_s3 import S3Bucket
from tests.helpers.dummy_data import (
    make_dummy_mvtec,
    resize_mask,
    truncate_file,
    write_empty_mask,
    write_non_binary_mask,
)

KEYS = ("widget/dent", "widget/scratch")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Two defect types with 9 anomaly images each: 3 training masks per key (the first third by file name)."""
    return make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 9, "dent": 9}, size=(40, 48))


def _cfg(root: Path, out: str | Path, *overrides: str) -> MasksConfig:
    base = [f"dataset.root={root}", f"out={out}", "counts.default=6", "shard_size=4", "compute.batch_size=3"]
    return load_config(MasksConfig, None, [*base, *overrides])


def _local_loader(records: list[dict[str, str]]) -> list[Batch]:
    """``load_real_masks`` without Ray: one batch of every record."""
    if not records:
        return []
    return [load_real_masks({k: np.array([r[k] for r in records], dtype=object) for k in records[0]})]


def _generate(plan: pa.Table, cfg: MasksConfig) -> Batch:
    batch = {name: plan.column(name).to_numpy(zero_copy_only=False) for name in plan.column_names}
    return generate_masks(batch, cfg.augment)


# ------------------------------------------------------------------------------------------------ real masks
def test_bad_real_masks_are_recorded_not_fatal(dataset: Path, tmp_path: Path) -> None:
    gt = dataset / "widget" / "ground_truth"
    write_non_binary_mask(gt / "scratch" / "000_mask.png")
    write_empty_mask(gt / "scratch" / "001_mask.png")
    resize_mask(gt / "dent" / "000_mask.png", (20, 24))
    truncate_file(gt / "dent" / "001_mask.png")
    cfg = _cfg(dataset, tmp_path / "out")
    inputs, _ = collect_inputs(cfg, _local_loader)
    by_key = {k.key: k for k in inputs}
    assert [r.stem for r in by_key["widget/scratch"].reals] == ["002"]
    assert [r.stem for r in by_key["widget/dent"].reals] == ["002"]
    table = real_rejected_table(inputs)
    got = dict(zip(table.column("sample_id").to_pylist(), table.column("reason").to_pylist(), strict=True))
    assert got == {
        "real:widget/dent/000": SIZE_MISMATCH,
        "real:widget/dent/001": UNREADABLE,
        "real:widget/scratch/000": NON_BINARY,
        "real:widget/scratch/001": EMPTY,
    }
    assert set(table.column("source").to_pylist()) == {"real"}
    # the plan only derives from usable masks
    plan = build_plan(inputs, cfg)
    assert set(plan.column("source_mask").to_pylist()) == {"002"}


def test_key_without_usable_masks_and_unknown_counts_key_fail_before_work(dataset: Path, tmp_path: Path) -> None:
    for i in range(3):
        write_empty_mask(dataset / "widget" / "ground_truth" / "dent" / f"{i:03d}_mask.png")
    with pytest.raises(ValueError, match=r"widget/dent: no usable real training mask .*'empty': 3"):
        collect_inputs(_cfg(dataset, tmp_path / "o"), _local_loader)
    with pytest.raises(ValueError, match="unknown defect key.*'widget/nope'.*widget/scratch"):
        collect_inputs(_cfg(dataset, tmp_path / "o", "counts.per_key={widget/nope: 3}"), _local_loader)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="diffusion.jitter = -0.1 must be a finite number >= 0"):
        load_config(MasksConfig, None, ["dataset.root=x", "out=y", "diffusion.jitter=-0.1"])
    with pytest.raises(ValueError, match="mask_model_uri is required"):
        load_config(MasksConfig, None, ["dataset.root=x", "out=y", "sources.diffusion=1.0"])
    with pytest.raises(ValueError, match="every weight is 0"):
        load_config(MasksConfig, None, ["dataset.root=x", "out=y", "sources.augment=0"])
    with pytest.raises(ValueError, match="unknown key.*'sizes'"):
        load_config(MasksConfig, None, ["dataset.root=x", "out=y", "sizes=[3, 3]"])


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_masks_other_seed_other_masks(dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(dataset, tmp_path / "o", "sources={augment: 0.7, diffusion: 0.0, real: 0.3}")
    inputs, _ = collect_inputs(cfg, _local_loader)
    plan = build_plan(inputs, cfg)
    assert plan.column("sample_id").to_pylist()[:2] == ["widget__dent__m000000", "widget__dent__m000001"]
    assert plan.num_rows == 12 and plan.column("shard").to_pylist() == [0] * 4 + [1] * 4 + [2] * 4
    a, b = _generate(plan, cfg), _generate(build_plan(inputs, cfg), cfg)
    assert list(a["mask_png"]) == list(b["mask_png"]) and all(a["mask_png"])
    # a row's mask does not depend on its batch
    single = _generate(plan.slice(5, 1), cfg)
    assert single["mask_png"][0] == a["mask_png"][5]
    other = _generate(build_plan(inputs, _cfg(dataset, tmp_path / "o", "job_seed=1")), cfg)
    assert list(other["mask_png"]) != list(a["mask_png"])
    # a "real" row is its reference at the output size
    real_rows = [i for i, s in enumerate(plan.column("source").to_pylist()) if s == "real"]
    assert real_rows
    i = real_rows[0]
    ref = decode_mask(plan.column("ref_png")[i].as_py())
    assert np.array_equal(decode_mask(a["mask_png"][i]), ref)


# ------------------------------------------------------------------------------------------------ filters
def _shard(masks: list[np.ndarray | None]) -> pa.Table:
    n = len(masks)
    return pa.table(
        {
            "sample_id": [f"widget__dent__m{i:06d}" for i in range(n)],
            "category": ["widget"] * n,
            "defect_type": ["dent"] * n,
            "source": ["augment"] * n,
            "source_mask": ["000"] * n,
            "seed": pa.array(range(n), pa.int64()),
            "height": [32] * n,
            "width": [32] * n,
            "row": pa.array(range(n), pa.int64()),
            "shard": pa.array([0] * n, pa.int64()),
            "mask_png": pa.array([None if m is None else mask_png(m) for m in masks], pa.binary()),
            "status": [""] * n,
            "stage": [""] * n,
            "detail": [""] * n,
        }
    )


def test_each_filter_rejection_reaches_rejected_with_its_reason() -> None:
    def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        m = np.zeros((32, 32), bool)
        m[r0:r1, c0:c1] = True
        return m

    real = box(4, 12, 4, 12)
    many = np.zeros((32, 32), bool)
    many[1:30:4, 1:30:4] = True  # 64 single-pixel components
    line = box(10, 12, 2, 30)  # compactness ≈ 0.13
    masks = [
        box(20, 28, 18, 30),  # accepted
        np.zeros((32, 32), bool),  # empty
        box(0, 32, 0, 32),  # area_too_large
        many,  # too_many_components
        box(4, 12, 4, 12),  # near_duplicate of the real mask
        box(20, 28, 18, 30),  # near_duplicate of row 0
        line,  # not_compact (with min_compactness 0.3)
        None,  # no mask produced
    ]
    cfg = MaskFilterConfig(max_area_fraction=0.5, min_compactness=0.3, min_component_px=1)
    rows = filter_shard(_shard(masks), cfg, {"widget/dent": [real]})
    data, rejected, files, counts = shard_tables(rows, "run-x")
    assert data.column("sample_id").to_pylist() == ["widget__dent__m000000"]
    assert [p for p, _ in files] == ["masks/widget/dent/widget__dent__m000000_mask.png"]
    assert rejected.column("reason").to_pylist() == [
        "empty",
        "area_too_large",
        "too_many_components",
        "near_duplicate",
        "near_duplicate",
        "not_compact",
        "generate_failed",
    ]
    assert rejected.column("stage").to_pylist() == ["filter"] * 6 + ["generate"]
    assert rejected.column("mask_png")[1].as_py() is not None  # rejected masks are kept for inspection
    assert counts["rejected_by_reason"]["near_duplicate"] == 2 and counts["written_by_key"] == {"widget/dent": 1}
    assert data.column("mask_area").to_pylist() == [8 * 12]


def test_outside_foreground_is_rejected() -> None:
    fg = np.zeros((32, 32), bool)
    fg[:, :16] = True
    inside, outside = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    inside[4:10, 2:8] = True
    outside[4:10, 20:28] = True
    rows = filter_shard(_shard([inside, outside]), MaskFilterConfig(), {}, {"widget/dent": fg})
    assert rows.column("status").to_pylist() == ["", "outside_foreground"]


# ------------------------------------------------------------------------------------------------ diffusion
def _tiny_mask_model(
    path: Path,
    box_sides: dict[str, list[float]] | None = None,
    box_records: dict[str, list[list[float]]] | None = None,
) -> Path:
    """A tiny untrained mask model of KEYS: whole-mask ("image" frame), a box-frame one with ``box_sides``, or a
    stretch-frame one with ``box_records``."""
    frame: dict[str, Any] = {} if box_sides is None else {"frame": "box", "box_sides": box_sides}
    if box_records is not None:
        frame = {"frame": "stretch", "box_records": box_records}
    cfg = MaskDiffusionConfig(keys=KEYS, image_size=16, block_out_channels=(8, 8), norm_num_groups=4, **frame)
    return MaskDiffusionModel(cfg, seed=0).save(path)


BOX_SIDES = {"widget/dent": [0.25], "widget/scratch": [0.1, 0.12]}  # × √(40 · 48) ≈ 43.8: sides of 11 and 4-5 px


def _bbox_side(mask: np.ndarray) -> int:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) if rows.size else 0


def test_mask_sampler_fills_diffusion_rows_deterministically(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = _tiny_mask_model(tmp_path / "mm")
    cfg = _cfg(dataset, tmp_path / "o", "sources={augment: 0.5, diffusion: 0.5, real: 0.0}", f"mask_model_uri={model}")
    inputs, _ = collect_inputs(cfg, _local_loader)
    batch = _generate(build_plan(inputs, cfg), cfg)
    diff = [i for i, s in enumerate(batch["source"]) if s == "diffusion"]
    assert diff and all(batch["mask_png"][i] is None for i in diff)
    sampler = MaskSampler(str(model), nfe=3, threshold=0.0)
    out, again = sampler(batch), sampler(batch)
    for i in diff:
        assert out["mask_png"][i] is not None and decode_mask(out["mask_png"][i]).shape == (40, 48)
        assert out["mask_png"][i] == again["mask_png"][i]
    assert all(out["mask_png"][i] == batch["mask_png"][i] for i in range(len(diff)) if i not in diff)


def test_box_frame_sampler_places_each_shape_at_a_real_size(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = _tiny_mask_model(tmp_path / "mm", BOX_SIDES)
    mix = ("sources={augment: 0.0, diffusion: 1.0, real: 0.0}", f"mask_model_uri={model}")
    cfg = _cfg(dataset, tmp_path / "o", *mix)
    inputs, _ = collect_inputs(cfg, _local_loader)
    batch = _generate(build_plan(inputs, cfg), cfg)
    sampler = MaskSampler(str(model), nfe=3, threshold=0.0, jitter=0.0)
    out = sampler(batch)
    sizes: dict[str, set[int]] = {k: set() for k in KEYS}
    for i in range(len(out["sample_id"])):
        mask = decode_mask(out["mask_png"][i])
        key = f"{out['category'][i]}/{out['defect_type'][i]}"
        assert mask.shape == (40, 48)
        sizes[key].add(_bbox_side(mask))
    # jitter 0: each sample, brought back to fill its frame, spans its drawn side (11 px; 4 or 5 px)
    assert sizes["widget/dent"] == {11} and sizes["widget/scratch"] <= {4, 5}
    # a row's mask is a function of its own seed: the same again, and alone in its batch
    again = sampler(batch)
    assert list(again["mask_png"]) == list(out["mask_png"])
    single = sampler({k: v[3:4] for k, v in batch.items()})
    assert single["mask_png"][0] == out["mask_png"][3]
    # Ray Data hands over a column of nothing but missing PNGs as floats (NaN); the sampler fills it all the same
    nulls = sampler({**batch, "mask_png": np.full(len(batch["sample_id"]), np.nan)})
    assert list(nulls["mask_png"]) == list(out["mask_png"])
    # the jitter spreads the sizes; the whole-mask model resizes its sample to the row's size instead
    spread = MaskSampler(str(model), nfe=3, threshold=0.0, jitter=0.5)(batch)
    assert list(spread["mask_png"]) != list(out["mask_png"])
    whole = MaskSampler(str(_tiny_mask_model(tmp_path / "image")), nfe=3, threshold=0.0)(batch)
    assert all(_bbox_side(decode_mask(p)) > 20 for p in whole["mask_png"])  # thresholded noise over the whole frame


# in a 40 × 48 frame: dents 8 × 24 px, scratches 2 × 38 or 32 × 2 px
BOX_RECORDS = {"widget/dent": [[0.2, 0.5, 0.6]], "widget/scratch": [[0.05, 0.8, 0.5], [0.8, 0.05, 0.5]]}


def _bbox(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)) if rows.size else (0, 0)


def test_stretch_frame_sampler_places_each_shape_in_a_real_box_without_specks(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = _tiny_mask_model(tmp_path / "mm", box_records=BOX_RECORDS)
    mix = ("sources={augment: 0.0, diffusion: 1.0, real: 0.0}", f"mask_model_uri={model}", "counts.default=10")
    cfg = _cfg(dataset, tmp_path / "o", *mix)
    inputs, _ = collect_inputs(cfg, _local_loader)
    batch = _generate(build_plan(inputs, cfg), cfg)
    keys = [f"{c}/{d}" for c, d in zip(batch["category"], batch["defect_type"], strict=True)]
    plain = MaskSampler(str(model), nfe=3, threshold=0.0, jitter=0.0)(batch)
    specks = (cfg.filter.min_component_px, cfg.filter.max_components)
    clean = MaskSampler(str(model), nfe=3, threshold=0.0, jitter=0.0, specks=specks)(batch)
    boxes: dict[str, set[tuple[int, int]]] = {k: set() for k in KEYS}
    for i, key in enumerate(keys):
        before, after = decode_mask(plain["mask_png"][i]), decode_mask(clean["mask_png"][i])
        assert before.shape == after.shape == (40, 48)
        boxes[key].add(_bbox(before))  # untrained noise fills its drawn box: the box is the real one, exactly
        labels, n = ndimage.label(after, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        assert n <= specks[1] and (n == 0 or sizes.min() >= specks[0])  # what the filters ask, by construction
        assert all(a <= b for a, b in zip(_bbox(after), _bbox(before), strict=True))  # inside the drawn box
    assert boxes["widget/dent"] == {(8, 24)}
    # 2 × 38 or 32 × 2; where the 16-cell sample is squeezed into 2 pixels an end column can fall under half a pixel
    assert all(sorted(b)[0] == 2 and 28 <= sorted(b)[1] <= 38 for b in boxes["widget/scratch"])
    assert {b[0] == 2 for b in boxes["widget/scratch"]} == {True, False}  # both real orientations
    pairs = zip(plain["mask_png"], clean["mask_png"], strict=True)
    assert any(not np.array_equal(decode_mask(p), decode_mask(q)) for p, q in pairs)  # noise has specks to drop


def test_later_settings_stay_out_of_the_fingerprint_at_their_old_behaviour(dataset: Path, tmp_path: Path) -> None:
    """Outputs made before the settings existed (a whole-mask model, which the jitter does not touch, and no speck
    removal) keep their fingerprint; any other jitter, and the speck removal new configs default to, are part of it."""
    mix = ("sources={augment: 0.5, diffusion: 0.5, real: 0.0}", "mask_model_uri=/models/m")
    old = _cfg(dataset, tmp_path / "o", *mix, "diffusion.despeckle=false").content()["diffusion"]
    assert old == {"nfe": 10, "threshold": 0.0}
    new = _cfg(dataset, tmp_path / "o", *mix).content()["diffusion"]
    assert new == {"nfe": 10, "threshold": 0.0, "despeckle": True}
    assert _cfg(dataset, tmp_path / "o", *mix, "diffusion.jitter=0.3").content()["diffusion"]["jitter"] == 0.3
    with pytest.raises(ValueError, match="despeckle: expected true/false, got 'yes'"):
        _cfg(dataset, tmp_path / "o", *mix, "diffusion.despeckle='yes'")
    assert "diffusion" not in _cfg(dataset, tmp_path / "o").content()


def test_box_frame_masks_through_generate_sampler_and_filters(dataset: Path, tmp_path: Path) -> None:
    """The stage functions in pipeline order without Ray: plan → generate → sample and place → filter → shard rows."""
    torch.set_num_threads(1)
    model = _tiny_mask_model(tmp_path / "mm", BOX_SIDES)
    mix = ("sources={augment: 0.5, diffusion: 0.5, real: 0.0}", f"mask_model_uri={model}", "diffusion.nfe=3")
    cfg = _cfg(dataset, tmp_path / "o", *mix, "filter.min_component_px=1", "filter.max_components=50")
    inputs, _ = collect_inputs(cfg, _local_loader)
    plan = build_plan(inputs, cfg)
    sampled = MaskSampler(str(model), nfe=3, threshold=0.0, jitter=cfg.diffusion.jitter)(_generate(plan, cfg))
    rows = pa.table(
        {k: pa.array(list(v), pa.binary()) if k == "mask_png" else pa.array(list(v)) for k, v in sampled.items()}
    )
    data, rejected, files, counts = shard_tables(filter_shard(rows, cfg.filter, {}), "run-box")
    assert data.num_rows + rejected.num_rows == plan.num_rows
    diffusion = [i for i, s in enumerate(data.column("source").to_pylist()) if s == "diffusion"]
    assert diffusion  # placed shapes pass the filters
    for i in diffusion:
        mask = decode_mask(data.column("mask")[i].as_py()["bytes"])
        assert mask.shape == (40, 48) and 0 < _bbox_side(mask) <= 14  # the largest drawn side: 11 · e^0.15 < 13
        assert data.column("area_fraction")[i].as_py() < 0.1


# ------------------------------------------------------------------------------------------------ end to end (Ray)
def _read_dir(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for d in ("data", "rejected", "masks", "_commits")
        for p in sorted((out / d).rglob("*"))
        if p.is_file()
    }


@pytest.mark.ray
def test_ray_run_local_with_all_sources_resume_and_manifest(ray_local: None, dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    write_non_binary_mask(dataset / "widget" / "ground_truth" / "scratch" / "000_mask.png")
    model = _tiny_mask_model(tmp_path / "mm")
    mix = ("sources={augment: 0.5, diffusion: 0.25, real: 0.25}", f"mask_model_uri={model}", "diffusion.nfe=3")
    out = tmp_path / "out"
    summary = run_masks(_cfg(dataset, out, *mix))
    assert summary.rows == 12 and summary.shards == 3 and summary.written + summary.rejected == 12
    assert summary.real_rejected == 1 and summary.written > 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["real_masks"]["rejected_by_reason"] == {"non_binary": 1}
    assert stats["written"] + stats["rejected"] == 12
    by_source = {
        s: stats["written_by_source"].get(s, 0) + stats["rejected_by_source"].get(s, 0)
        for s in ("augment", "diffusion")
    }
    assert by_source["augment"] > 0 and by_source["diffusion"] > 0  # untrained samples: written or recorded rejected
    assert set(stats["fidelity"]) == set(KEYS)
    fid = next(v for v in stats["fidelity"].values() if v["n_generated"])
    assert fid["stats"]["area_fraction"]["wasserstein"] is not None
    assert fid["stats"]["compactness"]["wasserstein"] is not None
    assert 0.0 <= fid["shape"]["near_copy_fraction"] <= 1.0
    # augmented masks are transformed real masks; per source, their fidelity sits beside the sampled masks'
    written_sources = {s for s, n in stats["written_by_source"].items() if n}
    assert set(stats["fidelity_by_source"]) == written_sources and "augment" in written_sources
    aug = [v for v in stats["fidelity_by_source"]["augment"].values() if v["n_generated"]]
    assert sum(v["n_generated"] for v in aug) == stats["written_by_source"]["augment"]
    assert stats["histograms"]["num_components"]["n"] == stats["written"]
    assert (out / "contact_sheet.png").is_file() and (out / "_SUCCESS").is_file()
    real = pq.read_table(out / "rejected" / "real-masks.parquet")
    assert real.column("reason").to_pylist() == ["non_binary"]
    first = _read_dir(out)

    # an interrupted run (one marker lost) resumes to the same bytes; a finished output is left alone
    (out / "_SUCCESS").unlink()
    (out / "_commits" / "part-00001.json").unlink()
    again = run_masks(_cfg(dataset, out, *mix))
    assert again.shards_written == 1 and again.shards_skipped == 2
    assert _read_dir(out) == first
    assert run_masks(_cfg(dataset, out, *mix)).already_complete
    with pytest.raises(ValueError, match="different job"):
        run_masks(_cfg(dataset, out, *mix, "job_seed=5"))

    # fastgen manifest reads the output as its "shards" mask source
    manifest_uri = tmp_path / "manifest"
    result = write_manifest(
        load_config(
            ManifestConfig,
            None,
            [
                f"dataset.root={dataset}",
                "masks.source=shards",
                f"masks.shards_uri={out}",
                "counts.default=5",
                "model_uri=m",
                f"out={manifest_uri}",
            ],
        )
    )
    assert result.status == "written"
    rows = read_manifest(str(manifest_uri))
    assert rows.num_rows == 10 and all(s.startswith("shard:widget__") for s in rows.column("mask_source").to_pylist())
    assert {k: v["masks_used"] for k, v in result.summary["keys"].items()} == stats["written_by_key"]


@pytest.mark.ray
def test_ray_run_with_a_box_frame_model_resumes_to_the_same_bytes(
    ray_local: None, dataset: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    model = _tiny_mask_model(tmp_path / "mm", BOX_SIDES)
    mix = ("sources={augment: 0.0, diffusion: 1.0, real: 0.0}", f"mask_model_uri={model}", "diffusion.nfe=3")
    out = tmp_path / "out"
    summary = run_masks(_cfg(dataset, out, *mix))
    assert summary.rows == 12 and summary.written + summary.rejected == 12
    data = pq.read_table(out / "data").to_pylist() if summary.written else []
    rejected = pq.read_table(out / "rejected").to_pylist() if summary.rejected else []
    rejected = [r for r in rejected if r["mask_png"] is not None]
    masks = [decode_mask(r["mask"]["bytes"]) for r in data] + [decode_mask(r["mask_png"]) for r in rejected]
    assert masks and all(m.shape == (40, 48) and _bbox_side(m) <= 14 for m in masks)
    job = json.loads((out / "_commits" / "job.json").read_text())
    # the default jitter is not recorded; speck removal is (outputs made before it existed had none)
    assert job["content"]["diffusion"] == {"nfe": 3, "threshold": 0.0, "despeckle": True}
    first = _read_dir(out)
    (out / "_SUCCESS").unlink()
    (out / "_commits" / "part-00002.json").unlink()
    assert run_masks(_cfg(dataset, out, *mix)).shards_written == 1
    assert _read_dir(out) == first
    with pytest.raises(ValueError, match="different job"):
        run_masks(_cfg(dataset, out, *mix, "diffusion.jitter=0.3"))


@pytest.mark.ray
@pytest.mark.s3
def test_ray_run_to_s3(ray_local: None, dataset: Path, s3_bucket: S3Bucket) -> None:
    out = f"{s3_bucket.uri}/masks/v1"
    cfg = load_config(
        MasksConfig,
        None,
        [f"dataset.root={dataset}", f"out={out}", "counts.default=4", "shard_size=4", "compute.batch_size=4"],
    )
    cfg.storage = s3_bucket.storage
    summary = run_masks(cfg)
    assert summary.written + summary.rejected == 8
    st = s3_bucket.storage
    assert storage.exists(f"{out}/_SUCCESS", st) and storage.exists(f"{out}/contact_sheet.png", st)
    parts = storage.glob(f"{out}/data/*.parquet", st)
    table = pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(p, st))) for p in parts])
    assert table.num_rows == summary.written
    side = table.column("mask").to_pylist()[0]
    assert storage.read_bytes(f"{out}/{side['path']}", st) == side["bytes"]


def test_the_cpu_stages_import_no_torch_in_a_fresh_process() -> None:
    """Ray task workers import ``pipelines.masks.stages`` (and its package) before their first block; the CPU stages
    need numpy, Pillow and scipy only (the diffusion sampler loads torch and diffusers in its actor)."""
    probe = (
        "import sys, pickle, pipelines.masks.stages as s; "
        "[pickle.loads(pickle.dumps(f)) for f in (s.load_real_masks, s.generate_masks, s.filter_shard)]; "
        "print(sorted(m for m in ('torch', 'diffusers', 'ray') if m in sys.modules))"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr

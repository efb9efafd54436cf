"""Baseline generators as synthesis stage 2: per-row determinism, exact masks, row rejections, and a Ray run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fast_core import qc
from fast_core.data.transforms import decode_png
from pipelines.manifest import MANIFEST_SCHEMA
from pipelines.synthesize import ComputeConfig, SynthesizeConfig, run_synthesis
from pipelines.synthesize.baseline_stage import BaselineSynthesizer, texture_uris
from pipelines.synthesize.config import BaselineSettings
from pipelines.synthesize.stages import load_inputs
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.manifests import pair_rows, write_manifest_rows
from tests.helpers.tiny_models import publish_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("baselines")
    root = make_dummy_mvtec(tmp / "data", categories=("tiny",), defects={"crack": 3}, mode="RGB", size=(40, 48))
    model = publish_tiny_model(str(tmp / "model"))
    rows = pair_rows(root, model, {("tiny", "crack"): 6})
    return {"root": root, "model": model, "rows": rows, "tmp": tmp}


def _loaded(rows: list[dict]) -> dict:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    ids = [r["sample_id"] for r in rows]
    pending = pa.table({"sample_id": ids, "row": list(range(len(ids))), "shard": [0] * len(ids)})
    return load_inputs(table, pending=pending, image_size=32, image_channels=3, keys=["good", "tiny/crack"])


def _take(batch: dict, idx: list[int]) -> dict:
    return {k: v[idx] for k, v in batch.items()}


@pytest.mark.parametrize("generator", ["cutpaste", "cutpaste_scar", "perlin"])
def test_baseline_rows_are_exact_and_batch_independent(setup: dict, generator: str) -> None:
    batch = _loaded(setup["rows"])
    textures = texture_uris(None, [r["image_uri"] for r in setup["rows"]], 16)
    stage = BaselineSynthesizer(generator=generator, image_size=32, image_channels=3, textures=textures)
    whole = stage(batch)
    alone = stage(_take(batch, [3]))
    assert (whole["status"] == "").all()
    np.testing.assert_array_equal(whole["image"][3], alone["image"][0])
    np.testing.assert_array_equal(whole["mask"][3], alone["mask"][0])
    for i in range(len(whole["status"])):
        mask = whole["mask"][i] > 0
        assert mask.any() and set(np.unique(whole["mask"][i])) <= {0, 255}
        np.testing.assert_array_equal(whole["image"][i][~mask], batch["image"][i][~mask])  # outside M: untouched
        assert whole["mask_source"][i] == generator and whole["nfe"][i] == 0
    # The manifest mask is not used: the baseline's own mask differs from it for at least one row.
    assert any((whole["mask"][i] != batch["mask"][i]).any() for i in range(len(whole["status"])))


def test_unreadable_texture_and_failed_generator_are_row_rejections(setup: dict, tmp_path: Path) -> None:
    batch = _loaded(setup["rows"][:2])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    stage = BaselineSynthesizer(generator="perlin", image_size=32, image_channels=3, textures=[str(bad)])
    out = stage(batch)
    assert list(out["status"]) == [qc.INPUT_UNREADABLE] * 2 and "bad.png" in out["detail"][0]
    stage = BaselineSynthesizer(generator="cutpaste_scar", image_size=32, image_channels=3)
    stage.cutpaste.config.scar_length = (64, 80)  # longer than the 32-pixel image: no scar fits
    out = stage(batch)
    assert list(out["status"]) == [qc.GENERATOR_FAILED] * 2 and "no patch fits" in out["detail"][0]


def test_texture_set_from_folder_or_normals(tmp_path: Path) -> None:
    assert texture_uris(None, ["/b.png", "/a.png", "/b.png"], 8) == ["/a.png", "/b.png"]
    (tmp_path / "t").mkdir()
    for name in ("z.png", "a.jpg", "notes.txt"):
        (tmp_path / "t" / name).write_bytes(b"x")
    assert [Path(p).name for p in texture_uris(str(tmp_path / "t"), [], 8)] == ["a.jpg", "z.png"]
    with pytest.raises(ValueError, match="not a folder"):
        texture_uris(str(tmp_path / "missing"), [], 8)
    with pytest.raises(ValueError, match="must be a local folder"):
        BaselineSettings(texture_dir="s3://bucket/textures")
    with pytest.raises(ValueError, match="generator"):
        SynthesizeConfig(manifest="m", out="o", generator="gan")  # type: ignore[arg-type]


@pytest.mark.ray
def test_baseline_dataset_version_end_to_end(setup: dict, ray_local: None) -> None:
    rows = [dict(r) for r in setup["rows"]]
    empty = setup["tmp"] / "empty_mask.png"
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(empty)
    rows[0]["mask_uri"] = str(empty)  # a bad input row is still rejected at load, with its reason
    manifest = write_manifest_rows(str(setup["tmp"] / "manifest"), rows)
    outs = []
    for name in ("a", "b"):
        cfg = SynthesizeConfig(
            manifest=manifest,
            out=str(setup["tmp"] / f"perlin-{name}"),
            shard_size=4,
            generator="perlin",
            compute=ComputeConfig(batch_size=2),
            preview_pairs=2,
        )
        summary = run_synthesis(cfg)
        assert summary.written == 5 and summary.rejected == 1
        outs.append(Path(cfg.out))
    data = pq.read_table(outs[0] / "data").to_pylist()
    assert {r["sampler"] for r in data} == {"perlin"} and {r["mask_source"] for r in data} == {"perlin"}
    assert all(decode_png(r["mask"]["bytes"]).any() for r in data)
    assert pq.read_table(outs[0] / "rejected").column("reason").to_pylist() == [qc.MASK_EMPTY]
    for part in ("data/part-00000.parquet", "data/part-00001.parquet"):
        assert (outs[0] / part).read_bytes() == (outs[1] / part).read_bytes()  # same config and seed, same bytes

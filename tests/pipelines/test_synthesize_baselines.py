"""Baseline generators as synthesis stage 2: per-row determinism, exact masks, row rejections, and a Ray run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fast_core import qc
from fast_core.baselines.foreground import dilate
from fast_core.data.transforms import decode_png, to_model_image
from fast_core.synthesis_config import SynthesisConfig
from pipelines.manifest import MANIFEST_SCHEMA, SUMMARY_FILE
from pipelines.model_store import ModelInfo
from pipelines.synthesize import ComputeConfig, SynthesizeConfig, run_synthesis
from pipelines.synthesize.baseline_stage import BaselineSynthesizer, defect_image_uris, texture_uris
from pipelines.synthesize.config import BaselineSettings
from pipelines.synthesize.run import _model, read_manifest_index
from pipelines.synthesize.stages import load_inputs, to_model_uint8
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
    out = _synthesize_twice(setup, manifest, "perlin")
    assert pq.read_table(out / "rejected").column("reason").to_pylist() == [qc.MASK_EMPTY]


def _synthesize_twice(setup: dict, manifest: str, generator: str) -> Path:
    """Two runs of ``generator`` over the 6-row ``manifest`` (5 pairs + 1 rejection each) with byte-identical data
    parts and every row painted by the generator; returns the first run's folder."""
    outs = []
    for name in ("a", "b"):
        cfg = SynthesizeConfig(
            manifest=manifest,
            out=str(setup["tmp"] / f"{generator}-{name}"),
            shard_size=4,
            generator=generator,  # type: ignore[arg-type]
            compute=ComputeConfig(batch_size=2),
            preview_pairs=2,
        )
        summary = run_synthesis(cfg)
        assert summary.written == 5 and summary.rejected == 1
        outs.append(Path(cfg.out))
    data = pq.read_table(outs[0] / "data").to_pylist()
    assert {r["sampler"] for r in data} == {generator} and {r["mask_source"] for r in data} == {generator}
    assert all(decode_png(r["mask"]["bytes"]).any() for r in data)
    for part in ("data/part-00000.parquet", "data/part-00001.parquet"):
        assert (outs[0] / part).read_bytes() == (outs[1] / part).read_bytes()  # same config and seed, same bytes
    return outs[0]


def _defects(setup: dict, rows: list[dict]) -> dict[str, str]:
    return defect_image_uris(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), str(setup["root"]))


def test_defect_image_uris_by_mask_uri_and_by_embedded_stem(setup: dict, tmp_path: Path) -> None:
    root = Path(setup["root"]).resolve()
    expected = {
        r["sample_id"]: str(root / "tiny" / "test" / "crack" / Path(r["mask_uri"]).name.replace("_mask", ""))
        for r in setup["rows"]
    }
    assert _defects(setup, setup["rows"]) == expected
    embedded = pair_rows(setup["root"], setup["model"], {("tiny", "crack"): 6}, embed_png=True)
    assert _defects(setup, embedded) == expected  # mask_png rows: matched by mask_source "real:<mask stem>"
    foreign = [dict(r) for r in setup["rows"][:3]]
    copy = tmp_path / "000_mask.png"
    shutil.copy(foreign[0]["mask_uri"], copy)
    foreign[0]["mask_uri"] = str(copy)  # same file name, outside the dataset
    foreign[1]["mask_uri"], foreign[1]["mask_png"] = None, Path(foreign[1]["mask_uri"]).read_bytes()
    foreign[1]["mask_source"] = "shards:masks-v1/000007"  # a mask-stage mask
    assert set(_defects(setup, foreign)) == {foreign[2]["sample_id"]}
    with pytest.raises(ValueError, match="cannot list the manifest's dataset"):
        defect_image_uris(pa.Table.from_pylist(foreign, schema=MANIFEST_SCHEMA), str(tmp_path / "missing"))


def test_realpaste_rows_paste_their_own_real_defect(setup: dict) -> None:
    batch = _loaded(setup["rows"])
    defects = _defects(setup, setup["rows"])
    stage = BaselineSynthesizer(generator="realpaste", image_size=32, image_channels=3, defect_images=defects)
    whole = stage(batch)
    alone = stage(_take(batch, [3]))
    assert (whole["status"] == "").all()
    np.testing.assert_array_equal(whole["image"][3], alone["image"][0])
    np.testing.assert_array_equal(whole["mask"][3], alone["mask"][0])
    feather = stage.realpaste.config.feather
    for i in range(len(whole["status"])):
        mask, src_mask = whole["mask"][i] > 0, batch["mask"][i] > 0
        assert set(np.unique(whole["mask"][i])) <= {0, 255} and whole["mask_source"][i] == "realpaste"
        assert mask.sum() == src_mask.sum()  # the row's own real mask, flipped / turned / moved
        far = ~dilate(mask, feather)
        np.testing.assert_array_equal(whole["image"][i][far], batch["image"][i][far])  # outside the feather band
    # Without the intensity shift the pasted pixels are exactly the defect image's, loaded as the normal image is.
    stage.realpaste.config.intensity_match = False
    plain = stage(batch)
    for i in range(len(plain["status"])):
        defect = to_model_uint8(to_model_image(np.asarray(Image.open(defects[str(batch["sample_id"][i])])), 32, 3))
        pasted, original = plain["image"][i][plain["mask"][i] > 0], defect[batch["mask"][i] > 0]
        np.testing.assert_array_equal(np.sort(pasted, axis=0), np.sort(original, axis=0))
    assert any((whole["image"][i] != plain["image"][i]).any() for i in range(len(whole["status"])))


def test_realpaste_unknown_or_unreadable_defect_is_a_row_rejection(setup: dict, tmp_path: Path) -> None:
    batch = _loaded(setup["rows"][:3])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    ids = [str(s) for s in batch["sample_id"]]
    defects = {ids[1]: str(bad), ids[2]: _defects(setup, setup["rows"][:3])[ids[2]]}
    stage = BaselineSynthesizer(generator="realpaste", image_size=32, image_channels=3, defect_images=defects)
    out = stage(batch)
    assert list(out["status"]) == [qc.GENERATOR_FAILED, qc.INPUT_UNREADABLE, ""]
    assert "no defect image is known" in out["detail"][0] and "bad.png" in out["detail"][1]
    assert list(out["mask_source"][:2]) == list(batch["mask_source"][:2])  # rejected rows keep their inputs


@pytest.mark.ray
def test_realpaste_dataset_version_end_to_end(setup: dict, ray_local: None, request: pytest.FixtureRequest) -> None:
    rows = [dict(r) for r in setup["rows"]]
    # A readable mask inside the dataset root (manifests refuse rows outside it) that belongs to no image: a stray
    # mask has no known defect image, so its row is generator_failed. Removed at the end (the fixture is shared).
    foreign = Path(setup["root"]) / "tiny" / "ground_truth" / "crack" / "999_mask.png"
    shutil.copy(rows[1]["mask_uri"], foreign)
    request.addfinalizer(foreign.unlink)
    rows[1]["mask_uri"] = str(foreign.resolve())
    manifest = write_manifest_rows(str(setup["tmp"] / "manifest-realpaste"), rows)
    cfg = SynthesizeConfig(
        manifest=manifest,
        out=str(setup["tmp"] / "realpaste-no-root"),
        generator="realpaste",
        compute=ComputeConfig(batch_size=2),
    )
    with pytest.raises(ValueError, match="names no dataset_root"):
        run_synthesis(cfg)
    summary_file = Path(manifest) / SUMMARY_FILE
    summary = json.loads(summary_file.read_text())
    summary.update(dataset_root=str(setup["root"]), layout="mvtec", mask_source={"kind": "real"})
    summary_file.write_text(json.dumps(summary))
    out = _synthesize_twice(setup, manifest, "realpaste")
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert [r["reason"] for r in rejected] == [qc.GENERATOR_FAILED] and "no defect image" in rejected[0]["detail"]
    # FAST started from each row's real defect (the same lookup): the row without one is rejected the same way
    fast = SynthesizeConfig(
        manifest=manifest,
        out=str(setup["tmp"] / "fast-reference"),
        sampler=SynthesisConfig(nfe=3, start="reference", start_t=300),
        compute=ComputeConfig(batch_size=2),
        preview_pairs=0,
    )
    summary = run_synthesis(fast)
    assert (summary.written, summary.rejected) == (5, 1)
    rejected = pq.read_table(Path(fast.out) / "rejected").to_pylist()
    assert [r["reason"] for r in rejected] == [qc.GENERATOR_FAILED] and "no defect image" in rejected[0]["detail"]
    assert {r["sampler"] for r in pq.read_table(Path(fast.out) / "data").to_pylist()} == {"aias"}


@pytest.mark.ray
def test_baselines_without_any_model_use_their_own_geometry_and_stay_rgb(setup: dict, ray_local: None) -> None:
    rows = [{**r, "model_uri": ""} for r in setup["rows"][:4]]  # a manifest written without a model
    manifest = write_manifest_rows(str(setup["tmp"] / "manifest-no-model"), rows)
    out = setup["tmp"] / "cutpaste-no-model"

    def cfg(**kw: object) -> SynthesizeConfig:
        return SynthesizeConfig(manifest=manifest, out=str(out), generator="cutpaste", preview_pairs=0, **kw)

    with pytest.raises(ValueError, match="set model_uri \\(a baseline generator can instead set baseline.image_size"):
        run_synthesis(cfg())
    with pytest.raises(ValueError, match="set both or neither"):
        BaselineSettings(image_size=32)
    with pytest.raises(ValueError, match="are for baseline generators"):
        SynthesizeConfig(manifest=manifest, out=str(out), baseline=BaselineSettings(image_size=32, image_channels=3))
    summary = run_synthesis(cfg(baseline=BaselineSettings(image_size=36, image_channels=3)))
    assert summary.written == 4 and summary.rejected == 0
    data = pq.read_table(out / "data").to_pylist()
    images = [decode_png(r["image"]["bytes"]) for r in data]
    assert all(im.shape == (36, 36, 3) for im in images) and {r["model_uri"] for r in data} == {""}
    assert any(not np.array_equal(im[..., 0], im[..., 1]) for im in images)  # colour kept, not a grey copy


def test_guidance_is_refused_before_any_work_on_a_model_that_never_trained_its_normal_key(setup: dict) -> None:
    model = publish_tiny_model(str(setup["tmp"] / "defect-only-model"), untrained_keys=("good",))
    manifest = write_manifest_rows(str(setup["tmp"] / "manifest-defect-only"), setup["rows"][:2])
    out = setup["tmp"] / "guided"

    def cfg(guidance: float, generator: str = "fast") -> SynthesizeConfig:
        sampler = SynthesisConfig(nfe=3, guidance=guidance)
        return SynthesizeConfig(manifest=manifest, out=str(out), model_uri=model, generator=generator, sampler=sampler)

    with pytest.raises(ValueError, match="never trained on .*windows_per_normal: 0.*set sampler.guidance: 1"):
        run_synthesis(cfg(2.0))  # checked before Ray starts: nothing is written
    assert not out.exists()
    index = read_manifest_index(manifest, None)
    assert _model(cfg(1.0), index)[1].untrained_keys == ["good"]  # no guidance: the model serves as it is
    assert _model(cfg(2.0, "cutpaste"), index)[0] == model  # baselines paint without the model's keys
    with pytest.raises(ValueError, match="untrained_keys \\['other'\\] must be among its keys"):
        ModelInfo(image_size=32, image_channels=3, keys=["good"], untrained_keys=["other"])

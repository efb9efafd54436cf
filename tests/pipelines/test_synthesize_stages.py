"""The synthesis stages without Ray: input loading and its rejections, the actor's determinism, QC, PNG encoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from fast_core import qc
from fast_core.data.transforms import decode_png, to_model_image
from fast_core.synthesis import SynthesisConfig
from pipelines.config import load_config
from pipelines.manifest import MANIFEST_SCHEMA
from pipelines.model_store import read_model_info
from pipelines.synthesize.config import SynthesizeConfig
from pipelines.synthesize.encode import encode_and_qc
from pipelines.synthesize.stages import FastSynthesizer, load_inputs
from tests.helpers.dummy_data import make_dummy_mvtec, truncate_file
from tests.helpers.manifests import pair_rows
from tests.helpers.tiny_models import publish_tiny_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("stages")
    root = make_dummy_mvtec(tmp / "data", categories=("tiny",), defects={"crack": 3}, mode="RGB", size=(40, 48))
    model = publish_tiny_model(str(tmp / "model"))
    rows = pair_rows(root, model, {("tiny", "crack"): 4})
    return {"root": root, "model": model, "rows": rows, "tmp": tmp}


def _pending(rows: list[dict], shard_size: int = 100) -> pa.Table:
    ids = [r["sample_id"] for r in rows]
    return pa.table(
        {"sample_id": ids, "row": list(range(len(ids))), "shard": [i // shard_size for i in range(len(ids))]}
    )


def _load(rows: list[dict], pending: pa.Table | None = None, keys=("good", "tiny/crack")) -> dict:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    return load_inputs(
        table,
        pending=pending if pending is not None else _pending(rows),
        image_size=32,
        image_channels=3,
        keys=list(keys),
    )


def test_load_resizes_inputs_and_keeps_only_pending_rows(setup: dict) -> None:
    rows = setup["rows"]
    out = _load(rows, _pending(rows, shard_size=2).slice(2))  # rows 0-1 (shard 0) are committed already
    assert out["sample_id"].tolist() == ["tiny__crack__000002", "tiny__crack__000003"]
    assert out["row"].tolist() == [2, 3] and out["shard"].tolist() == [1, 1]
    assert (out["status"] == "").all()
    assert out["image"].shape == (2, 32, 32, 3) and out["image"].dtype == np.uint8
    assert set(np.unique(out["mask"])) <= {0, 255} and out["mask"].shape == (2, 32, 32)
    # the uint8 carried between stages reproduces to_model_image exactly
    original = decode_png(Path(rows[2]["image_uri"]).read_bytes(), "RGB")
    assert torch.equal(to_model_image(out["image"][0], 32, 3), to_model_image(original, 32, 3))


def test_load_rejects_bad_rows_with_reasons(setup: dict) -> None:
    tmp, good = setup["tmp"], setup["rows"][0]
    broken = tmp / "broken.png"
    broken.write_bytes(Path(good["image_uri"]).read_bytes())
    truncate_file(broken)
    empty_mask = tmp / "empty_mask.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 48), np.uint8)).save(empty_mask)
    small_mask = tmp / "small_mask.png"
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(small_mask)
    cases = {
        "input_unreadable": {"image_uri": str(tmp / "missing.png")},
        "mask_unreadable": {"mask_uri": str(broken)},
        "mask_empty": {"mask_uri": str(empty_mask)},
        "prompt_unknown": {"prompt": "tiny/dent"},
        "invalid_row": {"category": "../evil"},
    }
    rows = [{**good, **change, "sample_id": f"bad{i}"} for i, change in enumerate(cases.values())]
    rows.append({**good, "image_uri": str(broken), "sample_id": "bad_trunc"})
    # A mask of another size is fine: it comes from another image and is resized to the model's frame on its own.
    rows.append({**good, "mask_uri": str(small_mask), "sample_id": "other_size"})
    out = _load(rows)
    assert out["status"].tolist() == [*cases, "input_unreadable", ""]
    assert set(out["stage"][:-1]) == {"load"}
    assert "missing.png" in out["detail"][0]
    assert out["mask"][-1].all()  # the 20×20 all-anomaly mask, resized to 32×32


def test_synthesizer_is_batch_independent_and_passes_rejections(setup: dict) -> None:
    rows = setup["rows"]
    bad = {**rows[0], "sample_id": "bad", "prompt": "tiny/dent"}
    batch = _load([rows[0], bad, rows[1], rows[2]])
    synth = FastSynthesizer(model_uri=setup["model"], sampler=SynthesisConfig(nfe=3, batch_size=2))
    out = synth(batch)
    assert out["status"].tolist() == ["", "prompt_unknown", "", ""]
    assert out["nfe"].tolist() == [3, 0, 3, 3] and out["finite"].all()
    assert not out["image"][1].any()  # the rejected row stays zeros
    alone = synth({k: v[2:3] for k, v in batch.items()})
    np.testing.assert_array_equal(alone["image"][0], out["image"][2])
    # pixels outside the mask are the input's, exactly
    outside = batch["mask"][0] == 0
    np.testing.assert_array_equal(out["image"][0][outside], batch["image"][0][outside])
    assert not np.array_equal(out["image"][0], batch["image"][0])


def test_the_cpu_stage_imports_neither_torch_nor_diffusers_in_a_fresh_process() -> None:
    """A Ray task worker imports ``encode_and_qc``'s module (and its package) before its first block; with torch and
    diffusers that took about 5 s on the first shard's critical path. Ray pickles the function by its module."""
    assert encode_and_qc.__module__ == "pipelines.synthesize.encode"
    probe = (
        "import sys, pickle, pipelines.synthesize.encode as e; pickle.loads(pickle.dumps(e.encode_and_qc)); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'ray') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_encode_and_qc(setup: dict) -> None:
    rows = setup["rows"]
    batch = _load(rows[:4])
    n = 4
    batch["image"][1] = 7  # blank output
    batch.update(
        finite=np.array([True, True, False, True]),
        latent_mask_empty=np.array([False, False, False, True]),
        nfe=np.full(n, 3, np.int32),
    )
    out = encode_and_qc(batch, qc_cfg=qc.QCConfig())
    assert out["status"].tolist() == ["", "output_blank", "output_nonfinite", "latent_mask_empty"]
    assert set(out["stage"][1:]) == {"qc"}
    np.testing.assert_array_equal(decode_png(out["image_png"][0]), batch["image"][0])
    np.testing.assert_array_equal(decode_png(out["mask_png"][0]), batch["mask"][0])
    assert out["mask_area"][0] == int((batch["mask"][0] > 0).sum()) and "image" not in out
    kept = encode_and_qc(batch, qc_cfg=qc.QCConfig(reject_latent_mask_empty=False))
    assert kept["status"][3] == ""
    strict = encode_and_qc(batch, qc_cfg=qc.QCConfig(min_mask_area_px=32 * 32 + 1))
    assert strict["status"][0] == "mask_area_too_small" and "below qc.min_mask_area_px" in strict["detail"][0]


def test_change_check_rejects_pairs_with_nothing_painted_inside_the_mask(setup: dict) -> None:
    """qc.min_change: a pair whose output equals its input inside the label is rejected with a reason; a painted
    one of the same batch passes; with the check off (0) both pass."""
    rows = setup["rows"]
    synth = FastSynthesizer(model_uri=setup["model"], sampler=SynthesisConfig(nfe=3))
    out = synth(_load(rows[:2]))
    np.testing.assert_array_equal(out["image_in"][1], _load(rows[:2])["image"][1])  # x_n travels with x_out
    out["image"][1] = out["image_in"][1]  # nothing painted in row 1
    inside = out["mask"][0] > 0
    painted = np.abs(out["image"][0].astype(int) - out["image_in"][0].astype(int))[inside].mean()
    assert painted > 0.5
    checked = encode_and_qc(out, qc_cfg=qc.QCConfig(min_change=0.5))
    assert checked["status"].tolist() == ["", "output_unchanged"] and checked["stage"][1] == "qc"
    assert "0.00 grey levels, below qc.min_change = 0.5" in checked["detail"][1]
    assert encode_and_qc(out, qc_cfg=qc.QCConfig())["status"].tolist() == ["", ""]
    with pytest.raises(ValueError, match="min_change"):
        qc.QCConfig(min_change=-1)


def test_the_change_check_is_part_of_a_fingerprint_only_when_on() -> None:
    def content(*overrides: str) -> dict:
        return load_config(SynthesizeConfig, None, ["manifest=m", "out=o", *overrides]).content("model")

    assert "min_change" not in content()["qc"]  # outputs made before the check existed keep their fingerprint
    assert content("qc.min_change=3")["qc"]["min_change"] == 3.0


@pytest.mark.parametrize("paste", ["residual", "smooth"])
def test_window_frame_paints_in_a_native_window_and_pastes_back_inside_the_mask(tmp_path: Path, paste: str) -> None:
    """A window-frame model: inputs are cut at the image's own size around the mask (a mask of another size is
    resized to the image first), the output is the native image with only the mask's pixels changed; both pastes
    that carry a change carry it to native size against the window they started from."""
    from PIL import Image

    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 2}, mode="RGB", size=(90, 70))
    model = publish_tiny_model(str(tmp_path / "model"), frame="window")
    rows = pair_rows(root, model, {("tiny", "crack"): 2})
    big = tmp_path / "big_mask.png"  # a large mask from an image twice the size: a larger window, resized to 32
    big_mask = np.zeros((180, 140), np.uint8)
    big_mask[20:150, 30:110] = 255
    Image.fromarray(big_mask).save(big)
    rows.append({**rows[0], "sample_id": "large", "mask_uri": str(big)})
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    batch = load_inputs(
        table, pending=_pending(rows), image_size=32, image_channels=3, keys=["good", "tiny/crack"], frame="window"
    )
    assert (batch["status"] == "").all() and batch["image"].shape == (3, 32, 32, 3)
    assert batch["window"][0][2] == 32 and batch["window"][2][2] > 32  # native window; a larger one for the big mask
    synth = FastSynthesizer(model_uri=model, sampler=SynthesisConfig(nfe=3, batch_size=4, paste=paste))
    painted = synth(batch)
    assert np.array_equal(painted["window_in"], batch["image"])
    out = encode_and_qc(painted, qc_cfg=qc.QCConfig())
    assert (out["status"] == "").all()
    for i, row in enumerate(rows):
        source = decode_png(Path(row["image_uri"]).read_bytes(), "RGB")
        image, label = decode_png(out["image_png"][i], "RGB"), decode_png(out["mask_png"][i]) > 0
        assert image.shape == source.shape and label.shape == source.shape[:2]  # native size, 70 × 90
        assert (out["height"][i], out["width"][i]) == (90, 70)
        np.testing.assert_array_equal(image[~label], source[~label])  # background bit-exact
        assert not np.array_equal(image[label], source[label])
    expected = np.asarray(Image.fromarray(big_mask).resize((70, 90), Image.Resampling.NEAREST)) > 0
    np.testing.assert_array_equal(decode_png(out["mask_png"][2]) > 0, expected)
    assert out["mask_area"][2] == int(expected.sum())


def test_a_zoomed_window_model_paints_a_small_defect_in_a_smaller_window_and_pastes_back_at_native_size(
    tmp_path: Path,
) -> None:
    from PIL import Image

    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 1}, mode="RGB", size=(90, 70))
    model = publish_tiny_model(str(tmp_path / "model"), frame="window", window_zoom=2.0)
    assert read_model_info(model).window_zoom == 2.0
    small = np.zeros((90, 70), np.uint8)
    small[40:45, 30:36] = 255  # 5 × 6: its window is ⌈32 / 2⌉ = 16 px, resized up to 32
    Image.fromarray(small).save(tmp_path / "small_mask.png")
    rows = [{**pair_rows(root, model, {("tiny", "crack"): 1})[0], "mask_uri": str(tmp_path / "small_mask.png")}]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    kwargs = {"pending": _pending(rows), "image_size": 32, "image_channels": 3, "keys": ["good", "tiny/crack"]}
    batch = load_inputs(table, frame="window", window_zoom=2.0, **kwargs)
    plain = load_inputs(table, frame="window", **kwargs)
    assert batch["window"][0][2] == 16 and plain["window"][0][2] == 32
    assert batch["mask"][0].astype(bool).sum() >= 4 * plain["mask"][0].astype(bool).sum()
    synth = FastSynthesizer(model_uri=model, sampler=SynthesisConfig(nfe=3, batch_size=4))
    out = encode_and_qc(synth(batch), qc_cfg=qc.QCConfig())
    source = decode_png(Path(rows[0]["image_uri"]).read_bytes(), "RGB")
    image, label = decode_png(out["image_png"][0], "RGB"), decode_png(out["mask_png"][0]) > 0
    assert out["status"][0] == "" and image.shape == source.shape
    np.testing.assert_array_equal(label, small > 0)
    np.testing.assert_array_equal(image[~label], source[~label])  # background bit-exact
    assert not np.array_equal(image[label], source[label])


def test_a_window_level_model_paints_relative_to_the_background_half_the_change_on_a_window_half_as_bright(
    tmp_path: Path,
) -> None:
    """With ``ModelInfo.window_level`` a window and the same window at half its grey levels are the same input to the
    model (each scaled to the level L), so the darker one gets half the change; without a level they are two inputs
    and their changes are unrelated. The background stays bit-exact either way."""
    from PIL import Image

    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 1}, mode="RGB", size=(90, 70))
    rng = np.random.default_rng(0)
    bright = (rng.integers(50, 90, (90, 70, 3)) * 2).astype(np.uint8)  # even levels 100..178
    images = {"bright": bright, "dark": bright // 2}  # exactly half
    for name, image in images.items():
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    worst = {}
    for level in (None, 60.0):
        model = publish_tiny_model(str(tmp_path / f"model-{level}"), frame="window", window_level=level)
        assert read_model_info(model).window_level == level
        row = pair_rows(root, model, {("tiny", "crack"): 1})[0]  # both rows keep its seed: the same noise
        rows = [{**row, "sample_id": name, "image_uri": str(tmp_path / f"{name}.png")} for name in images]
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        kwargs = {"image_size": 32, "image_channels": 3, "keys": ["good", "tiny/crack"], "frame": "window"}
        batch = load_inputs(table, pending=_pending(rows), **kwargs)
        out = FastSynthesizer(model_uri=model, sampler=SynthesisConfig(nfe=3, batch_size=4))(batch)
        change = out["image"].astype(np.float64) - batch["image"]  # (2, 32, 32, 3)
        inside = batch["mask"][0] > 0
        assert np.array_equal(batch["mask"][0], batch["mask"][1]) and inside.any()
        assert not change[:, ~inside].any()  # background bit-exact
        unclipped = (out["image"][0] > 0) & (out["image"][0] < 255) & (out["image"][1] > 0) & (out["image"][1] < 255)
        keep = unclipped & inside[..., None]
        assert keep.sum() > 20 and np.abs(change[0][keep]).max() > 4  # something was painted
        worst[level] = float(np.abs(change[1][keep] - change[0][keep] / 2).max())
    assert worst[60.0] <= 1.5  # uint8 rounding of each output only
    assert worst[None] > 4  # the test can tell: without a level the dark window's change is not half the bright one's


def test_reference_start_pastes_the_rows_real_defect_in_the_window_and_rejects_rows_without_one(
    tmp_path: Path,
) -> None:
    """``sampler.start: reference``: the load stage pastes each row's real defect where its mask lies (cut as the
    input is); the painter starts from it; a row whose mask has no known defect image is rejected with a reason."""
    from fast_core.baselines.realpaste import paste_in_place
    from fast_core.data.windows import cut_around, cut_image, mask_at
    from pipelines.synthesize.baseline_stage import defect_image_uris

    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 2}, mode="RGB", size=(90, 70))
    model = publish_tiny_model(str(tmp_path / "model"), frame="window")
    rows = pair_rows(root, model, {("tiny", "crack"): 4})
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    defects = defect_image_uris(table, str(root))
    assert len(defects) == 4
    del defects[rows[2]["sample_id"]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(defects[rows[3]["sample_id"]]).read_bytes())
    defects[rows[3]["sample_id"]] = str(truncate_file(broken))
    batch = load_inputs(
        table, pending=_pending(rows), image_size=32, image_channels=3, keys=["good", "tiny/crack"], frame="window",
        defect_images=defects,
    )  # fmt: skip
    assert batch["status"].tolist() == ["", "", qc.GENERATOR_FAILED, qc.INPUT_UNREADABLE]
    assert "no defect image" in batch["detail"][2] and "broken.png" in batch["detail"][3]
    image = decode_png(Path(rows[0]["image_uri"]).read_bytes(), "RGB")
    mask = decode_png(Path(rows[0]["mask_uri"]).read_bytes(), "L")
    defect = decode_png(Path(defects[rows[0]["sample_id"]]).read_bytes(), "RGB")
    cut = cut_around(image, mask, 32, 3, 0.25)
    expected = cut_image(paste_in_place(image, defect, mask_at(mask, 90, 70)).transpose(2, 0, 1), cut.window, 32)
    np.testing.assert_array_equal(batch["reference"][0], expected.transpose(1, 2, 0))
    inside = batch["mask"][0] > 0
    assert not np.array_equal(batch["reference"][0][inside], batch["image"][0][inside])
    np.testing.assert_array_equal(batch["reference"][0][~inside], batch["image"][0][~inside])

    sampler = SynthesisConfig(nfe=5, start="reference", start_t=500, batch_size=4)
    out = encode_and_qc(FastSynthesizer(model_uri=model, sampler=sampler)(batch), qc_cfg=qc.QCConfig())
    assert out["status"].tolist() == ["", "", qc.GENERATOR_FAILED, qc.INPUT_UNREADABLE]
    noised_bg = SynthesisConfig(nfe=5, start="noised_background", start_t=500, batch_size=4)
    other = encode_and_qc(FastSynthesizer(model_uri=model, sampler=noised_bg)(batch), qc_cfg=qc.QCConfig())
    assert out["image_png"][0] != other["image_png"][0]  # the start depends on the pasted defect
    label = decode_png(out["mask_png"][0]) > 0
    np.testing.assert_array_equal(decode_png(out["image_png"][0], "RGB")[~label], image[~label])


def test_grayscale_rows_encode_as_l_png() -> None:
    batch = {
        "sample_id": np.array(["a"], dtype=object),
        "category": np.array(["c"], dtype=object),
        "defect_type": np.array(["d"], dtype=object),
        "prompt": np.array(["c/d"], dtype=object),
        "seed": np.array([1]),
        "source_image": np.array(["x"], dtype=object),
        "mask_source": np.array(["m"], dtype=object),
        "row": np.array([0]),
        "shard": np.array([0]),
        "status": np.array([""], dtype=object),
        "stage": np.array([""], dtype=object),
        "detail": np.array([""], dtype=object),
        "image": np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1),
        "mask": np.full((1, 4, 4), 255, np.uint8),
        "finite": np.array([True]),
        "latent_mask_empty": np.array([False]),
        "nfe": np.array([3]),
    }
    out = encode_and_qc(batch, qc_cfg=qc.QCConfig())
    assert decode_png(out["image_png"][0]).shape == (4, 4)


@pytest.mark.parametrize("name", ["synthesize-cpu.yaml", "synthesize-gpu.yaml", "synthesize-baseline.yaml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(SynthesizeConfig, REPO / "jobs" / "configs" / name)
    assert cfg.shard_size >= 1 and cfg.sampler.nfe == 10


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("manifest: m\nout: o\ncompute:\n  actors: 2\n")
    with pytest.raises(ValueError, match=r"s.yaml.compute: unknown key\(s\) 'actors'; valid keys: concurrency"):
        load_config(SynthesizeConfig, path)
    with pytest.raises(ValueError, match="compute.dtype = 'float16' needs a GPU"):
        load_config(SynthesizeConfig, None, ["manifest=m", "out=o", "compute.dtype=float16"])
    with pytest.raises(ValueError, match="shard_size must be an integer >= 1"):
        load_config(SynthesizeConfig, None, ["manifest=m", "out=o", "shard_size=0"])
    with pytest.raises(ValueError, match="QCConfig.min_mask_area_px = -1 must be >= 0"):
        load_config(SynthesizeConfig, None, ["manifest=m", "out=o", "qc.min_mask_area_px=-1"])
    cfg = load_config(SynthesizeConfig, None, ["manifest=m", "out=o", "compute.batch_size=4"])
    changed = load_config(
        SynthesizeConfig, None, ["manifest=m", "out=o", "compute.concurrency=3", "sampler.batch_size=2"]
    )
    assert cfg.content("model") == changed.content("model")  # compute settings do not change the bytes
    assert cfg.content("model") != load_config(
        SynthesizeConfig, None, ["manifest=m", "out=o", "sampler.nfe=12"]
    ).content("model")


def test_the_paste_is_part_of_a_fast_fingerprint_only() -> None:
    def content(*overrides: str) -> dict:
        return load_config(SynthesizeConfig, None, ["manifest=m", "out=o", *overrides]).content("model")

    residual, replace = content(), content("sampler.paste=replace")
    assert residual != replace and residual["sampler"]["paste"] == "residual"
    assert "paste" not in replace["sampler"]  # outputs made before the setting existed were all "replace"
    assert content("generator=cutpaste") == content("generator=cutpaste", "sampler.paste=replace")  # unused there
    smooth = content("sampler.paste=smooth")
    assert smooth["sampler"]["paste"] == "smooth" and "smooth_scale" not in smooth["sampler"]  # at its default
    assert content("sampler.paste=smooth", "sampler.smooth_scale=1.0")["sampler"]["smooth_scale"] == 1.0
    assert content("sampler.smooth_scale=1.0") == residual  # unused by the residual paste: the same bytes
    assert "smooth_min_radius" not in smooth["sampler"]  # 0 (smooth every mask): the datasets made before it
    assert content("sampler.paste=smooth", "sampler.smooth_min_radius=8")["sampler"]["smooth_min_radius"] == 8
    assert content("sampler.smooth_min_radius=8") == residual
    assert "smooth_max_sigma" not in smooth["sampler"]  # null (no cap): the datasets made before it
    assert content("sampler.paste=smooth", "sampler.smooth_max_sigma=3")["sampler"]["smooth_max_sigma"] == 3.0
    assert content("sampler.smooth_max_sigma=3") == residual


def test_later_sampler_settings_are_part_of_a_fast_fingerprint_only_when_on() -> None:
    def content(*overrides: str) -> dict:
        return load_config(SynthesizeConfig, None, ["manifest=m", "out=o", *overrides]).content("model")

    for name in ("guidance", "clip_x0", "farm_min_t", "start_t"):  # at their "off" value: the fingerprint before them
        assert name not in content()["sampler"]
    assert content("sampler.guidance=3.0")["sampler"]["guidance"] == 3.0
    assert content("sampler.clip_x0=4.0")["sampler"]["clip_x0"] == 4.0
    assert content("sampler.farm_min_t=800")["sampler"]["farm_min_t"] == 800
    assert content("sampler.start=reference", "sampler.start_t=500")["sampler"]["start_t"] == 500
    assert content("generator=perlin") == content("generator=perlin", "sampler.guidance=3.0", "sampler.clip_x0=4")

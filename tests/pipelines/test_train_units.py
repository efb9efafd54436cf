"""Training pieces that need no Ray: config validation, data preparation, the run store, flips, seeds, grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_core.data.transforms import decode_png
from fast_core.data.window_level import background_mean
from fast_core.data.windows import Window, cut_image
from pipelines.config import load_config
from pipelines.train.checkpoint import CheckpointError, RunStore, flatten_optimizer_state, unflatten_optimizer_state
from pipelines.train.config import StageConfig, TrainConfig, check_dataset
from pipelines.train.data import check_stage_rows, load_training_data
from pipelines.train.grid import base_grid, compose, fast_grid, vae_grid
from pipelines.train.loops import WeightsEMA, lr_at
from pipelines.train.mask_data import load_box_shapes
from pipelines.train.models import (
    build_model,
    model_config,
    recorded_shift,
    required_stages,
    set_scaling_factor,
    stage_state,
)
from pipelines.train.run import _box_sizes, _check_run_info, stage_rows
from pipelines.train.steps import (
    StageObjective,
    configure_trainable,
    encode_rows,
    flip_batch,
    measure_latent_stats,
    prepare_batch,
    stage_model,
    step_seed,
)
from tests.helpers.dummy_data import make_dummy_mvtec, truncate_file, write_empty_mask
from tests.helpers.tiny_models import tiny_fast_ldm, write_taef2_folder

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_units") / "ds"
    return make_dummy_mvtec(root, n_good=4, defects={"scratch": 6, "dent": 3}, mode="RGB")


def tiny_cfg(dataset: Path, storage: Path, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        CONFIGS / "train-tiny.yaml",
        [f"dataset.root={dataset}", f"storage_path={storage}", *overrides],
    )


# ------------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "name", ["train-tiny.yaml", "train-cpu-small.yaml", "train-cpu-window.yaml", "train-gpu-full.yaml"]
)
def test_example_configs_load(name: str) -> None:
    cfg = load_config(TrainConfig, CONFIGS / name, ["dataset.root=/x"])
    assert cfg.stages == ("vae", "base", "fast")
    assert cfg.model_uri == f"{cfg.storage_path}/{cfg.run_name}/model"


def test_mask_model_config_loads_in_the_stretch_frame() -> None:
    cfg = load_config(TrainConfig, CONFIGS / "train-mask-cpu.yaml")
    assert cfg.stages == ("mask",) and cfg.mask_model.frame == "stretch" and cfg.mask_model.image_size == 64
    assert cfg.mask_model.turns is False
    assert cfg.mask_model_uri == f"{cfg.storage_path}/{cfg.run_name}/mask_model"


def test_relative_local_paths_become_absolute(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # Ray Train workers run elsewhere: they must get the driver's absolute paths
    cfg = tiny_cfg(dataset, Path("runs"), 'publish_uri="out/model"')
    assert cfg.storage_path == str(tmp_path / "runs") and cfg.publish_uri == str(tmp_path / "out" / "model")
    pretrained = tiny_cfg(dataset, Path("runs"), 'model.first_stage_uri="models/taef2"')
    assert pretrained.model.first_stage_uri == str(tmp_path / "models" / "taef2")
    assert tiny_cfg(dataset, Path("x"), 'storage_path="s3://bucket/runs"').storage_path == "s3://bucket/runs"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stage.vae.steps=0", "TrainConfig.stage.vae.steps must be an integer >= 1"),
        ("scaling.mixed_precision=bf16", "needs use_gpu: true"),
        ("model.base_model_uri=/some/base", "remove 'vae' and 'base' from stages"),
        ("fault.stage=mask", "is not one of the stages"),
        ("stage.fast.lr=0", "TrainConfig.stage.fast.lr must be > 0"),
        ("run_name=a/b", "TrainConfig.run_name = 'a/b'"),
        ("stage.fast.batchsize=3", "unknown key(s) 'batchsize'"),
        ("stages=[vae, vae]", "more than once"),
        ("loss.fg_weight=-1", "TrainConfig.loss.fg_weight must be a finite number >= 0"),
        ("loss.fg_weight=.nan", "TrainConfig.loss.fg_weight must be a finite number >= 0"),
        ("loss.snr_gamma=0", "TrainConfig.loss.snr_gamma must be a number > 0 or null"),
        ("loss.snr_gamma=.inf", "TrainConfig.loss.snr_gamma must be a number > 0 or null"),
        ("stage.fast.ema_decay=1.0", "TrainConfig.stage.fast.ema_decay must be in (0, 1) or null"),
        ("stage.vae.ema_decay=0.99", "the VAE stage keeps no EMA"),
        ("stage.base.lr_final=2", "TrainConfig.stage.base.lr_final must be in [0, 1]"),
        ("stage.base.lr_schedule=linear", "lr_schedule"),
        ("scaling.max_failures=-1", "TrainConfig.scaling.max_failures must be an integer >= 0"),
        ("model.first_stage_uri=", "first_stage_uri is empty"),
        ("model.latent_shift=true", "latent_shift is measured on a pretrained first stage; set model.first_stage_uri"),
        ("model.latent_shift=1", "model.latent_shift: expected true/false, got 1"),
        ("model.unet_conditioning=masked", "unet_conditioning"),
        ("mask_model.frame=crop", "mask_model.frame = 'crop' is not one of: 'image', 'box'"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        tiny_cfg(tmp_path, tmp_path / "runs", override)
    assert message in str(info.value)


def test_stages_run_in_fixed_order(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, tmp_path / "runs", "stages=[fast, vae, base]")
    assert cfg.stages == ("vae", "base", "fast")


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "nope", tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        check_dataset(cfg.dataset)
    cfg = tiny_cfg(tmp_path, tmp_path / "runs", "dataset.categories=[widget]")
    with pytest.raises(ValueError, match="no category folder"):
        check_dataset(cfg.dataset)


def test_rerun_with_another_loss_weight_is_refused(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(dataset, tmp_path / "runs")
    store = RunStore(cfg.run_uri)
    keys = ["good", "widget/dent", "widget/scratch"]
    assert _check_run_info(store, cfg, keys, resume=False) is False
    info = json.loads(Path(store.uri("run.json")).read_text())
    del info["loss"]  # a run recorded before loss settings existed trained with the plain mean
    Path(store.uri("run.json")).write_text(json.dumps(info))
    assert _check_run_info(store, cfg, keys, resume=True) is True
    weighted = tiny_cfg(dataset, tmp_path / "runs", "loss.fg_weight=10")
    with pytest.raises(ValueError, match="trained with different settings.*loss"):
        _check_run_info(store, weighted, keys, resume=True)
    info["loss"] = {"fg_weight": 0.0}  # recorded before loss.snr_gamma existed: no min-SNR weighting
    Path(store.uri("run.json")).write_text(json.dumps(info))
    assert _check_run_info(store, cfg, keys, resume=True) is True
    min_snr = tiny_cfg(dataset, tmp_path / "runs", "loss.snr_gamma=5")
    with pytest.raises(ValueError, match="trained with different settings.*loss"):
        _check_run_info(store, min_snr, keys, resume=True)
    # windows flipped as they are cut are other training data: a run recorded before the setting cut them unflipped
    window = tiny_cfg(dataset, tmp_path / "runs", "run_name=w", "dataset.frame=window")
    window_store = RunStore(window.run_uri)
    _check_run_info(window_store, window, keys, resume=False)
    info = json.loads(Path(window_store.uri("run.json")).read_text())
    del info["dataset"]["window_flips"]
    Path(window_store.uri("run.json")).write_text(json.dumps(info))
    assert _check_run_info(window_store, window, keys, resume=True) is True
    flips = tiny_cfg(dataset, tmp_path / "runs", "run_name=w", "dataset.frame=window", "dataset.window_flips=true")
    with pytest.raises(ValueError, match="trained with different settings.*dataset"):
        _check_run_info(window_store, flips, keys, resume=True)


def test_a_rerun_with_another_frame_or_augmentation_is_refused_field_by_field(dataset: Path, tmp_path: Path) -> None:
    runs, keys = tmp_path / "runs", ["good", "widget/dent", "widget/scratch"]
    window = tiny_cfg(dataset, runs, "dataset.frame=window")
    store = RunStore(window.run_uri)
    _check_run_info(store, window, keys, resume=False)
    for override, field in [
        ("dataset.frame=global", "dataset.frame: run has 'window', config gives 'global'"),
        ("dataset.windows_per_defect=4", "dataset.windows_per_defect: run has 8, config gives 4"),
        ("dataset.windows_per_normal=2", "dataset.windows_per_normal: run has 1, config gives 2"),
        ("dataset.window_margin=0.5", "dataset.window_margin: run has 0.25, config gives 0.5"),
        ("dataset.window_rot90=false", "dataset.window_rot90: run has True, config gives False"),
        ("dataset.vflip=true", "dataset.vflip: run has False, config gives True"),
        ("dataset.window_zoom=2", "dataset.window_zoom: run has 1.0, config gives 2.0"),
        ("dataset.window_jitter=0.25", "dataset.window_jitter: run has 0.0, config gives 0.25"),
        ("dataset.window_level=true", "dataset.window_level: run has False, config gives True"),
    ]:
        changed = tiny_cfg(dataset, runs, "dataset.frame=window", override)
        with pytest.raises(ValueError, match="trained with different settings") as info:
            _check_run_info(store, changed, keys, resume=True)
        assert f"({field}); use another run_name" in str(info.value)  # only the field that differs is named
    # a run recorded before these fields were (its dataset entry as it was written then): their values are unknown,
    # so a rerun of either frame goes on
    info = json.loads(Path(store.uri("run.json")).read_text())
    then = ("root", "layout", "categories", "image_size", "image_channels", "window_flips", "normal_masks")
    info["dataset"] = {name: info["dataset"][name] for name in then}
    Path(store.uri("run.json")).write_text(json.dumps(info))
    assert _check_run_info(store, window, keys, resume=True) is True
    assert _check_run_info(store, tiny_cfg(dataset, runs), keys, resume=True) is True


def test_a_run_recorded_before_the_farm_options_existed_resumes_and_a_changed_farm_is_refused(
    dataset: Path, tmp_path: Path
) -> None:
    cfg = tiny_cfg(dataset, tmp_path / "runs")
    store = RunStore(cfg.run_uri)
    keys = ["good", "widget/dent", "widget/scratch"]
    _check_run_info(store, cfg, keys, resume=False)
    info = json.loads(Path(store.uri("run.json")).read_text())
    for name in (
        "farm_keyed",
        "farm_skips",
        "farm_residual",
        "farm_context",
        "farm_pixel_mask",
        "unet_prediction",
        "unet_key_embedding",
        "latent_shift",
    ):
        del info["model"][name]
    Path(store.uri("run.json")).write_text(json.dumps(info))
    assert _check_run_info(store, cfg, keys, resume=True) is True
    keyed = tiny_cfg(dataset, tmp_path / "runs", "model.farm_keyed=true")
    with pytest.raises(ValueError, match="trained with different settings.*model"):
        _check_run_info(store, keyed, keys, resume=True)
    assert model_config(keyed, keys).farm.num_keys == 3 and model_config(cfg, keys).farm.num_keys == 0
    res = tiny_cfg(dataset, tmp_path / "runs", "model.farm_residual=true", "model.farm_skips=true")
    with pytest.raises(ValueError, match="trained with different settings.*model"):
        _check_run_info(store, res, keys, resume=True)
    farm = model_config(res, keys).farm
    assert (farm.residual, farm.skips, model_config(cfg, keys).farm.residual) == (True, True, False)
    ctx = tiny_cfg(dataset, tmp_path / "runs", "model.farm_context=true")
    with pytest.raises(ValueError, match="model.farm_context: run has False, config gives True"):
        _check_run_info(store, ctx, keys, resume=True)
    assert (model_config(ctx, keys).farm.context, model_config(cfg, keys).farm.context) == (True, False)
    with pytest.raises(ValueError, match="model.farm_skips: expected true/false"):
        tiny_cfg(dataset, tmp_path / "runs", "model.farm_skips=3")
    v = tiny_cfg(dataset, tmp_path / "runs", "model.unet_prediction=v_prediction")
    with pytest.raises(ValueError, match="model.unet_prediction: run has None, config gives 'v_prediction'"):
        _check_run_info(store, v, keys, resume=True)
    assert (model_config(v, keys).unet.prediction, model_config(cfg, keys).unet.prediction) == (
        "v_prediction",
        "epsilon",
    )
    px = tiny_cfg(dataset, tmp_path / "runs", "model.farm_pixel_mask=true")
    with pytest.raises(ValueError, match="model.farm_pixel_mask: run has False, config gives True"):
        _check_run_info(store, px, keys, resume=True)
    emb = tiny_cfg(dataset, tmp_path / "runs", "model.unet_key_embedding=true")
    with pytest.raises(ValueError, match="model.unet_key_embedding: run has False, config gives True"):
        _check_run_info(store, emb, keys, resume=True)
    assert (model_config(emb, keys).unet.key_embedding, model_config(cfg, keys).unet.key_embedding) == (True, False)
    with pytest.raises(ValueError, match="unet_key_embedding applies to a base trained here"):
        tiny_cfg(dataset, tmp_path, "model.unet_key_embedding=true", "model.base_model_uri=/b", "stages=[fast]")


def test_a_run_recorded_before_mask_frames_resumes_as_image_and_a_changed_frame_is_refused(
    dataset: Path, tmp_path: Path
) -> None:
    runs, keys = tmp_path / "runs", ["good", "widget/dent", "widget/scratch"]
    image = tiny_cfg(dataset, runs, "stages=[mask]", "mask_model.frame=image")
    store = RunStore(image.run_uri)
    _check_run_info(store, image, keys, resume=False)
    info = json.loads(Path(store.uri("run.json")).read_text())
    assert info["mask_model"] == {"frame": "image"}
    del info["mask_model"]  # recorded before the field existed: the whole-mask model, the only one there was
    Path(store.uri("run.json")).write_text(json.dumps(info))
    assert _check_run_info(store, image, keys, resume=True) is True
    stretch = tiny_cfg(dataset, runs, "stages=[mask]")  # the default frame of new configs
    assert stretch.mask_model.frame == "stretch" and stretch.mask_model.turns is False
    assert tiny_cfg(dataset, runs, "stages=[mask]", "mask_model.frame=box").mask_model.turns is True
    with pytest.raises(ValueError, match=r"mask_model.frame: run has 'image', config gives 'stretch'.*set mask_model"):
        _check_run_info(store, stretch, keys, resume=True)
    # a rerun that does not train the mask stage is not refused for the mask frame it does not use
    assert _check_run_info(store, tiny_cfg(dataset, runs), keys, resume=True) is True
    fresh = RunStore(tiny_cfg(dataset, runs, "run_name=fresh").run_uri)
    _check_run_info(fresh, tiny_cfg(dataset, runs, "run_name=fresh", "stages=[mask]"), keys, resume=False)
    assert json.loads(Path(fresh.uri("run.json")).read_text())["mask_model"] == {"frame": "stretch"}


# -------------------------------------------------------------------------------------------------------- data
def test_training_data_shapes_keys_and_exact_uint8(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(dataset, tmp_path)
    data = load_training_data(cfg.dataset)
    assert data.keys == ["good", "widget/dent", "widget/scratch"]
    assert data.normal.shape == (4, 3, 32, 32) and data.normal.dtype == np.uint8
    # floor(n/3) anomalies per defect: 6 → 2 scratch, 3 → 1 dent
    assert data.anomalies.shape == (3, 3, 32, 32) and data.masks.shape == (3, 1, 32, 32)
    assert sorted(data.anomaly_key_ids.tolist()) == [1, 2, 2]
    assert set(np.unique(data.masks)) <= {0, 1} and data.masks.sum() > 0
    assert len(data.stage_columns("vae")["image"]) == 7
    assert data.stage_columns("base")["key_id"].tolist()[:4] == [0, 0, 0, 0]
    assert set(data.stage_columns("fast")) == {"image", "mask", "key_id"}
    assert set(data.stage_columns("base")) == {"image", "key_id"}
    base = data.stage_columns("base", base_masks=True)  # for loss.fg_weight > 0: empty for the normal images
    assert base["mask"].shape == (7, 1, 32, 32) and not base["mask"][:4].any()
    assert np.array_equal(base["mask"][4:], data.masks)
    inpaint = tiny_cfg(dataset, tmp_path, "model.unet_conditioning=inpaint")  # normal images borrow the masks
    borrowed = stage_rows(data, inpaint, "base")["mask"]
    assert np.array_equal(borrowed[:4], data.masks[[0, 1, 2, 0]]) and np.array_equal(borrowed[4:], data.masks)
    px = tiny_cfg(dataset, tmp_path, "model.unet_conditioning=inpaint_px")  # the pixel-mask UNet: the same rows
    assert model_config(px, data.keys).unet.conditioning == "inpaint_px"
    assert np.array_equal(stage_rows(data, px, "base")["mask"], borrowed)
    own = tiny_cfg(dataset, tmp_path, "model.unet_conditioning=inpaint", "dataset.normal_masks=false")
    kept = stage_rows(data, own, "base")["mask"]  # normal images keep empty masks: masks hold defects only
    assert not kept[:4].any() and np.array_equal(kept[4:], data.masks)
    assert "mask" not in stage_rows(data, cfg, "base")  # plain UNet without fg_weight: no mask column
    with pytest.raises(ValueError, match="unet_conditioning applies to a base trained here"):
        tiny_cfg(dataset, tmp_path, "model.unet_conditioning=inpaint", "model.base_model_uri=/b", "stages=[fast]")
    with pytest.raises(ValueError, match="unet_prediction applies to a base trained here"):
        tiny_cfg(dataset, tmp_path, "model.unet_prediction=v_prediction", "model.base_model_uri=/b", "stages=[fast]")
    preview = data.preview(4)
    assert preview["normal"].shape == (4, 3, 32, 32) and sorted(set(preview["mask_key_ids"].tolist())) == [1, 2]
    with pytest.raises(ValueError, match="cannot fill one batch of 2 on each of 2"):
        check_stage_rows(data, "fast", batch_size=2, num_workers=2)


def test_window_frame_cuts_native_windows_around_each_defect(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", n_good=3, defects={"scratch": 6, "dent": 3}, size=(40, 60), mode="RGB")
    overrides = ["dataset.frame=window", "dataset.windows_per_defect=4", "dataset.windows_per_normal=2"]
    cfg = tiny_cfg(root, tmp_path / "runs", *overrides)
    data = load_training_data(cfg.dataset, seed=5)
    assert data.keys == ["good", "widget/dent", "widget/scratch"]
    assert data.normal.shape == (6, 3, 32, 32)  # 3 images × 2 random windows, at native scale
    assert data.anomalies.shape == (12, 3, 32, 32) and data.masks.shape == (12, 1, 32, 32)  # 3 images × 4 windows
    assert sorted(data.anomaly_key_ids.tolist()) == [1] * 4 + [2] * 8
    assert all(m.any() for m in data.masks)  # every defect window holds its defect
    # the same seed gives the same windows; another seed other offsets
    again = load_training_data(cfg.dataset, seed=5)
    assert np.array_equal(again.anomalies, data.anomalies) and np.array_equal(again.normal, data.normal)
    other = load_training_data(cfg.dataset, seed=6)
    assert not np.array_equal(other.anomalies, data.anomalies)
    # native scale: a normal window is a crop of its image, not a resize
    from fast_core.data.layout import load_image

    first = np.asarray(load_image(root / "widget" / "train" / "good" / "000.png", "RGB")).transpose(2, 0, 1)
    crop = data.normal[0]
    assert any(np.array_equal(first[:, y : y + 32, x : x + 32], crop) for y in range(40 - 31) for x in range(60 - 31))
    with pytest.raises(ValueError, match="window_margin"):
        tiny_cfg(root, tmp_path / "runs", "dataset.window_margin=-1")
    # window_flips: each window (with its mask) flipped once as it is cut; a normal window is still a crop, flipped
    on = tiny_cfg(root, tmp_path / "runs", *overrides, "dataset.window_flips=true").dataset
    flipped = load_training_data(on, seed=5)
    assert flipped.normal.shape == data.normal.shape and flipped.anomalies.shape == data.anomalies.shape
    assert np.array_equal(load_training_data(on, seed=5).anomalies, flipped.anomalies)
    assert all(m.any() for m in flipped.masks)
    crops = [first[:, y : y + 32, x : x + 32] for y in range(40 - 31) for x in range(60 - 31)]
    ways = [(h, v) for h in (1, -1) for v in (1, -1)]
    found = [(h, v) for h, v in ways if any(np.array_equal(c[:, ::v, ::h], flipped.normal[0]) for c in crops)]
    assert found, "the first normal window is no flipped crop of its image"
    assert not np.array_equal(flipped.anomalies, data.anomalies)
    # window_jitter: the same windows with their grey levels moved once each: c (x − x̄) + x̄ + b, so each window is
    # still an exact affine image of its unjittered self (up to rounding and clipping), and the draws are seeded
    jitter = tiny_cfg(root, tmp_path / "runs", *overrides, "dataset.window_jitter=0.25").dataset
    moved = load_training_data(jitter, seed=5)
    assert np.array_equal(load_training_data(jitter, seed=5).anomalies, moved.anomalies)
    assert np.array_equal(moved.masks, data.masks)  # the same windows: the jitter draws from a stream of its own
    for before, after in [(data.normal[0], moved.normal[0]), (data.anomalies[0], moved.anomalies[0])]:
        x, y = before.astype(np.float64).ravel(), after.astype(np.float64).ravel()
        assert not np.array_equal(x, y)
        inside = (y > 0) & (y < 255)  # not clipped
        slope, offset = np.polyfit(x[inside], y[inside], 1)
        assert 0.75 - 0.02 <= slope <= 1.25 + 0.02
        assert np.abs(slope * x[inside] + offset - y[inside]).max() <= 1.0  # rounding only
    # window_level: the same windows, each scaled by one gain so that its background mean is L, the median of the
    # unscaled windows' background means (normal windows: their whole mean); rounding and clipping aside
    assert data.window_level is None
    levelled = load_training_data(tiny_cfg(root, tmp_path / "runs", *overrides, "dataset.window_level=true").dataset, 5)
    assert np.array_equal(levelled.masks, data.masks)
    backgrounds = [background_mean(w) for w in data.normal] + [
        background_mean(w, m[0]) for w, m in zip(data.anomalies, data.masks, strict=True)
    ]
    assert levelled.window_level == pytest.approx(float(np.median(backgrounds)))
    for before, after, b in zip(
        [*data.normal, *data.anomalies], [*levelled.normal, *levelled.anomalies], backgrounds, strict=True
    ):
        expected = np.clip(np.rint(before.astype(np.float64) * levelled.window_level / b), 0, 255)
        assert np.abs(after - expected).max() <= 1  # float32 rounding at .5 only
    with pytest.raises(ValueError, match="window_level needs frame: window"):
        tiny_cfg(root, tmp_path / "runs", "dataset.window_level=true")
    with pytest.raises(ValueError, match=r"window_jitter must be in \[0, 0.5\]"):
        tiny_cfg(root, tmp_path / "runs", *overrides, "dataset.window_jitter=0.6")
    with pytest.raises(ValueError, match="window_jitter needs frame: window"):
        tiny_cfg(root, tmp_path / "runs", "dataset.window_jitter=0.1")
    # window_zoom 2: normal windows are 16-pixel crops resized up to 32 (a smooth upscale, not a 32-pixel crop)
    zoomed = load_training_data(tiny_cfg(root, tmp_path / "runs", *overrides, "dataset.window_zoom=2").dataset, seed=5)
    assert zoomed.normal.shape == data.normal.shape and zoomed.anomalies.shape == data.anomalies.shape
    assert not any(np.array_equal(c, zoomed.normal[0]) for c in crops)
    assert any(
        np.array_equal(cut_image(first, Window(y, x, 16), 32), zoomed.normal[0])
        for y in range(40 - 15)
        for x in range(60 - 15)
    )
    assert zoomed.masks.sum() > data.masks.sum()  # the same defects cover more of a zoomed window
    for override, message in [
        ("dataset.window_zoom=0.5", r"window_zoom must be in \[1, 8\], got 0.5"),
        ("dataset.window_zoom=true", "window_zoom: expected a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            tiny_cfg(root, tmp_path / "runs", *overrides, override)
    with pytest.raises(ValueError, match="window_zoom needs frame: window"):
        tiny_cfg(root, tmp_path / "runs", "dataset.window_zoom=2")


def _write_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


@pytest.fixture
def defects_at_native_size(tmp_path: Path) -> Path:
    """120 × 160 images; the training third (files 000, 001) holds a 5 px and a 3 px blowhole and a 2 × 150 px and a
    100 × 3 px crack."""
    root = make_dummy_mvtec(tmp_path / "native", n_good=2, defects={"blowhole": 6, "crack": 6}, size=(120, 160))
    gt = root / "widget" / "ground_truth"
    yy, xx = np.mgrid[:120, :160]
    _write_mask(gt / "blowhole" / "000_mask.png", (yy - 50) ** 2 + (xx - 70) ** 2 <= 5)  # 5 × 5 disc
    blob = np.zeros((120, 160), bool)
    blob[90:93, 20:23] = True  # 3 × 3
    _write_mask(gt / "blowhole" / "001_mask.png", blob)
    crack = np.zeros((120, 160), bool)
    crack[60:62, 5:155] = True  # 2 × 150, horizontal
    _write_mask(gt / "crack" / "000_mask.png", crack)
    vertical = np.zeros((120, 160), bool)
    vertical[10:110, 80:83] = True  # 100 × 3
    _write_mask(gt / "crack" / "001_mask.png", vertical)
    return root


def test_box_frame_shapes_keep_tiny_and_thin_defects_and_their_real_sizes(
    defects_at_native_size: Path, tmp_path: Path
) -> None:
    root = defects_at_native_size
    cfg = tiny_cfg(root, tmp_path / "runs", "stages=[mask]", "mask_model.image_size=16", "mask_model.frame=box")
    keys = ["good", "widget/blowhole", "widget/crack"]
    box = load_box_shapes(cfg.dataset, keys, 16)
    assert box.shapes.shape == (4, 1, 16, 16) and box.shapes.dtype == np.uint8 and box.key_ids.tolist() == [1, 1, 2, 2]
    scale = math.sqrt(120 * 160)
    assert box.sides == {
        "widget/blowhole": [pytest.approx(5 / scale), pytest.approx(3 / scale)],
        "widget/crack": [pytest.approx(150 / scale), pytest.approx(100 / scale)],
    }
    blowhole, square, crack, vertical = (s[0].astype(bool) for s in box.shapes)
    assert square.all() and blowhole.mean() > 0.6  # a few pixels fill the whole frame, square or round:
    assert blowhole[8, 8] and blowhole[8, 0] and not blowhole[0, 0]  # the disc keeps its corners off
    # the thin cracks stay unbroken lines across the frame, one or two cells thick (any-pooling)
    assert crack.any(axis=0).all() and 1 <= crack.any(axis=1).sum() <= 2
    assert vertical.any(axis=1).all() and 1 <= vertical.any(axis=0).sum() <= 2
    # the whole-mask (image) frame loses the blowholes at the same S: they are a pixel or less at 16 × 16
    data = load_training_data(cfg.dataset)
    resized = torch.nn.functional.interpolate(torch.from_numpy(data.masks).float(), size=(16, 16), mode="nearest")
    assert max(resized[:2].sum(dim=(1, 2, 3)).tolist()) <= 1.0
    # the shapes and sizes do not depend on how the generator sees its images
    window = tiny_cfg(root, tmp_path / "runs", "dataset.frame=window", "dataset.image_size=64")
    other = load_box_shapes(window.dataset, keys, 16)
    assert np.array_equal(other.shapes, box.shapes) and other.sides == box.sides
    # the mask stage trains on them as they are: flipped and turned, never resized
    data.mask_shapes = box
    rows = stage_rows(data, cfg, "mask")
    assert rows["mask"] is box.shapes and rows["key_id"] is box.key_ids
    batch = {k: torch.from_numpy(v) for k, v in rows.items()}
    _, mask = prepare_batch(batch, torch.Generator().manual_seed(0), cfg, "mask", torch.device("cpu"))
    assert mask.shape == (4, 1, 16, 16) and mask.sum(dim=(1, 2, 3)).tolist() == box.shapes.sum(axis=(1, 2, 3)).tolist()
    big = {k: torch.from_numpy(v) for k, v in data.stage_columns("fast").items() if k != "image"}
    with pytest.raises(ValueError, match=r"box-frame mask shapes must be 16 × 16.*got \(32, 32\)"):
        prepare_batch(big, torch.Generator().manual_seed(0), cfg, "mask", torch.device("cpu"))


def test_stretch_frame_keeps_thin_cracks_as_bands_and_real_box_sides(
    defects_at_native_size: Path, tmp_path: Path
) -> None:
    root = defects_at_native_size
    stretch = ("stages=[mask]", "mask_model.image_size=16", "mask_model.frame=stretch", "mask_model.rotate90=false")
    cfg = tiny_cfg(root, tmp_path / "runs", *stretch)
    keys = ["good", "widget/blowhole", "widget/crack"]
    box = load_box_shapes(cfg.dataset, keys, 16, "stretch")
    assert box.shapes.shape == (4, 1, 16, 16) and box.key_ids.tolist() == [1, 1, 2, 2]
    records = box.sides["widget/crack"]
    assert [[round(a * 120), round(b * 160), fill] for a, b, fill in records] == [[2, 150, 1.0], [100, 3, 1.0]]
    crack, vertical = (s[0].astype(bool) for s in box.shapes[2:])
    assert crack.all() and vertical.all()  # a 2 × 150 crack fills its stretched frame: the size and aspect carry it
    model, _ = stage_model(cfg, keys, RunStore(cfg.run_uri), "mask", box.sides)
    assert (
        model.config.frame == "stretch" and model.config.box_records["widget/crack"][0] == box.sides["widget/crack"][0]
    )
    assert tiny_cfg(root, tmp_path / "runs", *stretch[:3]).mask_model.turns is False  # the frame's default
    with pytest.raises(ValueError, match="rotate90 must be false with frame 'stretch'"):
        tiny_cfg(root, tmp_path / "runs", *stretch[:3], "mask_model.rotate90=true")
    with pytest.raises(ValueError, match="frame must be 'box' or 'stretch'"):
        load_box_shapes(cfg.dataset, keys, 16, "image")  # type: ignore[arg-type]


def test_box_frame_skips_bad_masks_with_reasons_and_needs_one_per_key(
    defects_at_native_size: Path, tmp_path: Path
) -> None:
    root = defects_at_native_size
    gt = root / "widget" / "ground_truth"
    truncate_file(gt / "blowhole" / "001_mask.png", keep=0.3)
    write_empty_mask(gt / "crack" / "000_mask.png")
    cfg = tiny_cfg(root, tmp_path / "runs", "stages=[mask]")
    keys = ["good", "widget/blowhole", "widget/crack"]
    box = load_box_shapes(cfg.dataset, keys, 16)
    assert box.key_ids.tolist() == [1, 2] and [len(v) for v in box.sides.values()] == [1, 1]
    reasons = {Path(p).parent.name + "/" + Path(p).name: r for p, r in box.skipped}
    assert reasons["blowhole/001_mask.png"].startswith("unreadable mask") and reasons["crack/000_mask.png"].startswith(
        "empty mask"
    )
    write_empty_mask(gt / "blowhole" / "000_mask.png")
    with pytest.raises(ValueError, match="no usable training-third mask for widget/blowhole.*mask_model.frame: image"):
        load_box_shapes(cfg.dataset, keys, 16)


def test_unreadable_image_is_skipped_with_reason(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", n_good=3, defects={"scratch": 3})
    truncate_file(root / "widget" / "train" / "good" / "001.png", keep=0.3)
    data = load_training_data(tiny_cfg(root, tmp_path / "runs", "dataset.image_channels=1").dataset)
    assert len(data.normal) == 2 and data.normal.shape[1] == 1
    assert len(data.skipped) == 1 and "001.png" in data.skipped[0][0] and "unreadable" in data.skipped[0][1]


# ---------------------------------------------------------------------------------------------- checkpointing
def _adam_after_steps(n: int) -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(n):
        opt.zero_grad()
        layer(torch.ones(4, 3)).pow(2).sum().backward()
        opt.step()
    return layer, opt


def test_optimizer_state_round_trips_through_safetensors_and_json() -> None:
    _, opt = _adam_after_steps(3)
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {f"state.{i}.{n}" for i in (0, 1) for n in ("step", "exp_avg", "exp_avg_sq")}
    json.dumps(meta)  # the rest is plain JSON
    layer2, opt2 = _adam_after_steps(0)
    opt2.load_state_dict(unflatten_optimizer_state(tensors, json.loads(json.dumps(meta))))
    for p, p2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        for k in p:
            assert torch.equal(p[k], p2[k])
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["betas"] == [0.9, 0.999]


def test_store_save_latest_load_prune(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "run"))
    layer, opt = _adam_after_steps(2)
    assert store.latest("fast") is None and store.load_latest("fast") is None
    for step in (2, 4, 6):
        store.save("fast", step, layer.state_dict(), opt.state_dict(), {"epoch": step, "metrics": []}, keep=2)
    assert store.checkpoint_steps("fast") == [4, 6]  # pruned to 2
    ckpt = store.load_latest("fast")
    assert ckpt is not None and ckpt.step == 6 and ckpt.state["epoch"] == 6
    assert torch.equal(ckpt.weights["weight"], layer.weight.detach())
    assert int(ckpt.optimizer["state"][0]["step"]) == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "weights.safetensors").write_bytes(b"\x00garbage"), "weights.safetensors is not a valid"),
        (lambda d: (d / "optimizer.safetensors").unlink(), "optimizer.safetensors is missing"),
        (lambda d: (d / "state.json").write_text("{not json"), "state.json is not a valid checkpoint state"),
    ],
)
def test_corrupt_or_missing_checkpoint_files_are_named(tmp_path: Path, damage, message: str) -> None:
    store = RunStore(str(tmp_path / "run"))
    layer, opt = _adam_after_steps(1)
    folder = store.save("vae", 1, layer.state_dict(), opt.state_dict(), {"epoch": 0}, keep=2)
    damage(Path(folder))
    with pytest.raises(CheckpointError, match="step-00000001") as info:
        store.load_latest("vae")
    assert message in str(info.value)


def test_bad_latest_pointer_and_missing_folder(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "run"))
    layer, opt = _adam_after_steps(1)
    store.save("vae", 1, layer.state_dict(), opt.state_dict(), {"epoch": 0}, keep=2)
    pointer = tmp_path / "run" / "checkpoints" / "vae" / "LATEST.json"
    pointer.write_text('{"step": 5, "dir": "step-00000005"}')
    with pytest.raises(CheckpointError, match="state.json is missing"):
        store.load_latest("vae")
    pointer.write_text("[]")
    with pytest.raises(CheckpointError, match="not a valid checkpoint pointer"):
        store.latest("vae")


def test_build_model_needs_finished_earlier_stages(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(dataset, tmp_path / "runs")
    store = RunStore(cfg.run_uri)
    with pytest.raises(CheckpointError, match="stage 'vae' has not finished"):
        build_model(cfg, ["good", "widget/dent"], store, "base")
    model = build_model(cfg, ["good", "widget/dent"], store, "vae")
    assert set(stage_state(model, "vae")) == {k for k in model.state_dict() if k.startswith("vae.")}
    assert required_stages(cfg, "fast") == ["vae", "base"]
    assert required_stages(cfg, "mask") == []  # the mask model trains from scratch: stages [mask] runs on its own


def test_latent_stats_centre_each_channel_and_a_changed_shift_setting_is_refused(dataset: Path, tmp_path: Path) -> None:
    first = write_taef2_folder(tmp_path / "taef2", seed=1)
    cfg = tiny_cfg(dataset, tmp_path / "runs", f"model.first_stage_uri={first}", "model.latent_shift=true")
    model = build_model(cfg, ["good", "widget/dent"], RunStore(cfg.run_uri), "vae").eval()
    images = np.random.default_rng(0).integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    s, shift = measure_latent_stats(model, images, torch.device("cpu"), 4, shift=True)
    with torch.no_grad():
        e = model.encode_unscaled(torch.from_numpy(images).float() / 127.5 - 1.0)
    mu = e.mean(dim=(0, 2, 3))
    assert shift == pytest.approx(mu.tolist(), abs=1e-6)
    assert s == pytest.approx(1.0 / float((e - mu.view(1, -1, 1, 1)).std()), rel=1e-5)
    assert measure_latent_stats(model, images, torch.device("cpu"), 4, shift=False) == (
        pytest.approx(1.0 / float(e.std()), rel=1e-5),
        None,
    )
    set_scaling_factor(model, s, shift)
    with torch.no_grad():
        z = model.encode(torch.from_numpy(images).float() / 127.5 - 1.0)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and float(z.std()) == pytest.approx(1.0, rel=1e-4)
    assert model.config.taef2.latent_shift == model.vae.config.latent_shift == tuple(shift)

    assert recorded_shift(cfg, {"latent_shift": shift}) == shift
    with pytest.raises(
        ValueError, match="model.latent_shift is true but this run's finished stage 'vae' was measured without"
    ):
        recorded_shift(cfg, {"scaling_factor": s})
    plain = tiny_cfg(dataset, tmp_path / "runs", f"model.first_stage_uri={first}")
    with pytest.raises(ValueError, match="model.latent_shift is false but .* measured with a channel shift"):
        recorded_shift(plain, {"latent_shift": shift})
    kl = tiny_fast_ldm()
    with pytest.raises(ValueError, match="a latent shift needs the pretrained TAEF2 first stage"):
        set_scaling_factor(kl, 1.0, shift)


# ------------------------------------------------------------------------------------------------ loop helpers
def test_step_seed_is_stable_and_distinct() -> None:
    assert step_seed(0, "fast", 0, 1) == step_seed(0, "fast", 0, 1)
    assert len({step_seed(0, "fast", r, s) for r in range(2) for s in range(50)}) == 100
    assert 0 <= step_seed(7, "vae", 1, 3) < 2**63


def test_flip_batch_flips_image_and_mask_together() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    m = (x > 5).float()
    g = torch.Generator().manual_seed(3)
    fx, fm = flip_batch([x, m], g, hflip=True, vflip=True)
    assert torch.equal(fm, (fx > 5).float())  # the mask still labels the same pixels
    gx = flip_batch([x], torch.Generator().manual_seed(3), hflip=False, vflip=False)[0]
    assert torch.equal(gx, x)


# ------------------------------------------------------------------------------------------------------- grids
def test_compose_tiles_cells_with_gaps() -> None:
    cells = [[np.zeros((4, 5), np.uint8)] * 3, [np.zeros((4, 5), np.uint8)]]
    out = compose(cells)
    assert out.shape == (4 * 2 + 2, 5 * 3 + 2 * 2)
    assert out[4:6].min() == 255 and out[6:, 7:].min() == 255  # separator row and the padded short row


def test_vae_and_fast_grids_are_pngs_of_the_right_size() -> None:
    torch.manual_seed(0)
    model = tiny_fast_ldm().eval()
    imgs = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    vae = decode_png(vae_grid(model, imgs, torch.device("cpu")))
    assert vae.shape == (2 * 32 + 2, 2 * 32 + 2, 3)
    masks = np.zeros((2, 1, 32, 32), np.uint8)
    masks[:, :, 8:20, 8:20] = 1
    png = fast_grid(model, imgs, masks, ["tiny/crack", "tiny/scratch"], 4, 0, torch.device("cpu"))
    fast = decode_png(png)
    assert fast.shape == (2 * 32 + 2, 3 * 32 + 4, 3)
    assert np.array_equal(fast[:32, :32], imgs[0].transpose(1, 2, 0))  # column 1: the normal image itself
    assert png == fast_grid(model, imgs, masks, ["tiny/crack", "tiny/scratch"], 4, 0, torch.device("cpu"))
    inpaint = tiny_fast_ldm(inpaint=True).eval()  # the base grid of an inpaint UNet fills masks on normal images
    keys = ["good", "tiny/crack"]
    base = decode_png(base_grid(inpaint, keys, 3, 4, 0, torch.device("cpu"), (imgs, masks)))
    assert base.shape == (2 * 32 + 2, 3 * 32 + 4, 3)
    with pytest.raises(ValueError, match="inpaint UNet needs normal images and masks"):
        base_grid(inpaint, keys, 3, 4, 0, torch.device("cpu"))
    px = tiny_fast_ldm(inpaint="inpaint_px").eval()  # a pixel-mask UNet is given the masks' pixels too
    assert decode_png(base_grid(px, keys, 3, 4, 0, torch.device("cpu"), (imgs, masks))).shape == base.shape


def test_defect_windows_only_give_the_grids_their_own_defects_to_repaint(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", n_good=3, defects={"scratch": 6, "dent": 3}, size=(40, 60), mode="RGB")
    overrides = ["dataset.frame=window", "dataset.windows_per_defect=2", "dataset.windows_per_normal=0"]
    data = load_training_data(tiny_cfg(root, tmp_path / "runs", *overrides).dataset, seed=5)
    assert len(data.normal) == 0 and len(data.anomalies) == 2 * (2 + 1)
    assert data.untrained_keys == ["good"]  # published with the model: synthesis then refuses guidance against it
    with_normals = [*overrides[:-1], "dataset.windows_per_normal=1"]
    assert load_training_data(tiny_cfg(root, tmp_path / "runs", *with_normals).dataset, seed=5).untrained_keys == []
    preview = data.preview(4)  # no normal window: each mask's own defect window is the background
    firsts = [int(np.flatnonzero(data.anomaly_key_ids == k)[0]) for k in (1, 2)]
    assert np.array_equal(preview["normal"], data.anomalies[[firsts[i % 2] for i in range(4)]])
    assert np.array_equal(preview["masks"], data.masks[[firsts[i % 2] for i in range(4)]])
    inpaint = tiny_fast_ldm(inpaint=True).eval()
    png = base_grid(
        inpaint, ["good", "tiny/crack"], 2, 3, 0, torch.device("cpu"), (preview["normal"], preview["masks"])
    )
    assert decode_png(png).shape[:2] == (2 * 32 + 2, 2 * 32 + 2)


# --------------------------------------------------------------------------------------- one step per stage (no Ray)
@pytest.mark.parametrize("stage", ["vae", "base", "fast", "mask"])
def test_one_step_of_each_stage_updates_only_its_weights(dataset: Path, tmp_path: Path, stage: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(
        dataset,
        tmp_path / "runs",
        "stages=[vae, base, fast, mask]",
        "mask_model.image_size=16",
        "mask_model.block_out_channels=[8, 16]",
    )
    data = load_training_data(cfg.dataset)
    if stage == "mask":  # the stretch frame (the default): shapes at native scale, the model carries the real boxes
        data.mask_shapes = load_box_shapes(cfg.dataset, data.keys, cfg.mask_model.image_size, "stretch")
    if stage in ("vae", "mask"):
        model, params = stage_model(cfg, data.keys, RunStore(cfg.run_uri), stage, _box_sizes(data))
        keys = data.keys
    else:  # base and fast start from finished earlier stages: use a from-scratch tiny model instead
        model = tiny_fast_ldm()
        params = configure_trainable(model, stage)
        keys = ["good", "tiny/crack", "tiny/scratch"]
    cols = data.stage_columns(stage)
    batch = {k: torch.from_numpy(v[:2]) for k, v in cols.items()}
    g = torch.Generator().manual_seed(1)
    x, mask = prepare_batch(batch, g, cfg, stage, torch.device("cpu"))
    if stage == "mask":
        assert x is None and mask.shape == (2, 1, 16, 16) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert model.config.frame == "stretch" and set(model.config.box_records) == {"widget/dent", "widget/scratch"}
    else:
        assert x.shape == (2, 3, 32, 32) and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objective = StageObjective(model, stage, keys, None)
    loss, metrics = objective(x, mask, batch["key_id"], g)
    assert torch.isfinite(loss) and metrics["loss"] == pytest.approx(float(loss.detach()))
    opt = torch.optim.SGD(params, lr=0.1)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    prefix = {
        "vae": ("vae.",),
        "base": ("unet.", "conditioner."),
        "fast": ("farm.", "adaptor.", "conditioner."),
        "mask": ("unet.",),
    }[stage]
    assert changed and all(n.startswith(prefix) for n in changed)


def test_base_step_with_fg_weight_uses_the_mask_column(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(dataset, tmp_path / "runs", "loss.fg_weight=5")
    data = load_training_data(cfg.dataset)
    cols = data.stage_columns("base", base_masks=True)
    rows = [0, 4]  # one normal image (empty mask) and one anomaly
    batch = {k: torch.from_numpy(v[rows]) for k, v in cols.items()}
    model, keys = tiny_fast_ldm(), ["good", "tiny/crack", "tiny/scratch"]
    configure_trainable(model, "base")
    x, mask = prepare_batch(batch, torch.Generator().manual_seed(1), cfg, "base", torch.device("cpu"))
    assert mask is not None and mask[0].sum() == 0 and mask[1].sum() > 0
    weighted, _ = StageObjective(model, "base", keys, None, cfg.loss.fg_weight)(
        x, mask, batch["key_id"], torch.Generator().manual_seed(2)
    )
    plain, _ = StageObjective(model, "base", keys, None)(x, mask, batch["key_id"], torch.Generator().manual_seed(2))
    assert torch.isfinite(weighted) and float(weighted.detach()) != pytest.approx(float(plain.detach()))
    # min-SNR-γ: the same draw (t, ε) with each sample's term scaled by min(SNR_t, γ)/SNR_t ≤ 1
    snr, _ = StageObjective(model, "base", keys, None, cfg.loss.fg_weight, snr_gamma=0.01)(
        x, mask, batch["key_id"], torch.Generator().manual_seed(2)
    )
    assert 0 < float(snr.detach()) < float(weighted.detach())


@pytest.mark.parametrize("stage", ["base", "fast"])
def test_latent_cache_gives_the_loss_of_encoding_at_every_step(dataset: Path, tmp_path: Path, stage: str) -> None:
    cfg = tiny_cfg(dataset, tmp_path / "runs", "latent_cache=true", "dataset.hflip=false", "loss.fg_weight=5")
    data = load_training_data(cfg.dataset)
    cols = data.stage_columns(stage, base_masks=True)
    model, keys = tiny_fast_ldm(), ["good", "tiny/crack", "tiny/scratch"]
    configure_trainable(model, stage)
    cached = dict(cols, latent=encode_rows(model, cols.pop("image"), torch.device("cpu"), batch=3))
    assert "image" not in cached and cached["latent"].shape == (len(cached["key_id"]), 4, 8, 8)
    assert cached["latent"].dtype == np.float32
    rows = [0, 1, 5] if stage == "base" else [0, 1, 2]
    images = {k: torch.from_numpy(v[rows]) for k, v in data.stage_columns(stage, base_masks=True).items()}
    latents = {k: torch.from_numpy(v[rows]) for k, v in cached.items()}
    x, mask = prepare_batch(images, torch.Generator().manual_seed(1), cfg, stage, torch.device("cpu"))
    none, cached_mask = prepare_batch(latents, torch.Generator().manual_seed(1), cfg, stage, torch.device("cpu"))
    assert none is None and torch.equal(cached_mask, mask)  # no flips: the same masks
    objective = StageObjective(model, stage, keys, None, cfg.loss.fg_weight)
    every_step, _ = objective(x, mask, images["key_id"], torch.Generator().manual_seed(2))
    once, _ = objective(None, mask, images["key_id"], torch.Generator().manual_seed(2), latents["latent"])
    assert float(once.detach()) == pytest.approx(float(every_step.detach()), rel=1e-5)
    with pytest.raises(ValueError, match="exactly one of the images x and their latents z0"):
        objective(x, mask, images["key_id"], torch.Generator().manual_seed(2), latents["latent"])
    with pytest.raises(ValueError, match=r"per-step flips \(dataset.hflip"):
        tiny_cfg(dataset, tmp_path / "runs", "latent_cache=true")  # train-tiny flips left-right
    with pytest.raises(ValueError, match="window_flips needs frame: window"):
        tiny_cfg(dataset, tmp_path / "runs", "dataset.window_flips=true")


def test_cosine_schedule_warms_up_then_decays_to_lr_final() -> None:
    scfg = StageConfig(steps=100, lr=1e-3, warmup_steps=10, lr_schedule="cosine", lr_final=0.1)
    lrs = [lr_at(k, scfg) for k in range(1, 101)]
    assert lrs[4] == pytest.approx(5e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up to lr at step 10
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # then never rises
    assert lrs[54] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way through the decay
    assert lrs[-1] == pytest.approx(1e-4)  # the last step: lr_final · lr
    assert lr_at(50, StageConfig(steps=100, lr=1e-3, warmup_steps=10)) == 1e-3  # constant by default


def test_weights_ema_follows_the_formula_and_copies_integer_buffers() -> None:
    w = {"a": torch.zeros(3), "n": torch.tensor(0)}
    ema = WeightsEMA(0.9, w)
    ema.update(1, {"a": torch.ones(3), "n": torch.tensor(5)})  # d = min(0.9, 2 / 11)
    assert torch.allclose(ema.shadow["a"], torch.full((3,), 9 / 11)) and int(ema.shadow["n"]) == 5
    ema.update(1000, {"a": torch.ones(3) * 2, "n": torch.tensor(6)})  # d = 0.9
    assert torch.allclose(ema.shadow["a"], torch.full((3,), 0.9 * 9 / 11 + 0.2))
    assert torch.equal(w["a"], torch.zeros(3))  # the starting weights are not aliased

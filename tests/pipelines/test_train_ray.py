"""Ray Train runs of the tiny config: 2 CPU workers, local and S3 storage, resume after an interruption, NaN stop.

Each test launches as few TorchTrainers as it can (a launch costs seconds): the FAST-only runs train on a tiny
from-scratch base saved by the test helpers; the full vae → base → fast → mask chain (four launches) is marked slow.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fast_core.data.transforms import decode_png
from fast_core.masks.diffusion import MaskDiffusionModel
from fast_core.models.taef2 import TAEF2
from pipelines import storage as st
from pipelines.config import load_config
from pipelines.model_store import BASE_DIR, load_model
from pipelines.train import TrainConfig, TrainingFailed, run_training
from pipelines.train.checkpoint import RunStore
from pipelines.train.curves import CURVES, PANEL_HEIGHT, WIDTH, render_curves
from pipelines.train.mask_data import load_box_shapes
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import tiny_base_model_dir, write_taef2_folder

pytestmark = pytest.mark.ray

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dataset whose keys are the tiny base's keys (good, tiny/crack, tiny/scratch), and that base."""
    tmp = tmp_path_factory.mktemp("train_ray")
    root = make_dummy_mvtec(tmp / "ds", categories=("tiny",), n_good=4, defects={"crack": 6, "scratch": 6}, mode="RGB")
    torch.set_num_threads(1)
    return root, tiny_base_model_dir(tmp)


def tiny_cfg(root: Path, storage_path: str, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig, CONFIGS / "train-tiny.yaml", [f"dataset.root={root}", f"storage_path={storage_path}", *overrides]
    )


def fast_only(base: Path, steps: int = 4, every: int = 2) -> list[str]:
    return [
        "stages=[fast]",
        f"model.base_model_uri={base}",
        f"stage.fast.steps={steps}",
        f"stage.fast.checkpoint_every={every}",
    ]


def metric_steps(store: RunStore, stage: str) -> list[int]:
    return [r["step"] for r in store.read_metrics() if r["stage"] == stage]


@pytest.mark.slow
def test_full_chain_two_workers_local_then_rerun_skips(ray_local: None, tiny_data: tuple[Path, Path], tmp_path) -> None:
    root, _ = tiny_data
    steps = ["stage.vae.steps=2", "stage.base.steps=2", "stage.fast.steps=2", "stage.mask.steps=2"]
    mask = ["stages=[vae, base, fast, mask]", "mask_model.image_size=16", "mask_model.block_out_channels=[8, 16]"]
    cfg = tiny_cfg(root, str(tmp_path / "runs"), *steps, *mask, "stage.mask.batch_size=1")
    summary = run_training(cfg)
    store = RunStore(cfg.run_uri)
    assert [s.stage for s in summary.stages] == ["vae", "base", "fast", "mask"]
    assert all(not s.skipped and s.resumed_from == 0 and np.isfinite(s.final_loss) for s in summary.stages)
    for stage in ("vae", "base", "fast", "mask"):
        assert metric_steps(store, stage) == [1, 2]
        assert store.done(stage)["checkpoint"] == "step-00000002"
        png = decode_png((tmp_path / "runs" / "tiny" / "samples" / f"{stage}-step2.png").read_bytes())
        assert png.ndim == (2 if stage == "mask" else 3)  # masks are grayscale, the RGB model's grids RGB
    scale = store.done("vae")["scaling_factor"]
    assert scale > 0
    model, info = load_model(summary.model_uri)
    assert info.keys == ["good", "tiny/crack", "tiny/scratch"] and info.steps == {"vae": 2, "base": 2, "fast": 2}
    assert model.scaling_factor == pytest.approx(scale)
    # the published weights are the trained ones
    fast_ckpt = store.stage_weights("fast")
    name = next(k for k in fast_ckpt.weights if k.startswith("farm."))
    assert torch.equal(model.state_dict()[name], fast_ckpt.weights[name])

    masks = MaskDiffusionModel.load(summary.mask_model_uri)
    assert masks.keys == ["tiny/crack", "tiny/scratch"] and masks.config.image_size == 16

    again = run_training(cfg)  # same run_name + storage_path: every stage is finished, nothing retrains
    assert all(s.skipped for s in again.stages)
    assert metric_steps(store, "fast") == [1, 2]


def test_mask_stage_alone_in_the_stretch_frame_publishes_the_real_boxes(
    ray_local: None, tiny_data: tuple[Path, Path], tmp_path
) -> None:
    """``stages: [mask]`` needs no other stage; two workers train on the native-scale stretched shapes (the default
    frame), and the published model carries every key's real box records for the masks stage."""
    root, _ = tiny_data
    mask = ["stages=[mask]", "stage.mask.steps=2", "mask_model.image_size=16", "mask_model.block_out_channels=[8, 16]"]
    cfg = tiny_cfg(root, str(tmp_path / "runs"), *mask)
    summary = run_training(cfg)
    assert [s.stage for s in summary.stages] == ["mask"] and np.isfinite(summary.stages[0].final_loss)
    assert summary.model_uri is None and metric_steps(RunStore(cfg.run_uri), "mask") == [1, 2]
    model = MaskDiffusionModel.load(summary.mask_model_uri)
    box = load_box_shapes(cfg.dataset, summary.keys, 16, "stretch")
    assert model.config.frame == "stretch" and model.keys == ["tiny/crack", "tiny/scratch"]
    assert model.config.box_records == box.sides and all(len(v) == 2 for v in box.sides.values())
    assert json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())["mask_model"] == {"frame": "stretch"}
    assert all(s.skipped for s in run_training(cfg).stages)


@pytest.mark.s3
def test_pretrained_first_stage_is_measured_not_trained_then_base_and_fast_train_on_cached_latents(
    ray_local: None, tiny_data: tuple[Path, Path], tmp_path
) -> None:
    root, _ = tiny_data
    first = write_taef2_folder(tmp_path / "taef2", seed=3)
    steps = ["stage.base.steps=2", "stage.fast.steps=2", "stage.base.checkpoint_every=2"]
    cache = ["latent_cache=true", "dataset.hflip=false", "dataset.vflip=false"]  # each stage encodes its rows once
    shift = "model.latent_shift=true"  # stage vae also measures each latent channel's mean μ
    cfg = tiny_cfg(root, str(tmp_path / "runs"), f"model.first_stage_uri={first}", shift, *steps, *cache)
    summary = run_training(cfg)
    store = RunStore(cfg.run_uri)
    vae = store.done("vae")
    assert vae["steps"] == 0 and vae["pretrained"] == str(first) and vae["checkpoint"] is None
    assert vae["scaling_factor"] > 0 and metric_steps(store, "vae") == []
    assert len(vae["latent_shift"]) == 32 and any(v != 0 for v in vae["latent_shift"])
    assert "pretrained first stage (frozen), latent scale measured" in summary.format()
    assert metric_steps(store, "base") == [1, 2] and metric_steps(store, "fast") == [1, 2]

    model, _ = load_model(summary.model_uri)
    assert model.config.first_stage == "taef2" and model.latent_channels == 32
    assert model.scaling_factor == pytest.approx(vae["scaling_factor"])
    assert model.vae.config.latent_shift == pytest.approx(vae["latent_shift"])  # published with the first stage
    assert (Path(summary.model_uri) / BASE_DIR / "taef2" / "LICENSE").is_file()
    source = TAEF2.from_folder(first).state_dict()
    assert all(torch.equal(v, source[k]) for k, v in model.vae.state_dict().items())  # frozen: the published weights

    again = run_training(cfg)
    assert all(s.skipped for s in again.stages)
    unshifted = tiny_cfg(root, str(tmp_path / "runs"), f"model.first_stage_uri={first}", *steps, *cache)
    with pytest.raises(ValueError, match="model.latent_shift: run has True, config gives False"):
        run_training(unshifted)  # refused before any work: the base was trained on shifted latents


def test_fast_stage_to_s3_and_load_published_model(
    ray_local: None, tiny_data: tuple[Path, Path], s3_bucket, tmp_path: Path
) -> None:
    root, base = tiny_data
    cfg = tiny_cfg(root, f"{s3_bucket.uri}/runs", *fast_only(base, steps=2, every=1))
    cfg = dataclasses.replace(cfg, storage=s3_bucket.storage)
    summary = run_training(cfg)
    assert summary.model_uri == f"{s3_bucket.uri}/runs/tiny/model"
    listing = st.ls(f"{s3_bucket.uri}/runs/tiny/checkpoints/fast", cfg.storage)
    assert [u.rsplit("/", 1)[-1] for u in listing] == ["LATEST.json", "step-00000001", "step-00000002"]
    store = RunStore(cfg.run_uri, cfg.storage)
    assert metric_steps(store, "fast") == [1, 2]
    assert st.exists(store.grid_uri("fast", 2), cfg.storage)
    curves = st.read_bytes(store.uri(CURVES), cfg.storage)  # beside metrics.jsonl, written at the stage's end
    assert curves == render_curves(store.read_metrics()) and decode_png(curves).shape == (PANEL_HEIGHT, WIDTH, 3)
    model, info = load_model(summary.model_uri, cfg.storage, cache_dir=tmp_path / "cache")
    assert info.steps == {"fast": 2} and model.keys == ["good", "tiny/crack", "tiny/scratch"]


def test_nan_loss_stops_naming_stage_and_step_and_keeps_checkpoint(
    ray_local: None, tiny_data: tuple[Path, Path], tmp_path
) -> None:
    root, base = tiny_data
    cfg = tiny_cfg(root, str(tmp_path / "runs"), *fast_only(base, steps=4, every=1), "fault.inject_nan_at_step=2")
    with pytest.raises(TrainingFailed) as info:
        run_training(cfg)
    message = str(info.value)
    assert "stage 'fast'" in message and "at step 2" in message and "step-00000001" in message
    store = RunStore(cfg.run_uri)
    kept = store.load_latest("fast")
    assert kept.step == 1 and store.done("fast") is None
    assert all(torch.isfinite(t).all() for t in kept.weights.values())
    assert not (tmp_path / "runs" / "tiny" / "model" / "model.json").exists()


def test_corrupt_checkpoint_fails_before_any_worker_starts(tiny_data: tuple[Path, Path], tmp_path) -> None:
    root, base = tiny_data
    cfg = tiny_cfg(root, str(tmp_path / "runs"), *fast_only(base))
    store = RunStore(cfg.run_uri)
    layer = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(layer.parameters())
    folder = Path(store.save("fast", 2, layer.state_dict(), opt.state_dict(), {"epoch": 0}, keep=2))
    (folder / "weights.safetensors").write_bytes(b"\x01\x02broken")
    with pytest.raises(ValueError, match=r"step-00000002: weights.safetensors is not a valid safetensors file"):
        run_training(cfg)  # no ray_local: the driver refuses before Ray is touched
    json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())


def test_worker_killed_mid_stage_is_replaced_and_the_run_ends_as_if_uninterrupted(
    ray_local: None, tiny_data: tuple[Path, Path], tmp_path
) -> None:
    """A real SIGKILL of worker rank 0 after step 3: Ray Train restarts the workers (scaling.max_failures = 1) from
    the step-2 checkpoint within the same ``run_training`` call, and the final weights and their EMA equal an
    uninterrupted run's; the published model holds the EMA weights."""
    root, base = tiny_data
    runs = str(tmp_path / "runs")
    hygiene = ["stage.fast.ema_decay=0.9", "stage.fast.lr_schedule=cosine"]
    common = [*fast_only(base, steps=6, every=2), "scaling.max_failures=1", *hygiene]
    reference = run_training(tiny_cfg(root, runs, *common, "run_name=reference"))
    cfg = tiny_cfg(root, runs, *common, "run_name=killed", "fault.kill_worker_after_step=3")
    summary = run_training(cfg)
    store = RunStore(cfg.run_uri)
    assert st.exists(store.uri("fault-killed-fast-step3"))  # the kill happened
    assert summary.stages[0].resumed_from == 0 and metric_steps(store, "fast") == [1, 2, 3, 4, 5, 6]
    want, got = RunStore(reference.run_uri).stage_weights("fast"), store.stage_weights("fast")
    for a, b in ((want.weights, got.weights), (want.ema, got.ema)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(got.ema[k], got.weights[k]) for k in got.ema)  # the EMA is not the raw weights
    published = load_model(summary.model_uri)[0].fast_state_dict()
    assert all(torch.equal(published[k], got.ema[k]) for k in got.ema)

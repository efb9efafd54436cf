"""``run_training(cfg)``: the stages in order, one Ray Train ``TorchTrainer`` each, then publish the model.

    check the config and the dataset; read and preprocess the images once (driver)
    box-frame mask model: every training-third mask's shape at its own scale and its side fraction (mask_data)
    run.json: a new run records what it trains; a rerun (same run_name + storage_path) must match it, and resumes
    for stage in vae, base, fast, mask (those configured):
        finished (stages/<stage>.json)          → skipped
        vae on a pretrained first stage         → nothing trained: s = 1 / std(E(x)) measured, stages/vae.json
        else validate the latest checkpoint     → TorchTrainer(<stage>_loop, ScalingConfig, datasets={"train": …})
        the final checkpoint                    → metrics.jsonl, curves.png (every stage's loss), stages/<stage>.json
    publish_model(model, publish_uri or <run>/model)   (when the run has a FAST stage)
    MaskDiffusionModel.save layout → <run>/mask_model  (when the run has a mask stage; box frame: with the real
                                                        side fractions per key in its config.json)

A worker failure is raised as :class:`TrainingFailed` with the worker's own message (a NaN loss names the stage and
the step; the checkpoints written before it stay). See :mod:`pipelines.train.checkpoint` for the run layout.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fast_core.configbase import to_dict
from fast_core.models.base import check_state
from pipelines import console
from pipelines import storage as st
from pipelines.config import RESOLVED_NAME, dump_config
from pipelines.model_store import ModelInfo, publish_model, read_model_info
from pipelines.train.checkpoint import RUN_INFO, Checkpoint, RunStore
from pipelines.train.config import LossSettings, ModelConfig, StageConfig, TrainConfig, check_dataset
from pipelines.train.curves import CURVES, render_curves
from pipelines.train.data import TrainingData, check_stage_rows, load_training_data, to_ray_dataset
from pipelines.train.loops import LOOPS
from pipelines.train.mask_data import load_box_shapes
from pipelines.train.models import build_model, load_stage_weights, local_base_dir, required_stages
from pipelines.train.steps import mask_model, measure_latent_stats, measure_scaling_factor

logger = logging.getLogger(__name__)

SCALE_IMAGES = 64  # images used to measure the VAE's latent scaling factor


class TrainingFailed(RuntimeError):
    """A stage failed on a worker (NaN loss, fault injection, a data or model error); the message says which."""


@dataclass
class StageSummary:
    """What one stage did in this call."""

    stage: str
    steps: int
    skipped: bool  # finished by an earlier call
    resumed_from: int  # step of the checkpoint this call started from (0: from scratch)
    wall_s: float  # wall seconds of the stage, summed over attempts
    final_loss: float | None  # loss (mean over the last log interval) at the last step
    grids: list[str] = field(default_factory=list)  # sample grid URIs


@dataclass
class TrainSummary:
    """The outcome of :func:`run_training`."""

    run_uri: str
    model_uri: str | None  # None when the run has no FAST stage
    mask_model_uri: str | None  # the mask diffusion model (stage "mask"), else None
    keys: list[str]
    stages: list[StageSummary]
    skipped_files: int
    wall_s: float

    def format(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [f"run: {self.run_uri}", f"keys: {', '.join(self.keys)}"]
        for s in self.stages:
            if s.stage == "vae" and s.steps == 0:
                lines.append(f"  {s.stage:5s} pretrained first stage (frozen), latent scale measured, {s.wall_s:.0f} s")
                continue
            state = "skipped (finished earlier)" if s.skipped else f"trained from step {s.resumed_from}"
            loss = f"{s.final_loss:.5f}" if s.final_loss is not None else "n/a"
            lines.append(f"  {s.stage:5s} {s.steps} steps, {state}, final loss {loss}, {s.wall_s:.0f} s")
            lines.extend(f"        grid: {g}" for g in s.grids[-1:])
        lines.append(f"model: {self.model_uri or 'not published (no fast stage)'}")
        if self.mask_model_uri:
            lines.append(f"mask model: {self.mask_model_uri}")
        if self.skipped_files:
            lines.append(f"skipped files: {self.skipped_files} (see the log)")
        lines.append(f"wall time: {self.wall_s:.0f} s")
        return "\n".join(lines)


def _run_fingerprint(cfg: TrainConfig, keys: list[str]) -> dict[str, Any]:
    """The settings that shape the trained weights; a rerun that differs in any of them is refused (``mask_model``
    only when the rerun trains the mask stage, :func:`_compared`)."""
    d = cfg.dataset
    return {
        "dataset": {
            "root": str(d.local_root.resolve()),
            "layout": d.layout,
            "categories": list(d.categories) if d.categories else None,
            "image_size": d.image_size,
            "image_channels": d.image_channels,
            "frame": d.frame,
            "hflip": d.hflip,
            "vflip": d.vflip,
            "windows_per_defect": d.windows_per_defect,
            "windows_per_normal": d.windows_per_normal,
            "window_margin": d.window_margin,
            "window_rot90": d.window_rot90,
            "window_flips": d.window_flips,
            "window_zoom": d.window_zoom,
            "window_jitter": d.window_jitter,
            "window_level": d.window_level,
            "normal_masks": d.normal_masks,
        },
        "model": to_dict(cfg.model),
        "loss": to_dict(cfg.loss),
        "mask_model": {"frame": cfg.mask_model.frame},
        "seed": cfg.seed,
        "keys": keys,
    }


# Dataset settings recorded in run.json only since runs of both frames existed: an older run's values are unknown, so
# a rerun is not refused for them (:func:`_recorded` takes the rerun's own).
_LATE_DATASET_FIELDS = (
    "frame",
    "hflip",
    "vflip",
    "windows_per_defect",
    "windows_per_normal",
    "window_margin",
    "window_rot90",
)


def _recorded(have: dict[str, Any], key: str, want: dict[str, Any]) -> Any:
    """A run.json entry, compared with ``want`` (this rerun's fingerprint).

    Runs recorded before ``loss`` (or one of its fields) existed trained with its default (the plain ε mean, no
    min-SNR weighting); before a ``model`` field existed with that field's default, which is the behaviour before it
    (the spec's FARM: key-blind, no skips, direct output, z_t alone, the latent mask only; the key in
    cross-attention only; the preset's ε prediction; no latent shift); before ``mask_model`` with the whole-mask
    model (frame "image", the only one there was); before ``dataset.window_flips`` with windows left as cut, before
    ``dataset.window_zoom`` at zoom 1, before ``dataset.window_jitter`` with no jitter, before
    ``dataset.window_level`` with unscaled windows, before ``dataset.normal_masks`` with borrowed masks. A run
    recorded before the frame and augmentation fields (``_LATE_DATASET_FIELDS``) is taken to match the rerun's,
    their values unknown."""
    if key == "dataset" and isinstance(have.get(key), dict):
        late = {k: want["dataset"][k] for k in _LATE_DATASET_FIELDS}
        before = {
            "window_flips": False,
            "window_zoom": 1.0,
            "window_jitter": 0.0,
            "window_level": False,
            "normal_masks": True,
        }
        return {**late, **before, **have[key]}
    if key == "loss":
        return {**to_dict(LossSettings()), **(have.get(key) or {})}
    if key == "model" and isinstance(have.get(key), dict):  # every model option added later is off by default
        return {**to_dict(ModelConfig()), **have[key]}
    if key == "mask_model":
        return {"frame": "image", **(have.get(key) or {})}
    return have.get(key)


def _differences(key: str, have: Any, want: Any) -> list[str]:
    """``"key.field: run has …, config gives …"`` for each field of a settings entry that differs (the entry as a
    whole when either side is not a mapping)."""
    if isinstance(have, dict) and isinstance(want, dict):
        fields = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
        return [f"{key}.{k}: run has {have.get(k)!r}, config gives {want.get(k)!r}" for k in fields]
    return [f"{key}: run has {have!r}, config gives {want!r}"]


def _compared(cfg: TrainConfig, want: dict[str, Any]) -> list[str]:
    """The fingerprint entries a rerun must match: all, but the mask model's frame only when the rerun trains or
    publishes the mask stage (a run of the other stages is not refused for a mask setting it does not use)."""
    return [k for k in want if k != "mask_model" or "mask" in cfg.stages]


def _check_run_info(store: RunStore, cfg: TrainConfig, keys: list[str], resume: bool) -> bool:
    """Write run.json for a new run, or check a rerun against it. Returns True when the run existed."""
    uri = store.uri(RUN_INFO)
    want = _run_fingerprint(cfg, keys)
    if not st.exists(uri, cfg.storage):
        if resume:
            raise ValueError(f"--resume: there is no run to resume at {store.run_uri} ({RUN_INFO} is missing)")
        st.write_text_atomic(uri, json.dumps({**want, "created": time.time()}, indent=1) + "\n", cfg.storage)
        return False
    try:
        have = json.loads(st.read_text(uri, cfg.storage))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: not valid JSON ({exc})") from exc
    diff = sorted(k for k in _compared(cfg, want) if _recorded(have, k, want) != want[k])
    if diff:
        detail = "; ".join(d for k in diff for d in _differences(k, _recorded(have, k, want), want[k]))
        hint = (
            f" (or set mask_model.frame: {_recorded(have, 'mask_model', want)['frame']} to go on with this run's mask "
            "model)"
            if "mask_model" in diff
            else ""
        )
        raise ValueError(
            f"{store.run_uri} was trained with different settings ({detail}); use another run_name to start a new "
            f"run{hint}"
        )
    return True


def _box_sizes(data: TrainingData) -> dict[str, list[Any]] | None:
    """The real sizes per defect key of a box- or stretch-frame mask stage (pipelines.train.mask_data), else None."""
    return data.mask_shapes.sides if data.mask_shapes is not None else None


def _preview(data: TrainingData, cfg: TrainConfig, stage: str) -> dict[str, np.ndarray]:
    """The fixed grid inputs of ``stage``."""
    n = cfg.grid_samples
    if stage == "vae":
        images = data.stage_columns("vae")["image"]
        pick = np.linspace(0, len(images) - 1, num=min(2 * n, len(images))).round().astype(int)
        return {"images": images[pick]}
    return data.preview(n)


def stage_rows(data: TrainingData, cfg: TrainConfig, stage: str) -> dict[str, np.ndarray]:
    """The columns ``stage`` trains on: masks in the base stage for ``loss.fg_weight`` > 0 or an inpaint UNet, and
    for an inpaint UNet borrowed by the normal images too unless ``dataset.normal_masks`` is false
    (:meth:`TrainingData.stage_columns`)."""
    inpaint = cfg.model.unet_conditioning in ("inpaint", "inpaint_px")
    borrow = inpaint and cfg.dataset.normal_masks
    return data.stage_columns(stage, base_masks=cfg.loss.fg_weight > 0 or inpaint, borrow_masks=borrow)


def _scale_images(data: TrainingData) -> np.ndarray:
    """Evenly spaced training images for the latent scaling factor."""
    images = data.stage_columns("vae")["image"]
    pick = np.linspace(0, len(images) - 1, num=min(SCALE_IMAGES, len(images))).round().astype(int)
    return images[pick]


def _failure_message(exc: BaseException) -> str:
    """The first worker's own error message out of a Ray Train failure."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        err = failures[rank]
        cause = getattr(err, "cause", None) or err
        text = str(cause).strip()
        return f"worker {rank}: {type(cause).__name__}: {text.splitlines()[-1] if text else ''}"
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def _fit_stage(cfg: TrainConfig, stage: str, data: TrainingData, start: int) -> None:
    """Run one stage's TorchTrainer from step ``start`` to the end, with a progress bar (raises TrainingFailed on a
    worker error)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    # Progress comes from the training loop's own log lines; per-epoch dataset progress bars would drown them.
    ray.data.DataContext.get_current().enable_progress_bars = False
    s = cfg.scaling
    channel = console.ProgressChannel()
    loop_config = {
        "progress": channel,
        "cfg": cfg,
        "keys": data.keys,
        "preview": _preview(data, cfg, stage),
        "scale_images": _scale_images(data) if stage == "vae" else None,
        "box_sizes": _box_sizes(data) if stage == "mask" else None,
    }
    trainer = TorchTrainer(
        LOOPS[stage],
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker={"CPU": s.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=f"{cfg.run_name}-{stage}-{uuid.uuid4().hex[:8]}",
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
        ),
        datasets={"train": to_ray_dataset(stage_rows(data, cfg, stage))},
        # every worker sees every row and takes its own share by row id (loops.WorkerRows): the order is a function
        # of (seed, stage, rank, epoch) alone, so a resumed or restarted stage continues at the same data position
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    try:
        with channel.follow(cfg.stage_config(stage).steps, f"training {stage}", "step", initial=start):
            trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainingFailed(f"training stage {stage!r} failed: {_failure_message(exc)}") from exc


def run_training(cfg: TrainConfig, resume: bool = False) -> TrainSummary:
    """Train every configured stage (resuming / skipping what an earlier call did) and publish the model.

    Args:
        cfg: the validated config.
        resume: require an existing run at ``<storage_path>/<run_name>`` (a plain rerun resumes too, but may also
            start a new run).

    Raises:
        ValueError / FileNotFoundError: bad dataset, a rerun with different settings, a corrupt checkpoint.
        TrainingFailed: a worker failed (the message names the stage and, for a NaN loss, the step).
    """
    t0 = time.perf_counter()
    check_dataset(cfg.dataset)
    store = RunStore(cfg.run_uri, cfg.storage)
    data = load_training_data(cfg.dataset, cfg.seed)
    if "mask" in cfg.stages and cfg.mask_model.frame != "image":
        data.mask_shapes = load_box_shapes(cfg.dataset, data.keys, cfg.mask_model.image_size, cfg.mask_model.frame)
    for stage in cfg.stages:
        check_stage_rows(data, stage, cfg.stage_config(stage).batch_size, cfg.scaling.num_workers)
    for stage in cfg.stages:
        for need in required_stages(cfg, stage):
            if need not in cfg.stages and store.done(need) is None:
                raise ValueError(
                    f"stage {stage!r} trains on the output of stage {need!r}, which is neither in stages nor finished "
                    f"in {store.run_uri}; add {need!r} to stages or set model.base_model_uri"
                )
    _check_base_keys(cfg, data.keys)
    existed = _check_run_info(store, cfg, data.keys, resume)
    st.write_text_atomic(store.uri(RESOLVED_NAME), dump_config(cfg), cfg.storage)
    logger.info("%s run %s: stages %s", "resuming" if existed else "new", store.run_uri, ", ".join(cfg.stages))

    summaries = []
    for stage in cfg.stages:
        if stage == "vae" and cfg.model.first_stage_uri is not None:
            summaries.append(_pretrained_first_stage(cfg, store, data))
            continue
        scfg = cfg.stage_config(stage)
        done = store.done(stage)
        if done is not None:
            if int(done["steps"]) != scfg.steps:
                raise ValueError(
                    f"stage {stage!r} of {store.run_uri} finished with {done['steps']} steps but the config asks for "
                    f"{scfg.steps}; use another run_name to train a different schedule"
                )
            logger.info("stage %s: finished earlier (%d steps), skipped", stage, scfg.steps)
            if not st.exists(store.uri(CURVES), cfg.storage):  # a run that finished before curves.png was written
                st.write_bytes_atomic(store.uri(CURVES), render_curves(store.read_metrics()), cfg.storage)
            summaries.append(
                StageSummary(stage, scfg.steps, True, scfg.steps, done["wall_s"], done["final_loss"], done["grids"])
            )
            continue
        latest = store.load_latest(stage)  # validates the resume point before any worker starts
        start = latest.step if latest is not None else 0
        if start > scfg.steps:
            raise ValueError(
                f"stage {stage!r}: the latest checkpoint {latest.uri} is at step {start}, beyond stage.{stage}.steps = "
                f"{scfg.steps}; use another run_name to train a different schedule"
            )
        if start < scfg.steps:
            logger.info(
                "stage %s: training steps %d..%d on %d worker(s)", stage, start + 1, scfg.steps, cfg.scaling.num_workers
            )
            _fit_stage(cfg, stage, data, start)
            latest = store.load_latest(stage)
        if latest is None or latest.step != scfg.steps:
            raise TrainingFailed(f"stage {stage!r}: training ended without a final checkpoint at step {scfg.steps}")
        scaling_factor = latest.state.get("scaling_factor")
        if stage == "vae" and scaling_factor is None:  # the schedule was shortened onto an intermediate checkpoint
            scaling_factor = _measure_scaling_factor(cfg, store, data, latest)
        records = [r for r in latest.state.get("metrics", []) if r.get("stage") == stage]
        # metrics.jsonl keeps this stage's history up to the final checkpoint only (a killed attempt may have logged
        # steps after it, e.g. when the schedule was shortened onto an intermediate checkpoint)
        metrics = [r for r in store.read_metrics() if r.get("stage") != stage] + records
        store.write_metrics(metrics)
        st.write_bytes_atomic(store.uri(CURVES), render_curves(metrics), cfg.storage)
        final_loss = records[-1].get("loss_avg", records[-1].get("loss")) if records else None
        grids = [u for u in (store.grid_uri(stage, k) for k in _grid_steps(scfg)) if st.exists(u, cfg.storage)]
        info = {
            "stage": stage,
            "steps": scfg.steps,
            "checkpoint": latest.uri.rstrip("/").rsplit("/", 1)[-1],
            "final_loss": final_loss,
            "wall_s": latest.state.get("wall_s", 0.0),
            "scaling_factor": scaling_factor,
            "grids": grids,
            "finished": time.time(),
        }
        store.mark_done(stage, info)
        summaries.append(StageSummary(stage, scfg.steps, False, start, info["wall_s"], final_loss, grids))

    model_uri = _publish(cfg, store, data) if "fast" in cfg.stages else None
    mask_model_uri = _publish_mask(cfg, store, data.keys, _box_sizes(data)) if "mask" in cfg.stages else None
    return TrainSummary(
        run_uri=store.run_uri,
        model_uri=model_uri,
        mask_model_uri=mask_model_uri,
        keys=data.keys,
        stages=summaries,
        skipped_files=len(data.skipped) + (len(data.mask_shapes.skipped) if data.mask_shapes is not None else 0),
        wall_s=time.perf_counter() - t0,
    )


def _pretrained_first_stage(cfg: TrainConfig, store: RunStore, data: TrainingData) -> StageSummary:
    """Stage "vae" on a pretrained, frozen first stage: nothing is trained; s = 1 / std(E(x) − μ) (and, with
    ``model.latent_shift``, each channel's mean μ; else μ = 0) is measured once on the training images (driver, CPU,
    deterministic) and recorded in ``stages/vae.json``."""
    done = store.done("vae")
    if done is not None:
        logger.info("stage vae: pretrained first stage, latent scale s = %.5f measured earlier", done["scaling_factor"])
        return StageSummary("vae", 0, True, 0, done["wall_s"], None)
    t0 = time.perf_counter()
    model = build_model(cfg, data.keys, store, "vae")
    s, shift = measure_latent_stats(
        model.eval(), _scale_images(data), torch.device("cpu"), cfg.stage.vae.batch_size, shift=cfg.model.latent_shift
    )
    wall = time.perf_counter() - t0
    rms = None if shift is None else math.sqrt(sum(v * v for v in shift) / len(shift))
    logger.info(
        "stage vae: pretrained first stage %s, latent scale s = 1/std = %.5f%s", cfg.model.first_stage_uri, s,
        "" if rms is None else f", channel shift μ measured (RMS {rms:.3f})",
    )  # fmt: skip
    info = {
        "stage": "vae",
        "steps": 0,
        "pretrained": cfg.model.first_stage_uri,
        "checkpoint": None,
        "final_loss": None,
        "wall_s": wall,
        "scaling_factor": s,
        "latent_shift": shift,
        "grids": [],
        "finished": time.time(),
    }
    store.mark_done("vae", info)
    return StageSummary("vae", 0, False, 0, wall, None)


def _measure_scaling_factor(cfg: TrainConfig, store: RunStore, data: TrainingData, ckpt: Checkpoint) -> float:
    """s = 1 / std(E(x)) of the VAE in ``ckpt`` (on the driver, CPU) for a checkpoint that did not record it."""
    model = build_model(cfg, data.keys, store, "vae")
    load_stage_weights(model, "vae", ckpt.weights, f"stage 'vae' checkpoint {ckpt.uri}")  # the VAE keeps no EMA
    s = measure_scaling_factor(model.eval(), _scale_images(data), torch.device("cpu"), cfg.stage.vae.batch_size)
    logger.info("stage vae: latent scaling factor s = 1/std = %.5f (measured on %s)", s, ckpt.uri)
    return s


def _grid_steps(scfg: StageConfig) -> list[int]:
    """The steps a stage wrote sample grids at: its checkpoint steps that are multiples of the grid interval, and
    the last step."""
    every = scfg.grid_every
    if not every:
        return []
    return [
        k for k in range(1, scfg.steps + 1) if k == scfg.steps or (k % scfg.checkpoint_every == 0 and k % every == 0)
    ]


def _publish(cfg: TrainConfig, store: RunStore, data: TrainingData) -> str:
    """Publish the final model (base + FAST) unless the same run's model is already there. The keys no training row
    carried (``data.untrained_keys``) are recorded only when this run trained its own base (a loaded base knows its
    keys); ``data.window_level``, the level the windows were scaled to, goes with the model."""
    keys, untrained = data.keys, data.untrained_keys
    steps = {s: cfg.stage_config(s).steps for s in cfg.stages if s != "mask"}  # the mask model is published apart
    info = ModelInfo(
        image_size=cfg.dataset.image_size,
        image_channels=cfg.dataset.image_channels,
        keys=keys,
        preset=cfg.model.preset if cfg.model.base_model_uri is None else "",
        steps=steps,
        run_id=cfg.run_name,
        frame=cfg.dataset.frame,
        window_margin=cfg.dataset.window_margin,
        window_zoom=cfg.dataset.window_zoom,
        window_level=data.window_level,
        untrained_keys=list(untrained) if cfg.model.base_model_uri is None else [],
    )
    uri = cfg.model_uri
    try:
        if to_dict(read_model_info(uri, cfg.storage)) == to_dict(info):
            logger.info("model already published at %s", uri)
            return uri
    except FileNotFoundError:
        pass
    model = build_model(cfg, keys, store, None)
    info.keys = model.keys  # a given base's prompt encoder may know more keys than the dataset has
    publish_model(model, uri, info, cfg.storage)
    return uri


def _publish_mask(cfg: TrainConfig, store: RunStore, keys: list[str], box_sizes: dict[str, list[Any]] | None) -> str:
    """Write the finished mask stage's model (MaskDiffusionModel.save layout; box and stretch frames: with the sizes) to
    ``cfg.mask_model_uri``."""
    ckpt = store.stage_weights("mask")
    model = mask_model(cfg, keys, box_sizes)
    check_state(model.state_dict(), ckpt.final_weights, f"stage 'mask' checkpoint {ckpt.uri}")
    model.load_state_dict(ckpt.final_weights)
    with tempfile.TemporaryDirectory(prefix="fastgen-mask-model-") as tmp:
        model.save(tmp)
        st.put_dir(tmp, cfg.mask_model_uri, cfg.storage)
    logger.info(
        "mask diffusion model (keys %s, frame %s) written to %s", model.keys, model.config.frame, cfg.mask_model_uri
    )
    return cfg.mask_model_uri


def _check_base_keys(cfg: TrainConfig, keys: list[str]) -> None:
    """A from-scratch base (learned prompt encoder) knows a fixed key set: every dataset key must be in it."""
    if cfg.model.base_model_uri is None:
        return
    encoder_cfg = local_base_dir(cfg.model.base_model_uri, cfg.storage) / "prompt_encoder" / "config.json"
    if not encoder_cfg.is_file():
        return  # a pretrained text encoder: textual inversion learns vectors for any key
    known = json.loads(encoder_cfg.read_text()).get("keys", [])
    missing = [k for k in keys if k not in known]
    if missing:
        raise ValueError(
            f"model.base_model_uri {cfg.model.base_model_uri}: its learned prompt encoder knows {known}, not the "
            f"dataset's keys {missing}; train a base on this dataset or use a base with a text encoder"
        )

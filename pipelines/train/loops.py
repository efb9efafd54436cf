"""The ``train_loop_per_worker`` functions Ray Train runs: one per trainable (VAE, base UNet, FAST, mask model).

Each worker builds the stage's starting model (:func:`pipelines.train.models.build_model`), resumes from the stage's
latest checkpoint when there is one (weights, optimizer state, step, epoch, metrics so far), wraps the stage's
objective in DDP with ``ray.train.torch.prepare_model`` and iterates its Ray Data shard
epoch after epoch until ``steps`` optimizer steps are done. Every worker reads the whole (unsplit) dataset once,
keeps the rows with ``row_id ≡ rank (mod world)`` and draws each epoch's order from (seed, stage, rank, epoch)
(:class:`WorkerRows`). Step k uses batch k of that sequence (epoch ⌊k / n_batches⌋), so a resumed stage — after a
driver kill and ``--resume``, or after Ray Train restarts a lost worker (``scaling.max_failures``) — continues at the
same data position and ends with the same weights as an uninterrupted run. One step::

    g      = Generator(seed = H(seed, stage, rank, step))       # every random draw of the step, resume-exact
    batch  = prepare_batch(batch, g)                            # augmented (pipelines.train.steps)
    loss   = StageObjective(batch, g)                           # fast_core.training.*_training_step
                                                                # (latent_cache: z_0 of each row, encoded once)
    loss   ← mean over workers (all_reduce); non-finite → stop, naming stage and step (nothing is written)
    loss.backward(); clip ‖∇‖ ≤ max_grad_norm; AdamW step (lr: warm-up, then constant or cosine)
    EMA (ema_decay d):  w̄ ← d_k·w̄ + (1 − d_k)·w,  d_k = min(d, (1 + k) / (10 + k))

Rank 0 alone writes: a progress line and a ``metrics.jsonl`` record every ``log_every`` steps, a checkpoint every
``checkpoint_every`` steps and at the end, a sample grid at each checkpoint. Every worker calls
``ray.train.report`` at the same steps (it is a barrier). On GPU the networks run under bf16/fp16 autocast
(``scaling.mixed_precision``; fp16 with a gradient scaler). The VAE stage ends by measuring the latent scaling factor
s = 1 / std(E(x)) over a batch of training images (as the LDM does) and records it in its final checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from fast_core.masks.diffusion import MaskDiffusionModel, sample_masks
from fast_core.models.ldm import FastLDM
from pipelines import storage as st
from pipelines.train import grid
from pipelines.train.checkpoint import Checkpoint, RunStore
from pipelines.train.config import StageConfig, TrainConfig
from pipelines.train.data import IMAGE, KEY_ID, LATENT, ROW_ID
from pipelines.train.models import set_scaling_factor, stage_state
from pipelines.train.steps import (
    FaultInjected,
    NonFiniteLossError,
    StageObjective,
    encode_rows,
    load_weights,
    measure_scaling_factor,
    prepare_batch,
    stage_model,
    step_seed,
)

logger = logging.getLogger("pipelines.train.loops")

_AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _setup_worker_logging() -> None:
    """Progress lines of rank 0 go to stderr, which Ray forwards to the driver."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def lr_at(step: int, scfg: StageConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then constant, or cosine from lr down to ``lr_final · lr`` at the end:

    lr_k = lr · (f + (1 − f) · (1 + cos(π · (k − W) / (K − W))) / 2),   W < k ≤ K,  f = lr_final
    """
    if scfg.warmup_steps and step <= scfg.warmup_steps:
        return scfg.lr * step / scfg.warmup_steps
    if scfg.lr_schedule == "constant" or scfg.steps <= scfg.warmup_steps:
        return scfg.lr
    progress = (step - scfg.warmup_steps) / (scfg.steps - scfg.warmup_steps)
    return scfg.lr * (scfg.lr_final + (1 - scfg.lr_final) * (1 + math.cos(math.pi * progress)) / 2)


class WeightsEMA:
    """The exponential moving average of a stage's weights (float tensors averaged, others copied)."""

    def __init__(self, decay: float, weights: dict[str, torch.Tensor]) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in weights.items()}

    @torch.no_grad()
    def update(self, step: int, weights: dict[str, torch.Tensor]) -> None:
        """w̄ ← d·w̄ + (1 − d)·w with d = min(decay, (1 + step) / (10 + step))."""
        d = min(self.decay, (1 + step) / (10 + step))
        for k, w in weights.items():
            if w.is_floating_point():
                self.shadow[k].mul_(d).add_(w.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(w)


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _mean_over_workers(values: list[float], device: torch.device, world: int) -> list[float]:
    """The element-wise mean of ``values`` over the workers (all_reduce; identity for one worker)."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


def _barrier(world: int) -> None:
    """Wait for every worker (no-op for one worker)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


class _Progress:
    """Rank 0's bookkeeping: metrics records, progress lines, steps/s and ETA."""

    def __init__(self, stage: str, steps: int, start_step: int, history: list[dict[str, Any]], wall0: float) -> None:
        self.stage, self.steps = stage, steps
        self.history = list(history)
        self.t0 = time.perf_counter()
        self.rate_t0 = self.t0  # steps/s and the ETA count from here (after a latent cache is built)
        self.wall0 = wall0  # wall seconds spent on this stage by earlier attempts
        self.start_step = start_step
        self.window: list[dict[str, float]] = []

    def add(self, metrics: dict[str, float]) -> None:
        self.window.append(metrics)

    def steps_begin(self) -> None:
        """Count steps/s and the ETA from now on (set-up such as a latent cache still counts in ``wall_s``)."""
        self.rate_t0 = time.perf_counter()

    def record(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        now = time.perf_counter()
        elapsed = now - self.rate_t0
        done = step - self.start_step
        sps = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.steps - step) / sps if sps > 0 else float("nan")
        avg = {f"{k}_avg": float(np.mean([w[k] for w in self.window])) for k in self.window[-1]} if self.window else {}
        rec: dict[str, Any] = {
            "stage": self.stage,
            "step": step,
            **(self.window[-1] if self.window else {}),
            **avg,
            "lr": lr,
            "epoch": epoch,
            "steps_per_s": round(sps, 4),
            "eta_s": round(eta, 1) if math.isfinite(eta) else None,
            "stage_wall_s": round(self.wall0 + now - self.t0, 2),
            "time": round(time.time(), 3),
        }
        self.history.append(rec)
        self.window = []
        logger.info(
            "[%s] step %d/%d  loss %.5f (avg %.5f)  lr %.2e  %.2f steps/s  ETA %s",
            self.stage,
            step,
            self.steps,
            rec.get("loss", float("nan")),
            rec.get("loss_avg", float("nan")),
            lr,
            sps,
            _fmt_eta(eta),
        )
        return rec

    @property
    def wall_s(self) -> float:
        return self.wall0 + time.perf_counter() - self.t0


class WorkerRows:
    """One worker's share of a stage's rows, in a reproducible order: row ids ≡ rank (mod world), all in memory.

    Epoch e visits them in the order ``randperm(n, seed = H(seed, stage/epoch, rank, e))``, in ``n // batch_size``
    full batches; :meth:`batches` starts after any number of steps, which is how a resumed stage continues.
    """

    def __init__(self, shard: Any, rank: int, world: int, batch_size: int, seed: int, stage: str) -> None:
        parts = list(shard.iter_batches(batch_size=4096, batch_format="numpy"))
        if not parts:
            raise ValueError(f"stage {stage!r}: worker {rank} got no rows")
        columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(columns.pop(ROW_ID), kind="stable")[rank::world]
        self.columns = {k: v[order] for k, v in columns.items()}
        self.n = len(order)
        self.batch_size, self.seed, self.stage, self.rank = batch_size, seed, stage, rank
        self.per_epoch = self.n // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"stage {stage!r}: worker {rank} has {self.n} rows, fewer than one batch of {batch_size}")

    def batches(self, done_steps: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(epoch, batch) forever, for steps ``done_steps + 1, done_steps + 2, …``."""
        epoch, start = divmod(done_steps, self.per_epoch)
        while True:
            g = torch.Generator().manual_seed(step_seed(self.seed, f"{self.stage}/epoch", self.rank, epoch))
            perm = torch.randperm(self.n, generator=g).numpy()
            for b in range(start, self.per_epoch):
                idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
                yield epoch, {k: torch.from_numpy(v[idx]) for k, v in self.columns.items()}
            epoch, start = epoch + 1, 0


def _own_weights(model: FastLDM | MaskDiffusionModel, stage: str) -> dict[str, torch.Tensor]:
    """The tensors ``stage`` trains and checkpoints (the mask model: all of them)."""
    return model.state_dict() if stage == "mask" else stage_state(model, stage)


def _kill_once(store: RunStore, cfg: TrainConfig, stage: str, step: int) -> None:
    """Test fault: SIGKILL this worker process after ``step``, once per run (a marker in the run keeps a restarted
    attempt from killing itself again)."""
    marker = store.uri(f"fault-killed-{stage}-step{step}")
    if st.exists(marker, cfg.storage):
        return
    st.write_text_atomic(marker, f"{time.time()}\n", cfg.storage)
    logger.info("[%s] fault.kill_worker_after_step: SIGKILL after step %d", stage, step)
    os.kill(os.getpid(), signal.SIGKILL)


def _write_metrics(store: RunStore, stage: str, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl = records of the other stages (as stored) + this stage's history."""
    others = [r for r in store.read_metrics() if r.get("stage") != stage]
    store.write_metrics(others + history)


def _write_grid(
    store: RunStore,
    cfg: TrainConfig,
    stage: str,
    step: int,
    model: FastLDM | MaskDiffusionModel,
    ctx: dict[str, Any],
    device: torch.device,
) -> str:
    """Render and store the stage's sample grid for ``step``; returns its URI."""
    was_training = model.training
    model.eval()
    try:
        preview = ctx["preview"]
        if stage == "mask":
            n = cfg.grid_samples
            rows = []
            for i, key in enumerate(model.keys):
                gens = [torch.Generator().manual_seed(cfg.seed + 1000 * i + j) for j in range(n)]
                rows.append(sample_masks(model, [key] * n, gens, nfe=max(cfg.grid_nfe, 3), device=device))
            png = grid.mask_grid(rows)
        elif stage == "vae":
            png = grid.vae_grid(model, preview["images"][: cfg.grid_samples * 2], device)
        elif stage == "base":
            context = (preview["normal"], preview["masks"])
            png = grid.base_grid(model, ctx["keys"], cfg.grid_samples, cfg.grid_nfe, cfg.seed, device, context)
        else:
            keys = [ctx["keys"][int(i)] for i in preview["mask_key_ids"]]
            png = grid.fast_grid(model, preview["normal"], preview["masks"], keys, cfg.grid_nfe, cfg.seed, device)
    finally:
        model.train(was_training)
    uri = store.grid_uri(stage, step)
    st.write_bytes_atomic(uri, png, cfg.storage)
    logger.info("[%s] sample grid %s", stage, uri)
    return uri


def run_stage_loop(config: dict[str, Any]) -> None:
    """The shared body of every stage's loop; ``config`` comes from ``run.py``.

    Keys of ``config``: ``cfg`` (TrainConfig), ``stage``, ``keys``, ``preview`` (grid inputs), ``scale_images`` (vae:
    images for the scaling factor), ``box_sizes`` (mask stage, box or stretch frame: the real sizes per key, else
    None), ``progress`` (the driver's progress channel, or None).
    """
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    stage: str = config["stage"]
    keys: list[str] = config["keys"]
    scfg = cfg.stage_config(stage)
    torch.set_num_threads(cfg.scaling.threads)
    _setup_worker_logging()
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = ray.train.torch.get_device()
    store = RunStore(cfg.run_uri, cfg.storage)

    model, params = stage_model(cfg, keys, store, stage, config.get("box_sizes"))
    ckpt: Checkpoint | None = store.load_latest(stage)
    if ckpt is not None:
        load_weights(model, stage, ckpt.weights, f"stage {stage!r} checkpoint {ckpt.uri}")
    model.train()
    autocast = _AUTOCAST[cfg.scaling.mixed_precision] if device.type == "cuda" else None
    objective = ray.train.torch.prepare_model(
        StageObjective(model, stage, keys, autocast, cfg.loss.fg_weight, cfg.loss.snr_gamma)
    )
    optimizer = torch.optim.AdamW(params, lr=scfg.lr, weight_decay=scfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast == torch.float16)
    step, history, wall0 = 0, [], 0.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer)
        step = ckpt.step
        history = [r for r in ckpt.state.get("metrics", []) if r["step"] <= step]
        wall0 = float(ckpt.state.get("wall_s", 0.0))
        if ckpt.state.get("scaler"):
            scaler.load_state_dict(ckpt.state["scaler"])
        if rank == 0:
            logger.info("[%s] resuming from %s (step %d of %d)", stage, ckpt.uri, step, scfg.steps)
    ema = None
    if scfg.ema_decay is not None:  # resumed: the checkpoint's EMA; new: the starting weights
        start = ckpt.ema if ckpt is not None and ckpt.ema is not None else _own_weights(model, stage)
        ema = WeightsEMA(scfg.ema_decay, start)
    progress = _Progress(stage, scfg.steps, step, history, wall0)
    if rank == 0 and ckpt is not None:
        _write_metrics(store, stage, progress.history)  # drop records logged after the checkpoint by a killed run

    fault = cfg.fault if cfg.fault.applies(stage) else None
    rows = WorkerRows(ray.train.get_dataset_shard("train"), rank, world, scfg.batch_size, cfg.seed, stage)
    if cfg.latent_cache and stage in ("base", "fast"):
        t0 = time.perf_counter()
        rows.columns[LATENT] = encode_rows(model, rows.columns.pop(IMAGE), device, 4 * scfg.batch_size)
        if rank == 0:
            logger.info(
                "[%s] latent cache: %d training images encoded once in %.1f s", stage, rows.n, time.perf_counter() - t0
            )
    progress.steps_begin()
    stream = rows.batches(step)  # the data position follows from the step
    while step < scfg.steps:
        epoch, batch = next(stream)
        step += 1
        g = torch.Generator().manual_seed(step_seed(cfg.seed, stage, rank, step))
        x, mask = prepare_batch(batch, g, cfg, stage, device)
        lr = lr_at(step, scfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        z0 = batch[LATENT].to(device) if LATENT in batch else None
        loss, metrics = objective(x, mask, batch[KEY_ID], g, z0)
        if fault is not None and fault.inject_nan_at_step == step:
            loss = loss * float("nan")
            metrics = {**metrics, "loss": float("nan")}
        names = sorted(metrics)
        means = dict(zip(names, _mean_over_workers([metrics[k] for k in names], device, world), strict=True))
        if not math.isfinite(means["loss"]):
            latest = store.latest(stage)
            raise NonFiniteLossError(
                f"stage {stage!r}: the loss is {means['loss']} at step {step}; training stopped and nothing from this "
                f"step was saved; the last good checkpoint is {latest or 'none (no checkpoint yet)'}"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if scfg.max_grad_norm is not None:
            scaler.unscale_(optimizer)
            means["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, scfg.max_grad_norm))
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(step, _own_weights(model, stage))
        if rank == 0:
            progress.add(means)

        last = step == scfg.steps
        if step % scfg.log_every == 0 or last:
            record = progress.record(step, epoch, lr) if rank == 0 else {"stage": stage, "step": step}
            if rank == 0:
                _write_metrics(store, stage, progress.history)
                if config.get("progress") is not None:  # the driver's progress bar
                    loss = record.get("loss_avg", record.get("loss"))
                    config["progress"].put({"step": step, "loss": loss, "s/step": 1 / max(record["steps_per_s"], 1e-9)})
            ray.train.report({k: v for k, v in record.items() if isinstance(v, int | float | str)})
        if rank == 0 and (step % scfg.checkpoint_every == 0 or last):
            state: dict[str, Any] = {
                "epoch": epoch,
                "metrics": progress.history,
                "wall_s": round(progress.wall_s, 2),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "seed": cfg.seed,
            }
            if last and stage == "vae":
                s = measure_scaling_factor(model, config["scale_images"], device, scfg.batch_size)
                set_scaling_factor(model, s)
                state["scaling_factor"] = s
                logger.info("[vae] latent scaling factor s = 1/std = %.5f", s)
            shadow = None if ema is None else ema.shadow
            weights = _own_weights(model, stage)
            uri = store.save(stage, step, weights, optimizer.state_dict(), state, scfg.keep_checkpoints, shadow)
            logger.info("[%s] checkpoint %s", stage, uri)
            every = scfg.grid_every
            if every and (step % every == 0 or last):
                _write_grid(store, cfg, stage, step, model, config, device)
        if fault is not None and fault.kill_worker_after_step == step and rank == 0:
            _kill_once(store, cfg, stage, step)
        if fault is not None and fault.stop_after_steps == step:
            _barrier(world)  # rank 0 finishes this step's checkpoint before any worker fails
            raise FaultInjected(f"stage {stage!r}: stopped after step {step} by fault.stop_after_steps")
    stream.close()


def vae_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the VAE stage (``fast_core.training.vae_training_step`` on ``model.vae``)."""
    run_stage_loop({**config, "stage": "vae"})


def base_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the base stage (UNet + prompt encoder, ``unet_training_step``)."""
    run_stage_loop({**config, "stage": "base"})


def fast_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the FAST stage (prompt vectors + FARM + Adaptor, ``fast_training_step``)."""
    run_stage_loop({**config, "stage": "fast"})


def mask_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the mask stage (``fast_core.masks.diffusion.mask_training_step``)."""
    run_stage_loop({**config, "stage": "mask"})


LOOPS = {"vae": vae_loop, "base": base_loop, "fast": fast_loop, "mask": mask_loop}

"""Ray Train glue of the segmenter: ``train_loop_per_worker`` and the driver side that builds and runs the trainer.

The training arrays (uint8 images, bool masks; one array per row, any sizes) go to the Ray object store once;
 the loop config carries their
references, and each worker reads them zero-copy and trains on its share of every global batch
(:class:`fast_core.segmentation.training.BatchSchedule`). The model is wrapped for DDP by
``ray.train.torch.prepare_model``; every worker reports the running loss at the same steps, and at the end rank 0
reports the final weights as a checkpoint folder (``model.safetensors`` + ``config.json``), which the driver loads.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast_core.configbase import from_dict, to_dict
from fast_core.segmentation.inference import load_segmenter, save_segmenter
from fast_core.segmentation.models import Segmenter, build_segmenter
from fast_core.segmentation.training import SegTrainConfig, train_segmenter
from pipelines import console
from pipelines.evaluate.config import EvaluateConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """The trained segmenter (on the CPU, eval mode) and its training log."""

    model: Segmenter
    final_metrics: dict[str, float]  # mean loss terms over the last log interval, seconds_per_step, lr, step
    seconds: float  # wall time of the whole Ray Train run (start-up included)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build the seeded segmenter, train it on this worker's batches, report the final weights.

    ``config`` keys: ``images_ref``/``masks_ref`` (object refs of the lists of uint8 (C, H, W) / bool (H, W) arrays),
    ``arch``, ``in_channels``, ``encoder``, ``pretrained``, ``train`` (a :class:`SegTrainConfig` as a dict),
    ``cpus_per_worker`` (the worker's torch threads on CPU), ``progress`` (the driver's progress channel).
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    images, masks = ray.get(config["images_ref"]), ray.get(config["masks_ref"])
    cfg = from_dict(SegTrainConfig, config["train"])
    model = build_segmenter(  # the same initial weights on every worker
        config["arch"], config["in_channels"], seed=cfg.seed, encoder=config["encoder"], pretrained=config["pretrained"]
    )
    if cfg.channels_last:  # before any data-parallel wrapper builds its gradient buckets
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # a CPU worker uses the cores it reserved (Ray starts it with one thread)
        torch.set_num_threads(max(1, math.ceil(config["cpus_per_worker"])))

    def report(step: int, metrics: dict[str, float]) -> None:
        if rank == 0 and config.get("progress") is not None:
            seconds = metrics.get("seconds_per_step")
            config["progress"].put({"step": step, "loss": metrics.get("loss"), "s/step": seconds})
        if step < cfg.steps:
            ray.train.report(dict(metrics))

    history = train_segmenter(model, images, masks, cfg, device=device, rank=rank, world_size=world, callback=report)
    final = dict(history[-1])
    net = model.module if isinstance(model, DistributedDataParallel) else model
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_segmenter(net, tmp)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(final, checkpoint=checkpoint)


def fit_segmenter(cfg: EvaluateConfig, images: list[np.ndarray], masks: list[np.ndarray], run_name: str) -> TrainResult:
    """Run :func:`train_loop_per_worker` under ``TorchTrainer`` with ``cfg.scaling`` and load the final weights.

    Raises:
        RuntimeError: the run finished without a checkpoint.
    """
    import time

    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start = time.perf_counter()
    train_cfg = cfg.train_config()
    channel = console.ProgressChannel()
    loop_config = {
        "progress": channel,
        "images_ref": ray.put(images),
        "masks_ref": ray.put(masks),
        "arch": cfg.arch,
        "in_channels": cfg.in_channels,
        "encoder": cfg.encoder,
        "pretrained": cfg.pretrained,
        "train": to_dict(train_cfg),
        "cpus_per_worker": cfg.scaling.cpus_per_worker,
    }
    with tempfile.TemporaryDirectory(prefix="fastgen-evaluate-") as tmp:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(
                num_workers=cfg.scaling.num_workers,
                use_gpu=cfg.scaling.use_gpu,
                resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
            ),
            run_config=RunConfig(name=run_name, storage_path=cfg.ray_storage_path or tmp),
        )
        logger.info(
            "training the %s/%s segmenter: %d steps × batch %d on %d image(s), %s, %d worker(s)%s",
            cfg.encoder,
            cfg.arch,
            cfg.steps,
            cfg.batch_size,
            len(images),
            f"{cfg.crop_size}² native crops" if cfg.resolution == "native" else f"resized to {cfg.image_size}²",
            cfg.scaling.num_workers,
            " with GPUs" if cfg.scaling.use_gpu else "",
        )
        with channel.follow(cfg.steps, f"training the segmenter ({run_name})", "step"):
            result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"segmenter training run {run_name} ended without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            model = load_segmenter(Path(folder))
    if train_cfg.channels_last:  # tested in the format it was trained in (predict_proba follows the weights)
        model = model.to(memory_format=torch.channels_last)
    final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return TrainResult(model=model, final_metrics=final, seconds=time.perf_counter() - start)

"""``run_evaluation``: build the training set, train the segmenter with Ray Train, test it, write the report.

Outputs under ``cfg.out`` (local or ``s3://``)::

    config.resolved.yaml       the config used (secrets redacted), written before training starts
    metrics.json               overall / per category / per defect type metrics, definitions, training summary
    predictions.png            contact sheet: test image | ground truth | prediction, a few test images
    segmenter/                 the trained weights (model.safetensors + config.json)

``metrics.json`` is written last, so its presence marks a finished evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from typing import Any

import torch

from fast_core.data.layout import read_dataset, split_anomalies
from fast_core.data.transforms import encode_png
from fast_core.segmentation.inference import save_segmenter
from fast_core.segmentation.models import count_parameters
from pipelines import storage
from pipelines.config import RESOLVED_NAME, dump_config
from pipelines.evaluate.config import EvaluateConfig
from pipelines.evaluate.data import build_eval_set, build_train_set, check_inputs, local_dataset_root
from pipelines.evaluate.loop import fit_segmenter
from pipelines.evaluate.report import DEFINITIONS, contact_sheet, json_safe, score_segmenter
from pipelines.ray_utils import ensure_ray

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
PREVIEW_NAME = "predictions.png"
SEGMENTER_DIR = "segmenter"


def _eval_device(cfg: EvaluateConfig) -> torch.device:
    """Where the driver runs inference: the first GPU when ``scaling.use_gpu`` and one is visible, else the CPU."""
    return torch.device("cuda") if cfg.scaling.use_gpu and torch.cuda.is_available() else torch.device("cpu")


def _resolution_text(cfg: EvaluateConfig) -> str:
    """How images were sized for training and testing (copied into metrics.json)."""
    if cfg.resolution == "resize":
        return (
            f"{cfg.image_size}x{cfg.image_size}: predictions and ground truth compared at the segmenter input size "
            "(images bicubic-, masks nearest-neighbour-resized), not upsampled to the original size"
        )
    geometry = (
        "synthetic pairs resized back to their normal image's size"
        if cfg.synthetic_geometry == "source"
        else "synthetic pairs at their stored size"
    )
    return (
        f"native: trained on {cfg.crop_size}x{cfg.crop_size} crops at each image's own pixel size ({geometry}); "
        f"tested on whole images at their own size (tiles of {cfg.inference_tile} above that side)"
    )


def run_evaluation(cfg: EvaluateConfig) -> dict[str, Any]:
    """Train the segmenter on ``cfg.train_sources`` (+ normal images) and test it on the dataset's test set.

    Config and input problems (missing dataset root, incomplete synthetic version, unknown category) raise before
    any training. Same config + seed on CPU with one worker → the same metrics.

    Returns:
        The content of ``metrics.json`` (nan as None).
    """
    start = time.perf_counter()
    check_inputs(cfg)
    resolved = dump_config(cfg)
    storage.makedirs(cfg.out, cfg.storage)
    storage.write_text_atomic(storage.join(cfg.out, RESOLVED_NAME), resolved, cfg.storage)
    with tempfile.TemporaryDirectory(prefix="fastgen-evaluate-") as scratch:
        root = local_dataset_root(cfg, scratch)
        index = read_dataset(root, cfg.layout, cfg.categories)
        split = split_anomalies(index.records)
        t_data = time.perf_counter()
        train = build_train_set(cfg, split)
        test = build_eval_set(cfg, split)
        data_s = time.perf_counter() - t_data

        logger.debug("%s", ensure_ray())
        run_name = "evaluate-" + hashlib.sha256(resolved.encode()).hexdigest()[:12]
        fitted = fit_segmenter(cfg, train.pairs.images, train.pairs.masks, run_name)

        t_test = time.perf_counter()
        device = _eval_device(cfg)
        outcome = score_segmenter(
            fitted.model.to(device),
            test.pairs,
            cfg.threshold,
            cfg.eval_batch_size,
            device,
            cfg.num_preview,
            cfg.inference_tile,
        )
        test_s = time.perf_counter() - t_test
        model = fitted.model.cpu()
        storage.put_dir(
            save_segmenter(model, f"{scratch}/segmenter"), storage.join(cfg.out, SEGMENTER_DIR), cfg.storage
        )

    skipped = train.skipped + test.skipped
    n_test_normal = sum(k.endswith("/good") for k in test.pairs.keys)
    report = {
        **outcome.metrics,
        "threshold": cfg.threshold,
        "resolution": _resolution_text(cfg),
        "definitions": DEFINITIONS,
        "segmenter": {
            "arch": cfg.arch,
            "encoder": cfg.encoder,
            "pretrained": "ImageNet weights of the packaged file" if cfg.pretrained else "none (from scratch)",
            "in_channels": cfg.in_channels,
            "parameters": count_parameters(model),
            "loss": "BCE-with-logits + soft Dice (smooth 1, pooled over the batch)",
            "optimizer": f"AdamW lr {cfg.lr} weight_decay {cfg.weight_decay}, {cfg.lr_schedule} schedule",
        },
        "train": {
            "sources": [s.describe() for s in cfg.train_sources],
            "pairs": train.counts,
            "pairs_by_key": train.key_counts,
            "images": len(train.pairs.keys),
            "normal_requested": train.normal_requested,
            "normal_available": train.normal_available,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "num_workers": cfg.scaling.num_workers,
            "use_gpu": cfg.scaling.use_gpu,
            "final": fitted.final_metrics,
            "wall_s": fitted.seconds,
        },
        "test": {
            "images": len(test.pairs.keys),
            "anomaly_images": len(test.pairs.keys) - n_test_normal,
            "normal_images": n_test_normal,
        },
        "skipped": [{"source": s.source, "item": s.item, "reason": s.reason} for s in skipped],
        "timing_s": {"data": data_s, "train": fitted.seconds, "test": test_s, "total": time.perf_counter() - start},
    }
    report = json_safe(report)
    if outcome.preview:
        sheet = encode_png(contact_sheet(outcome.preview))
        storage.write_bytes_atomic(storage.join(cfg.out, PREVIEW_NAME), sheet, cfg.storage)
    text = json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n"
    storage.write_text_atomic(storage.join(cfg.out, METRICS_NAME), text, cfg.storage)
    overall = report["overall"]
    logger.info(
        "evaluation done in %.0f s: mIoU %s, anomaly IoU %s, pixel AUROC %s → %s",
        report["timing_s"]["total"],
        overall["miou"],
        overall["anomaly_iou"],
        overall["pixel_auroc"],
        storage.join(cfg.out, METRICS_NAME),
    )
    return report

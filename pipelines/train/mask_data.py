"""Training data of a box- or stretch-frame mask model: each training-third mask's shape at its own scale, and its
size.

    for each training-third anomaly image with a mask (split_anomalies(read_dataset(root)).gen_train, in file order):
        M     = load_mask(mask_path)                  at its native resolution (H, W), never resized first
        box:      shape = normalised_shape(M, S)      bounding box → centred square → S × S (any-pool down, nearest up)
                  f     = max(box_h, box_w) / √(H · W)            side_fraction(M)
        stretch:  shape = stretched_shape(M, S)       bounding box → S × S, each axis on its own (same resampling)
                  (a, b, φ) = (box_h / H, box_w / W, mean(shape))  box_record(M, S)

The shapes are the mask stage's rows (``mask``, ``key_id``); the fractions go with the model
(``MaskDiffusionConfig.box_sides`` or ``box_records``) so that the masks stage places every sample at a real size (and,
stretched, a real aspect) (:mod:`fast_core.masks.placement`). Neither ``dataset.frame`` nor ``dataset.image_size``
changes any of it: a blowhole of a few pixels keeps its shape whatever the generator trains on. Only the masks are
read, not the images. An anomaly image without a mask, an unreadable mask and an empty mask are skipped and listed
with their reason; a defect key left without a single shape is an error, as these frames have no size to give it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fast_core.data.layout import load_mask, read_dataset, split_anomalies
from fast_core.masks.placement import box_record, side_fraction
from fast_core.masks.shapes import normalised_shape, stretched_shape
from pipelines.train.config import DatasetConfig
from pipelines.train.data import KEY_ID, MASK, defect_key

logger = logging.getLogger(__name__)


@dataclass
class BoxShapes:
    """The box- or stretch-frame rows of the mask stage.

    Attributes:
        shapes: (N, 1, S, S) uint8 {0, 1} normalised (box) or stretched (stretch) shapes.
        key_ids: (N,) int64 indices into the run's keys (``TrainingData.keys``).
        sides: per defect key, the sizes of its shapes in file order: side fractions f (box) or [a, b, φ] box
            records (stretch); what ``MaskDiffusionConfig.box_sides`` / ``box_records`` hold.
        skipped: ``(path, reason)`` of every anomaly image or mask left out.
    """

    shapes: np.ndarray
    key_ids: np.ndarray
    sides: dict[str, list[Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def columns(self) -> dict[str, np.ndarray]:
        """The mask stage's columns: ``mask`` and ``key_id``."""
        return {MASK: self.shapes, KEY_ID: self.key_ids}


def load_box_shapes(
    cfg: DatasetConfig, keys: Sequence[str], size: int, frame: Literal["box", "stretch"] = "box"
) -> BoxShapes:
    """The ``frame`` training set of ``cfg`` at S = ``size`` (module docstring); ``keys`` are the run's keys
    (``"good"`` first, then the defect keys), which the rows' ``key_id`` index.

    Raises:
        FileNotFoundError / ValueError: the folder or a category is missing, a training-third defect key is not in
            ``keys``, or a defect key has no usable mask.
    """
    if frame not in ("box", "stretch"):
        raise ValueError(f"load_box_shapes: frame must be 'box' or 'stretch', got {frame!r}")
    reduce, measure = (normalised_shape, side_fraction) if frame == "box" else (stretched_shape, _record)
    index = read_dataset(cfg.local_root, cfg.layout, cfg.categories)
    split = split_anomalies(index.records)
    key_index = {k: i for i, k in enumerate(keys)}
    skipped: list[tuple[str, str]] = []
    shapes: list[np.ndarray] = []
    ids: list[int] = []
    sides: dict[str, list[Any]] = {k: [] for k in sorted({defect_key(r) for r in split.gen_train})}
    unknown = sorted(set(sides) - set(key_index))
    if unknown:
        raise ValueError(f"{cfg.root}: defect key(s) {', '.join(unknown)} are not among the run's keys {list(keys)}")
    for record in split.gen_train:
        key = defect_key(record)
        if record.mask_path is None:
            skipped.append((str(record.image_path), "anomaly image without a mask: no shape for the mask model"))
            continue
        try:
            mask = load_mask(record.mask_path)
        except (OSError, ValueError) as exc:
            skipped.append((str(record.mask_path), f"unreadable mask: {exc}"))
            continue
        if not mask.any():
            skipped.append((str(record.mask_path), "empty mask: no shape for the mask model"))
            continue
        shapes.append(reduce(mask, size).astype(np.uint8)[None])
        ids.append(key_index[key])
        sides[key].append(measure(mask, size) if frame == "stretch" else measure(mask))
    for path, reason in skipped:
        logger.warning("mask model (%s frame): skipped %s: %s", frame, path, reason)
    empty = [k for k, v in sides.items() if not v]
    if empty:
        raise ValueError(
            f"{cfg.root}: no usable training-third mask for {', '.join(empty)}, so the {frame}-frame mask model cannot "
            "learn its shape or size; fix the masks, leave the category out (dataset.categories), or train the "
            "whole-mask model (mask_model.frame: image)"
        )
    logger.info(
        "mask model (%s frame): %d shapes at %d px from %s, %d keys, %d files skipped",
        frame,
        len(shapes),
        size,
        cfg.root,
        len(sides),
        len(skipped),
    )
    return BoxShapes(
        shapes=np.stack(shapes) if shapes else np.zeros((0, 1, size, size), np.uint8),
        key_ids=np.asarray(ids, np.int64),
        sides=sides,
        skipped=skipped,
    )


def _record(mask: np.ndarray, size: int) -> list[float]:
    """[a, b, φ] = box_record(mask, size), as the JSON list the model's config keeps."""
    return list(box_record(mask, size))

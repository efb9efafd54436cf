"""Training data: a dataset folder → preprocessed uint8 arrays per stage → Ray Data datasets for ``TorchTrainer``.

What each stage trains on (FAST_SPEC §6, §8; ``split_anomalies`` cuts each defect's images at ⌊n/3⌋):

    vae    every ``train/good`` image + the training-third anomaly images          (images only)
    base   the same images, keyed "good" (normal) or "<category>/<defect>"         (image, key)
           + their masks when loss.fg_weight > 0 (empty for normal images and anomalies without one); for an
           inpaint UNet always, and normal image i borrows training mask i mod A (key still "good"), so the UNet
           also learns to fill a masked region of a normal image from its surroundings (dataset.normal_masks: false
           keeps their masks empty: a mask is then only ever filled with a defect)
    fast   the training-third anomaly images with their masks                      (image, mask, key)
    mask   the training-third masks                                                (mask, key)
           (box-frame mask model: their shapes at native scale instead, pipelines.train.mask_data)

Images are decoded once on the driver (``load_image`` → ``to_model_image`` at ``image_size``) and kept as uint8
``u = round((x + 1) · 127.5)``, the exact inverse of ``x = u / 127.5 − 1`` (4× smaller than float32 in the object
store); masks as uint8 {0, 1}. A file that cannot be read is skipped and listed with its reason; an anomaly image
without a mask is skipped for the mask-using stages. Keys travel as integer ids into :attr:`TrainingData.keys`
(string columns do not become tensors).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fast_core.data.layout import GOOD, ImageRecord, load_image, load_mask, read_dataset, split_anomalies
from fast_core.data.transforms import to_model_image, to_model_mask
from pipelines.train.config import DatasetConfig

if TYPE_CHECKING:
    import ray.data

    from pipelines.train.mask_data import BoxShapes

logger = logging.getLogger(__name__)

# Columns of the Ray datasets (``key_id`` indexes TrainingData.keys).
IMAGE, MASK, KEY_ID = "image", "mask", "key_id"
LATENT = "latent"  # a worker's own column (TrainConfig.latent_cache): z_0 = encode(image) of each row, float32
ROW_ID = "row_id"  # the row's index in the stage's columns: workers order and split the rows by it


def defect_key(record: ImageRecord) -> str:
    """The conditioning key of an image: ``"good"`` or ``"<category>/<defect_type>"``."""
    return GOOD if not record.is_anomaly else f"{record.category}/{record.defect_type}"


def to_uint8_chw(x: np.ndarray) -> np.ndarray:
    """Model image in [−1, 1] (C, S, S) float → uint8 ``round((x + 1) · 127.5)`` (exact for to_model_image output)."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclass
class TrainingData:
    """The preprocessed training set of one run.

    Attributes:
        keys: the model's conditioning keys: ``"good"`` first, then every defect key, sorted.
        normal: (N, C, S, S) uint8 ``train/good`` images.
        anomalies: (A, C, S, S) uint8 training-third anomaly images that have a mask.
        masks: (A, 1, S, S) uint8 {0, 1} their masks.
        anomaly_key_ids: (A,) int64 indices into ``keys``.
        extra_images: (E, C, S, S) uint8 training-third anomaly images without a mask (VAE/base only).
        extra_key_ids: (E,) int64.
        skipped: ``(path, reason)`` of every file left out.
        mask_shapes: the mask stage's rows when its model is in the box frame (set by the run), else None.
        window_level: L, the grey level every window was scaled to (``dataset.window_level``), else None.
    """

    keys: list[str]
    normal: np.ndarray
    anomalies: np.ndarray
    masks: np.ndarray
    anomaly_key_ids: np.ndarray
    extra_images: np.ndarray
    extra_key_ids: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mask_shapes: BoxShapes | None = None
    window_level: float | None = None

    @property
    def untrained_keys(self) -> list[str]:
        """The keys no training row carries, in ``keys`` order: ``"good"`` when there are no normal images or
        windows (``dataset.windows_per_normal: 0``), so the model never learns what its normal key means."""
        used = {int(k) for k in np.concatenate([self.anomaly_key_ids, self.extra_key_ids])}
        if len(self.normal):
            used.add(0)
        return [key for i, key in enumerate(self.keys) if i not in used]

    def stage_columns(self, stage: str, base_masks: bool = False, borrow_masks: bool = False) -> dict[str, np.ndarray]:
        """The columns stage ``stage`` trains on (see the module docstring); ``base_masks`` adds the mask column to
        the base stage (for ``loss.fg_weight > 0`` or an inpaint UNet; otherwise it would only cost object-store
        bytes); ``borrow_masks`` (inpaint) gives normal image i the training mask i mod A instead of an empty one; the
        mask stage's rows are ``mask_shapes`` when set."""
        if stage in ("vae", "base"):
            images = np.concatenate([self.normal, self.anomalies, self.extra_images])
            key_ids = np.concatenate(
                [np.zeros(len(self.normal), np.int64), self.anomaly_key_ids, self.extra_key_ids]
            ).astype(np.int64)
            if stage == "vae" or not base_masks:
                return {IMAGE: images, KEY_ID: key_ids}
            size = images.shape[-1]
            if borrow_masks and len(self.masks):
                normal_masks = self.masks[np.arange(len(self.normal)) % len(self.masks)]
            else:
                normal_masks = np.zeros((len(self.normal), 1, size, size), np.uint8)
            no_mask = np.zeros((len(self.extra_images), 1, size, size), np.uint8)
            return {IMAGE: images, MASK: np.concatenate([normal_masks, self.masks, no_mask]), KEY_ID: key_ids}
        if stage == "fast":
            return {IMAGE: self.anomalies, MASK: self.masks, KEY_ID: self.anomaly_key_ids}
        if stage == "mask":
            if self.mask_shapes is not None:
                return self.mask_shapes.columns()
            return {MASK: self.masks, KEY_ID: self.anomaly_key_ids}
        raise ValueError(f"unknown stage {stage!r}")

    def num_rows(self, stage: str) -> int:
        """Rows of the stage's dataset."""
        return len(self.stage_columns(stage)[KEY_ID])

    def preview(self, n: int) -> dict[str, np.ndarray]:
        """Fixed inputs of the sample grids: ``n`` normal images and, per key cycled, one training mask.

        Returns ``normal`` (n, C, S, S) uint8, ``masks`` (n, 1, S, S) uint8 and ``mask_key_ids`` (n,) int64 (the
        first mask of each defect key in turn; empty when there are no masks). Without normal images (a run that
        trains on defect windows only) each mask's own defect image stands in as the background, so the grid repaints
        that defect inside its mask.
        """
        normal = self.normal[np.arange(n) % max(len(self.normal), 1)] if len(self.normal) else self.normal[:0]
        if not len(self.masks):
            return {"normal": normal, "masks": self.masks[:0], "mask_key_ids": self.anomaly_key_ids[:0]}
        firsts = [int(np.flatnonzero(self.anomaly_key_ids == k)[0]) for k in np.unique(self.anomaly_key_ids)]
        picks = [firsts[i % len(firsts)] for i in range(n)]
        if not len(normal):
            normal = self.anomalies[picks]
        return {"normal": normal, "masks": self.masks[picks], "mask_key_ids": self.anomaly_key_ids[picks]}


def stack_training_data(
    root: str,
    keys: list[str],
    channels: int,
    size: int,
    normal: list[np.ndarray],
    defects: tuple[list[np.ndarray], list[np.ndarray], list[int]],
    skipped: list[tuple[str, str]],
    extra: tuple[list[np.ndarray], list[int]] = ([], []),
) -> TrainingData:
    """Stack per-image uint8 arrays into a :class:`TrainingData` (typed empty arrays for empty lists), log every
    skipped file and a summary; ``defects`` = (images, masks, key ids), ``extra`` = (images, key ids) without masks.

    Raises:
        ValueError: no normal and no defect image at all.
    """
    images, masks, ids = defects
    if not normal and not images:
        raise ValueError(f"{root}: no usable training image found ({len(skipped)} skipped)")
    empty = np.zeros((0, channels, size, size), np.uint8)
    data = TrainingData(
        keys=keys,
        normal=np.stack(normal) if normal else empty,
        anomalies=np.stack(images) if images else empty,
        masks=np.stack(masks) if masks else np.zeros((0, 1, size, size), np.uint8),
        anomaly_key_ids=np.asarray(ids, np.int64),
        extra_images=np.stack(extra[0]) if extra[0] else empty,
        extra_key_ids=np.asarray(extra[1], np.int64),
        skipped=skipped,
    )
    for path, reason in skipped:
        logger.warning("skipped %s: %s", path, reason)
    logger.info(
        "training data from %s: %d normal and %d anomaly images (or windows) with masks, %d without, %d keys, "
        "%d files skipped (%d px)",
        root,
        len(data.normal),
        len(data.anomalies),
        len(data.extra_images),
        len(keys),
        len(skipped),
        size,
    )
    return data


def load_training_data(cfg: DatasetConfig, seed: int = 0) -> TrainingData:
    """Read the dataset folder and preprocess every image the stages use (see the module docstring).

    ``cfg.frame == "window"`` cuts native-resolution windows instead (:func:`load_window_data`, drawn from ``seed``).

    Raises:
        FileNotFoundError / ValueError: the folder or a category is missing, or no usable image was found.
    """
    if cfg.frame == "window":
        from pipelines.train.window_data import load_window_data

        return load_window_data(cfg, seed)
    index = read_dataset(cfg.local_root, cfg.layout, cfg.categories)
    split = split_anomalies(index.records)
    size, channels = cfg.image_size, cfg.image_channels
    mode = "L" if channels == 1 else "RGB"
    skipped: list[tuple[str, str]] = []
    defect_keys = sorted({defect_key(r) for r in split.gen_train})
    keys = [GOOD, *defect_keys]
    key_index = {k: i for i, k in enumerate(keys)}

    def image(record: ImageRecord) -> np.ndarray | None:
        try:
            return to_uint8_chw(to_model_image(load_image(record.image_path, mode), size, channels).numpy())
        except (OSError, ValueError) as exc:
            skipped.append((str(record.image_path), f"unreadable image: {exc}"))
            return None

    normal = [a for a in (image(r) for r in split.train_good) if a is not None]
    anomalies, masks, anomaly_ids, extra, extra_ids = [], [], [], [], []
    for r in split.gen_train:
        arr = image(r)
        if arr is None:
            continue
        if r.mask_path is None:
            skipped.append((str(r.image_path), "anomaly image without a mask: used by vae/base only"))
            extra.append(arr)
            extra_ids.append(key_index[defect_key(r)])
            continue
        try:
            mask = to_model_mask(load_mask(r.mask_path), size).numpy().astype(np.uint8)
        except (OSError, ValueError) as exc:
            skipped.append((str(r.mask_path), f"unreadable mask: {exc}; image used by vae/base only"))
            extra.append(arr)
            extra_ids.append(key_index[defect_key(r)])
            continue
        anomalies.append(arr)
        masks.append(mask)
        anomaly_ids.append(key_index[defect_key(r)])
    return stack_training_data(
        cfg.root, keys, channels, size, normal, (anomalies, masks, anomaly_ids), skipped, (extra, extra_ids)
    )


def check_stage_rows(data: TrainingData, stage: str, batch_size: int, num_workers: int) -> None:
    """Every worker needs at least one full batch per epoch: rows ≥ batch_size × num_workers, else ``ValueError``."""
    rows = data.num_rows(stage)
    if rows < batch_size * num_workers:
        raise ValueError(
            f"stage {stage!r}: {rows} training rows cannot fill one batch of {batch_size} on each of {num_workers} "
            f"worker(s); lower stage.{stage}.batch_size or scaling.num_workers, or add data"
        )


def to_ray_dataset(columns: dict[str, np.ndarray]) -> ray.data.Dataset:
    """A Ray dataset with one row per array index (tensor columns for images and masks, and ``row_id`` = i)."""
    import ray.data

    n = len(columns[KEY_ID])
    return ray.data.from_items([{ROW_ID: i, **{name: col[i] for name, col in columns.items()}} for i in range(n)])

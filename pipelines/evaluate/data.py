"""The segmenter's data: training pairs from synthetic dataset versions and the real third, normals, the test set.

Images are kept in the compact stored form, uint8 (C, H, W) with ``x = u8 / 127.5 − 1``, masks bool (H, W), one
array per row. With ``resolution: native`` every image keeps its own pixel size (converted to ``in_channels``); with
``resolution: resize`` every image and mask is brought to S × S at load time (``to_model_image``: bicubic;
``to_model_mask``: nearest neighbour).

* **synthetic** source: ``<uri>/data/part-*.parquet`` of a dataset version (DESIGN §4: ``image``/``mask`` as
  ``struct<bytes, path>`` PNG). The version must be complete (``_SUCCESS``). A row whose PNG does not decode, whose
  image and mask sizes differ, or whose bytes are missing is skipped and recorded with its reason. In native mode with
  ``synthetic_geometry: source`` each pair is resized (image bicubic, mask nearest) back to the size of the normal
  image it was painted on (``source_image``), undoing the synthesizer's square model size; a row whose source image
  cannot be read is skipped with its reason. ``pairs_per_key`` keeps the first n pairs of each defect key, so methods
  that lost different rows still train on equal counts per defect type.
* **real_third** source: the first ⌊n/3⌋ anomaly images per (category, defect type) of the dataset root (FAST_SPEC §8)
  with their ground-truth masks.
* **normal** images: ``train/good`` images with empty masks, ``round(n_pairs · f / (1 − f))`` of them for
  ``normal_fraction = f`` (so they make up the fraction f of the training set), chosen by a seeded permutation; when
  fewer exist, all are used and the shortfall is reported.
* **test set**: the other n − ⌊n/3⌋ anomaly images per defect type plus every ``test/good`` image (empty masks).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fast_core.data.layout import GOOD, ImageRecord, Split, load_image, load_mask
from fast_core.data.transforms import decode_png, resize_pair, to_model_image, to_model_mask, to_uint8_chw
from pipelines import storage
from pipelines.evaluate.config import EvaluateConfig, TrainSource
from pipelines.storage import StorageConfig

logger = logging.getLogger(__name__)

SUCCESS_NAME = "_SUCCESS"
DATA_GLOB = "data/part-*.parquet"
SYNTHETIC_COLUMNS = ("sample_id", "category", "defect_type", "image", "mask")
LOG_EVERY_ROWS = 500


@dataclass
class Skipped:
    """A row left out of the training or test set, and why."""

    source: str  # "synthetic:<uri>", "real_third", "normal" or "test"
    item: str  # sample_id or image path
    reason: str


@dataclass
class PairSet:
    """Images/masks (native or resized), with a key (``"category/defect"``) and provenance per row."""

    images: list[np.ndarray]  # uint8 (C, H, W) each
    masks: list[np.ndarray]  # bool (H, W) each
    keys: list[str]  # "<category>/<defect_type>" ("<category>/good" for normal images)
    sources: list[str]  # which source each row came from
    items: list[str]  # sample_id or image path

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class _Builder:
    """Accumulates rows of a :class:`PairSet`; ``size`` None keeps every image at its own size."""

    size: int | None
    channels: int
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)

    def add(self, image: np.ndarray, mask: np.ndarray | None, key: str, source: str, item: str) -> None:
        """Add a uint8 image (H, W[, 3]) and its mask (H, W) (None: empty); sizes must agree."""
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(
                f"mask size {mask.shape[1]}×{mask.shape[0]} differs from image {image.shape[1]}×{image.shape[0]}"
            )
        if self.size is None:
            self.images.append(to_uint8_chw(image, self.channels))
            self.masks.append(np.zeros(image.shape[:2], bool) if mask is None else np.asarray(mask) > 0)
        else:
            x = to_model_image(image, self.size, self.channels)  # (C, S, S) in [-1, 1], multiples of 1/127.5
            self.images.append(np.rint((x.numpy() + 1.0) * 127.5).astype(np.uint8))
            if mask is None:
                self.masks.append(np.zeros((self.size, self.size), bool))
            else:
                self.masks.append(to_model_mask(mask, self.size)[0].numpy() > 0.5)
        self.keys.append(key)
        self.sources.append(source)
        self.items.append(item)

    def extend(self, other: PairSet) -> None:
        """Append every row of ``other``."""
        self.images.extend(other.images)
        self.masks.extend(other.masks)
        self.keys += other.keys
        self.sources += other.sources
        self.items += other.items

    def build(self) -> PairSet:
        return PairSet(list(self.images), list(self.masks), list(self.keys), list(self.sources), list(self.items))


def _size(cfg: EvaluateConfig) -> int | None:
    """The fixed side of every image (``resize``), or None (``native``)."""
    return cfg.image_size if cfg.resolution == "resize" else None


@dataclass
class TrainSet:
    """The segmenter's training pairs and what was left out."""

    pairs: PairSet
    skipped: list[Skipped]
    counts: dict[str, int]  # rows per source ("synthetic:<uri>", "real_third", "normal")
    normal_requested: int  # normals the fraction asked for
    normal_available: int  # train/good images there were
    key_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # source → "category/defect" → pairs


@dataclass
class EvalSet:
    """The held-out test images (2/3 of each defect type + all test/good) at the segmenter size."""

    pairs: PairSet
    skipped: list[Skipped]


# --- input checks (before any work) -----------------------------------------------------------------------------------


def check_inputs(cfg: EvaluateConfig) -> None:
    """Fail before work when the dataset root or a synthetic version is missing or incomplete."""
    if not storage.exists(cfg.dataset_root, cfg.storage):
        raise FileNotFoundError(f"dataset_root not found: {cfg.dataset_root}")
    for src in cfg.train_sources:
        if src.kind != "synthetic" or src.uri is None:
            continue
        if not storage.exists(src.uri, cfg.storage):
            raise FileNotFoundError(f"train_sources: synthetic dataset version not found: {src.uri}")
        if not storage.exists(storage.join(src.uri, SUCCESS_NAME), cfg.storage):
            raise ValueError(f"train_sources: {src.uri} has no {SUCCESS_NAME}: an incomplete dataset version")
        if not storage.glob(storage.join(src.uri, DATA_GLOB), cfg.storage):
            raise ValueError(f"train_sources: {src.uri} has no {DATA_GLOB} files")


def local_dataset_root(cfg: EvaluateConfig, scratch: str | Path) -> Path:
    """The dataset root as a local folder: itself, or an ``s3://`` root copied under ``scratch``."""
    if "://" not in cfg.dataset_root or cfg.dataset_root.startswith("file://"):
        root = Path(cfg.dataset_root.split("://", 1)[-1])
        if not root.is_dir():
            raise FileNotFoundError(f"dataset_root is not a folder: {root}")
        return root
    logger.info("copying %s to a local scratch folder", cfg.dataset_root)
    return storage.get_dir(cfg.dataset_root, Path(scratch) / "dataset_root", cfg.storage)


# --- sources ----------------------------------------------------------------------------------------------------------


def _struct_bytes(value: object) -> bytes | None:
    """The ``bytes`` of a ``struct<bytes, path>`` cell (None when the cell or its bytes are null)."""
    if not isinstance(value, dict):
        return None
    data = value.get("bytes")
    return data if isinstance(data, bytes) and data else None


class _SourceSizes:
    """(width, height) of normal images by URI, read from their headers once."""

    def __init__(self, storage_cfg: StorageConfig | None) -> None:
        self.storage_cfg = storage_cfg
        self.cache: dict[str, tuple[int, int]] = {}

    def __call__(self, uri: str) -> tuple[int, int]:
        if uri not in self.cache:
            from PIL import Image

            try:
                if "://" in uri and not uri.startswith("file://"):
                    with Image.open(io.BytesIO(storage.read_bytes(uri, self.storage_cfg))) as im:
                        self.cache[uri] = im.size
                else:
                    with Image.open(uri.removeprefix("file://")) as im:
                        self.cache[uri] = im.size
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise ValueError(f"source image {uri} unreadable, its size unknown ({exc})") from exc
        return self.cache[uri]


def read_synthetic_pairs(
    src: TrainSource,
    size: int | None,
    channels: int,
    storage_cfg: StorageConfig | None = None,
    categories: Sequence[str] | None = None,
    source_geometry: bool = False,
) -> tuple[PairSet, list[Skipped]]:
    """The pairs of one synthesized dataset version, in part/row order (see the module docstring for skips).

    ``size`` None keeps the native size; with ``source_geometry`` each pair is resized to its ``source_image``'s size.

    Raises:
        ValueError: a part file is not Parquet or lacks one of :data:`SYNTHETIC_COLUMNS` (names the file).
    """
    if src.uri is None:
        raise ValueError("read_synthetic_pairs needs a synthetic TrainSource with a uri")
    label = src.describe()
    builder, skipped = _Builder(size, channels), []
    parts = storage.glob(storage.join(src.uri, DATA_GLOB), storage_cfg)
    per_key: dict[str, int] = {}
    source_size = _SourceSizes(storage_cfg)
    columns = SYNTHETIC_COLUMNS + (("source_image",) if source_geometry else ())
    start = time.perf_counter()
    for part in parts:
        if src.max_pairs is not None and len(builder.keys) >= src.max_pairs:
            break
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(part, storage_cfg)))
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends for non-Parquet bytes
            raise ValueError(f"{part}: not a readable Parquet file ({exc})") from exc
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{part}: missing column(s) {', '.join(missing)}; expected the DESIGN §4 data schema")
        rows = table.select(list(columns)).to_pylist()
        for row in rows:
            sid = str(row["sample_id"])
            key = f"{row['category']}/{row['defect_type']}"
            if categories is not None and row["category"] not in categories:
                continue
            if src.max_pairs is not None and len(builder.keys) >= src.max_pairs:
                break
            if src.pairs_per_key is not None and per_key.get(key, 0) >= src.pairs_per_key:
                continue
            img_bytes, mask_bytes = _struct_bytes(row["image"]), _struct_bytes(row["mask"])
            if img_bytes is None or mask_bytes is None:
                skipped.append(Skipped(label, sid, f"{'image' if img_bytes is None else 'mask'} bytes are missing"))
                continue
            try:
                image = decode_png(img_bytes)
            except ValueError as exc:
                skipped.append(Skipped(label, sid, f"image: {exc}"))
                continue
            try:
                mask = decode_png(mask_bytes, "L")
            except ValueError as exc:
                skipped.append(Skipped(label, sid, f"mask: {exc}"))
                continue
            try:
                if source_geometry:
                    image, mask = resize_pair(image, mask, *source_size(str(row["source_image"])))
                builder.add(image, mask, key, label, sid)
            except ValueError as exc:
                skipped.append(Skipped(label, sid, str(exc)))
                continue
            per_key[key] = per_key.get(key, 0) + 1
            if len(builder.keys) % LOG_EVERY_ROWS == 0:
                logger.info("%s: %d pairs decoded (%.1f s)", label, len(builder.keys), time.perf_counter() - start)
    for s in skipped:
        logger.warning("skipped %s row %s: %s", s.source, s.item, s.reason)
    logger.info("%s: %d pairs, %d skipped, from %d part file(s)", label, len(builder.keys), len(skipped), len(parts))
    return builder.build(), skipped


def _read_records(
    records: Sequence[ImageRecord], size: int | None, channels: int, label: str, with_masks: bool
) -> tuple[PairSet, list[Skipped]]:
    """Load records (anomalies with masks when ``with_masks``, else with empty masks); unreadable ones are skipped."""
    builder, skipped = _Builder(size, channels), []
    mode = "L" if channels == 1 else "RGB"
    for rec in records:
        item = str(rec.image_path)
        if with_masks and rec.mask_path is None:
            skipped.append(Skipped(label, item, "no ground-truth mask"))
            continue
        try:
            image = load_image(rec.image_path, mode)
            mask = load_mask(rec.mask_path) if with_masks and rec.mask_path is not None else None
            builder.add(image, mask, f"{rec.category}/{rec.defect_type}", label, item)
        except (ValueError, OSError) as exc:
            skipped.append(Skipped(label, item, str(exc)))
    for s in skipped:
        logger.warning("skipped %s image %s: %s", s.source, s.item, s.reason)
    return builder.build(), skipped


def normal_count(n_pairs: int, fraction: float) -> int:
    """``round(n_pairs · f / (1 − f))``: normals that make up the fraction f of the training set.

    >>> normal_count(80, 0.2), normal_count(10, 0.0)
    (20, 0)
    """
    return int(round(n_pairs * fraction / (1.0 - fraction)))


def build_train_set(cfg: EvaluateConfig, split: Split) -> TrainSet:
    """Every configured source, then the normal images; raises ``ValueError`` when no anomaly pair is left."""
    size, ch = _size(cfg), cfg.in_channels
    source_geometry = cfg.resolution == "native" and cfg.synthetic_geometry == "source"
    builder, skipped, counts, key_counts = _Builder(size, ch), [], {}, {}
    for src in cfg.train_sources:
        if src.kind == "synthetic":
            pairs, sk = read_synthetic_pairs(src, size, ch, cfg.storage, cfg.categories, source_geometry)
        else:
            records = split.gen_train[: src.max_pairs] if src.max_pairs else split.gen_train
            pairs, sk = _read_records(records, size, ch, "real_third", with_masks=True)
        builder.extend(pairs)
        skipped += sk
        counts[src.describe()] = len(pairs.keys)
        key_counts[src.describe()] = {k: pairs.keys.count(k) for k in sorted(set(pairs.keys))}
    n_pairs = len(builder.keys)
    if n_pairs == 0:
        raise ValueError(
            f"no training pairs from {', '.join(s.describe() for s in cfg.train_sources)} "
            f"({len(skipped)} skipped); nothing to train the segmenter on"
        )
    wanted = normal_count(n_pairs, cfg.normal_fraction)
    goods = list(split.train_good)
    if wanted > len(goods):
        logger.warning("normal_fraction asks for %d normal images; only %d train/good exist", wanted, len(goods))
    order = np.random.default_rng(cfg.seed).permutation(len(goods))[: min(wanted, len(goods))]
    normals, sk = _read_records([goods[i] for i in sorted(order)], size, ch, "normal", with_masks=False)
    builder.extend(normals)
    skipped += sk
    counts["normal"] = len(normals.keys)
    logger.info("training set: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return TrainSet(builder.build(), skipped, counts, wanted, len(goods), key_counts)


def build_eval_set(cfg: EvaluateConfig, split: Split) -> EvalSet:
    """The test anomalies (with masks) and every test/good image (empty masks)."""
    size = _size(cfg)
    anomalies, sk1 = _read_records(split.test_anomalies, size, cfg.in_channels, "test", with_masks=True)
    goods, sk2 = _read_records(split.test_good, size, cfg.in_channels, "test", with_masks=False)
    builder = _Builder(size, cfg.in_channels)
    builder.extend(anomalies)
    builder.extend(goods)
    test = builder.build()
    if not test.keys:
        raise ValueError(f"{cfg.dataset_root}: the test set is empty (no test anomalies or test/good images)")
    logger.info("test set: %d anomaly and %d normal images", len(anomalies.keys), len(goods.keys))
    return EvalSet(test, sk1 + sk2)


def is_normal_key(key: str) -> bool:
    """True for ``"<category>/good"``."""
    return key.rsplit("/", 1)[-1] == GOOD

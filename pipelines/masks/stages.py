"""The Ray Data stages of the mask stage, as plain callables (unit-testable without Ray), and the shard filter.

    real-mask records ──► load_real_masks (CPU tasks)                        → the plan's sources (driver)
    plan rows ──► generate_masks (CPU tasks: augment, real) ──► MaskSampler (actor pool: diffusion) ──► driver:
        filter_shard (per complete shard, rows in plan order) ──► ShardStore.commit

Every plan row flows through every stage, including rows that failed: a failed row carries ``status`` = its reason,
``stage`` and ``detail``, and later stages pass it on untouched, so each row reaches the shard writer exactly once.
``status == ""`` means the row is still good. Masks travel between stages as PNG bytes (0/255 grey, ``mask_png``).

Batches are ``dict[str, np.ndarray]`` (Ray Data's ``numpy`` format); bytes columns are object arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from fast_core.data.png import decode_png, encode_png
from fast_core.masks import MaskAugmentConfig, MaskFilter, MaskFilterConfig, augment_mask, mask_stats
from fast_core.masks.placement import despeckled_sample, draw_box, draw_side, drop_specks, place_shape, placement_rng
from fast_core.masks.shapes import normalised_shape, stretched_shape
from pipelines import storage
from pipelines.masks.schema import GENERATE_FAILED, STAGE_FILTER, STAGE_GENERATE
from pipelines.storage import StorageConfig

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

# Why a real mask is not used as a source (recorded in rejected/real-masks.parquet).
MASK_MISSING, UNREADABLE, EMPTY, NON_BINARY, SIZE_MISMATCH = (
    "mask_missing",
    "unreadable",
    "empty",
    "non_binary",
    "size_mismatch",
)
REAL_REASONS = (MASK_MISSING, UNREADABLE, EMPTY, NON_BINARY, SIZE_MISMATCH)


# ------------------------------------------------------------------------------------------------ mask bytes and shapes
def mask_png(mask: np.ndarray) -> bytes:
    """PNG bytes of a bool mask as 0/255 grey (deterministic encoding)."""
    return encode_png(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))


def decode_mask(data: bytes) -> np.ndarray:
    """Bool (H, W) mask from PNG bytes (grey > 0 is anomaly); ``ValueError`` for corrupt data."""
    return decode_png(data, "L") > 0


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask resized to (H, W) ``shape`` by nearest-neighbour sampling (identity when the shape matches)."""
    mask = np.asarray(mask, bool)
    if mask.shape == tuple(shape):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((int(shape[1]), int(shape[0])), Image.NEAREST)
    return np.asarray(im) > 127


def _column(batch: Batch, name: str) -> list[Any]:
    return list(batch[name])


# ------------------------------------------------------------------------------------------------ real masks
def check_real_mask(mask_file: str, image_file: str) -> tuple[str, str, bytes | None]:
    """(reason, detail, PNG) of one real training mask: reason ``""`` and the 0/255 PNG when it is usable.

    Usable: readable as an 8-bit image, strictly binary (grey values within {0, 255} or within {0, 1}), at least one
    anomaly pixel, and the same (H, W) as its image. Anything else is a reason of :data:`REAL_REASONS`.
    """
    if not mask_file:
        return MASK_MISSING, "the anomaly image has no ground-truth mask", None
    try:
        with Image.open(mask_file) as im:
            if im.mode not in ("1", "L", "P", "RGB", "RGBA", "LA"):
                return UNREADABLE, f"{mask_file}: mask mode {im.mode} is not 8-bit", None
            grey = np.asarray(im.convert("L"), dtype=np.uint8)
        with Image.open(image_file) as im:
            image_size = (im.height, im.width)
    except (OSError, ValueError, SyntaxError) as exc:
        return UNREADABLE, f"{mask_file}: {exc}", None
    values = np.unique(grey)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        return NON_BINARY, f"{mask_file}: {values.size} grey levels ({shown}); masks must be 0/255", None
    mask = grey > 0
    if not mask.any():
        return EMPTY, f"{mask_file}: no anomaly pixel", None
    if mask.shape != image_size:
        return SIZE_MISMATCH, f"{mask_file}: mask is {mask.shape}, its image {image_file} is {image_size}", None
    return "", "", mask_png(mask)


def load_real_masks(batch: Batch) -> Batch:
    """Ray Data stage: check and encode the real masks of a batch of records (``mask_file``, ``image_file``).

    Adds ``status`` (``""`` or a :data:`REAL_REASONS` entry), ``detail`` and ``mask_png`` (None when rejected).
    """
    out = {k: np.asarray(v) for k, v in batch.items()}
    results = [check_real_mask(str(m), str(i)) for m, i in zip(batch["mask_file"], batch["image_file"], strict=True)]
    out["status"] = np.array([r[0] for r in results], dtype=object)
    out["detail"] = np.array([r[1] for r in results], dtype=object)
    pngs = np.empty(len(results), dtype=object)
    pngs[:] = [r[2] for r in results]
    out["mask_png"] = pngs
    return out


# ------------------------------------------------------------------------------------------------ generation
def generate_one(
    source: str, ref_png: bytes | None, seed: int, shape: tuple[int, int], cfg: MaskAugmentConfig
) -> np.ndarray:
    """The mask of one ``augment`` or ``real`` plan row: a function of (source, reference, seed, shape, cfg) only.

    ``augment``: :func:`augment_mask` of the reference with ``np.random.default_rng(seed)`` onto ``shape``;
    ``real``: the reference, nearest-resized to ``shape``.
    """
    if ref_png is None:
        raise ValueError(f"a {source!r} row needs a reference mask")
    ref = decode_mask(ref_png)
    if source == "augment":
        return augment_mask(ref, np.random.default_rng(seed), cfg, out_shape=shape)
    if source == "real":
        return resize_nearest(ref, shape)
    raise ValueError(f"generate_one: source {source!r} is made by the diffusion sampler, not here")


def _empty_bytes(n: int) -> np.ndarray:
    arr = np.empty(n, dtype=object)
    arr[:] = [None] * n
    return arr


def generate_masks(batch: Batch, augment_cfg: MaskAugmentConfig) -> Batch:
    """Ray Data stage (CPU tasks): make the ``augment`` and ``real`` rows' masks; other rows pass through.

    Input columns: the plan (``source``, ``ref_png``, ``seed``, ``height``, ``width``, ...). Output: the same
    columns without ``ref_png``, plus ``mask_png`` and ``status`` / ``stage`` / ``detail``. A row whose generation
    raises is a ``generate_failed`` rejection naming the error, not a failed job.
    """
    n = len(batch["sample_id"])
    out = {k: v for k, v in batch.items() if k != "ref_png"}
    pngs = _empty_bytes(n)
    status, stage, detail = [""] * n, [""] * n, [""] * n
    for i in range(n):
        source = str(batch["source"][i])
        if source == "diffusion":
            continue
        shape = (int(batch["height"][i]), int(batch["width"][i]))
        try:
            mask = generate_one(source, batch["ref_png"][i], int(batch["seed"][i]), shape, augment_cfg)
        except (ValueError, RuntimeError) as exc:
            status[i], stage[i], detail[i] = GENERATE_FAILED, STAGE_GENERATE, f"{type(exc).__name__}: {exc}"
            continue
        pngs[i] = mask_png(mask)
    out["mask_png"] = pngs
    out["status"] = np.array(status, dtype=object)
    out["stage"] = np.array(stage, dtype=object)
    out["detail"] = np.array(detail, dtype=object)
    return out


def fetch_mask_model(uri: str, storage_cfg: StorageConfig | None = None, cache_dir: str | None = None) -> Path:
    """A local folder holding the mask model at ``uri``: the folder itself, or an ``s3://`` copy in the cache.

    The cache folder is keyed by the SHA-256 of the URI and of its ``config.json``, so a replaced model is fetched
    again; a complete copy (``model.safetensors`` present) is reused.
    """
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"mask_model_uri = {uri}: no config.json there")
        return path
    config = storage.read_bytes(storage.join(uri, "config.json"), storage_cfg)
    digest = hashlib.sha256(uri.encode() + b"\0" + config).hexdigest()[:16]
    root = Path(cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "fastgen", "mask-models"))
    local = root / digest
    if not (local / "model.safetensors").is_file():
        storage.get_dir(uri, local, storage_cfg)
    return local


class MaskSampler:
    """Ray Data actor: samples the ``diffusion`` rows of each batch with a mask diffusion model loaded once.

    Sample i uses ``torch.Generator().manual_seed(seed_i)`` (its start noise and every step's noise), so a row's mask
    does not depend on the other rows of its batch. The S×S sample becomes the row's (H, W) mask by the model's frame:

    * ``"image"``: the sample is the whole mask, nearest-resized to (H, W);
    * ``"box"``: the sample is a shape. It is first brought back to the frame its training shapes had, its own
      bounding box filling the S × S square (``normalised_shape(sample, S)``: a sample that covers only part of the
      square would otherwise be placed smaller than the size drawn for it), then placed at a real size of its key
      (:mod:`fast_core.masks.placement`) with ``rng = placement_rng(seed_i)`` (a numpy stream of the row's seed apart
      from its torch noise): side = draw_side(box_sides[key], (H, W), rng, jitter), then
      ``place_shape(shape, (side, side), (H, W), rng, specks)``.
    * ``"stretch"``: the same with the box stretched: the shape is ``stretched_shape(sample, S)``, its box
      (h, w) = draw_box(box_records[key], (H, W), rng, jitter, fill) with fill the stretched fill of the sample
      without its components of fewer than ``min_px`` cells (a real mask of similar fill lends its box), then
      ``place_shape(shape, (h, w), (H, W), rng, specks)``.

    With ``specks = (min_px, max_components)`` (the filters' bounds) the sample's specks go twice: first in the
    S × S sample, each component weighed by the pixels a cell becomes once its box is stretched to the drawn size
    (repeated until no more go, as dropping one shrinks the box), so that a stray speck does not make the shape's box
    and the drawn size disagree; then in the placed mask, pixel for pixel. A shape the placement or the cleaning
    empties stays empty, and the filters reject it with their reason.
    """

    def __init__(
        self,
        model_uri: str,
        nfe: int,
        threshold: float,
        num_gpus: float = 0.0,
        num_cpus: float = 1.0,
        storage_cfg: StorageConfig | None = None,
        cache_dir: str | None = None,
        jitter: float = 0.15,
        specks: tuple[float, int] | None = None,
    ) -> None:
        import torch

        from fast_core.masks.diffusion import MaskDiffusionModel

        if num_gpus <= 0:
            torch.set_num_threads(max(1, math.ceil(num_cpus)))
        self.device = "cuda" if num_gpus > 0 else "cpu"
        self.model = MaskDiffusionModel.load(fetch_mask_model(model_uri, storage_cfg, cache_dir), device=self.device)
        self.nfe = nfe
        self.threshold = threshold
        self.jitter = jitter
        self.specks = None if specks is None else (float(specks[0]), int(specks[1]))

    def to_frame(self, sample: np.ndarray, key: str, seed: int, shape: tuple[int, int]) -> np.ndarray:
        """The (H, W) = ``shape`` mask of one S×S ``sample`` of ``key`` for the row seeded ``seed`` (see the class)."""
        cfg = self.model.config
        if cfg.frame == "image":
            return resize_nearest(sample, shape)
        rng = placement_rng(seed)
        size = sample.shape[0]
        if cfg.frame == "box":
            side = draw_side(cfg.box_sides[key], shape, rng, self.jitter)
            box, reduce = (side, side), normalised_shape
        else:
            box = draw_box(cfg.box_records[key], shape, rng, self.jitter, fill=self._fill(sample))
            reduce = stretched_shape
        if self.specks is not None:
            sample = despeckled_sample(sample, box, self.specks, square=cfg.frame == "box")
        return place_shape(reduce(sample, size), box, shape, rng, self.specks)

    def _fill(self, sample: np.ndarray) -> float | None:
        """The stretched fill of ``sample`` that picks its box (the class docstring), None for an empty sample."""
        if self.specks is not None:
            sample = drop_specks(sample, self.specks[0], self.specks[1])
        fill = float(stretched_shape(sample, sample.shape[0]).mean())
        return fill if fill > 0 else None

    def __call__(self, batch: Batch) -> Batch:
        import torch

        from fast_core.masks.diffusion import sample_masks

        todo = [
            i for i in range(len(batch["sample_id"])) if batch["source"][i] == "diffusion" and batch["status"][i] == ""
        ]
        if not todo:
            return batch
        keys = [f"{batch['category'][i]}/{batch['defect_type'][i]}" for i in todo]
        gens = [torch.Generator(device=self.device).manual_seed(int(batch["seed"][i])) for i in todo]
        samples = sample_masks(self.model, keys, gens, nfe=self.nfe, device=self.device, threshold=self.threshold)
        # a batch whose rows all lack a mask reaches here with mask_png as a null (float) column: rebuild it as bytes
        pngs = _empty_bytes(len(batch["sample_id"]))
        pngs[:] = [v if isinstance(v, bytes) else None for v in batch["mask_png"]]
        for j, i in enumerate(todo):
            shape = (int(batch["height"][i]), int(batch["width"][i]))
            pngs[i] = mask_png(self.to_frame(samples[j], keys[j], int(batch["seed"][i]), shape))
        return {**batch, "mask_png": pngs}


# ------------------------------------------------------------------------------------------------ filtering
def seeded_filter(cfg: MaskFilterConfig, references: Sequence[np.ndarray]) -> MaskFilter:
    """A :class:`MaskFilter` of ``cfg`` that already remembers ``references`` for its near-duplicate check.

    The references (a key's real masks at the output size) are remembered through a filter whose geometric checks
    are all off, so every reference counts, except one that is itself a near duplicate of an earlier reference
    (which its twin already covers); then the real bounds are put in place and the counts zeroed.
    """
    permissive = dataclasses.replace(
        cfg,
        min_area_fraction=0.0,
        max_area_fraction=1.0,
        max_components=10**9,
        min_component_px=1,
        border_contact="allow",
        min_compactness=0.0,
    )
    filt = MaskFilter(permissive)
    for ref in references:
        filt.check(ref)
    filt.cfg = cfg
    filt.counts = dict.fromkeys(filt.counts, 0)
    return filt


def filter_shard(
    rows: pa.Table,
    cfg: MaskFilterConfig,
    references: Mapping[str, Sequence[np.ndarray]],
    foregrounds: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """Run the filters over one complete shard, rows in plan order; returns the rows with updated status columns.

    One :func:`seeded_filter` per defect key, fresh for each shard (seeded with that key's real masks), checks the
    shard's good rows in plan (``row``) order, so the outcome is a function of the shard alone: near duplicates are
    detected against the real masks and the shard's earlier accepted masks of the key. ``foregrounds`` maps a key to
    its object region (the inside check). Adds ``mask_area``, ``area_fraction``, ``num_components`` and
    ``bbox_aspect`` (of every decodable mask).
    """
    rows = rows.sort_by("row")
    cols = {name: rows.column(name).to_pylist() for name in ("category", "defect_type", "mask_png", "status")}
    stage, detail = rows.column("stage").to_pylist(), rows.column("detail").to_pylist()
    status = cols["status"]
    filters: dict[str, MaskFilter] = {}
    stats: dict[str, list[Any]] = {"mask_area": [], "area_fraction": [], "num_components": [], "bbox_aspect": []}
    for i in range(rows.num_rows):
        key = f"{cols['category'][i]}/{cols['defect_type'][i]}"
        mask = None
        if cols["mask_png"][i] is not None:
            try:
                mask = decode_mask(cols["mask_png"][i])
            except ValueError as exc:
                status[i], stage[i], detail[i] = GENERATE_FAILED, STAGE_GENERATE, f"undecodable mask PNG: {exc}"
        if mask is None:
            if status[i] == "":
                status[i], stage[i], detail[i] = GENERATE_FAILED, STAGE_GENERATE, "no mask was produced"
            for name in stats:
                stats[name].append(None)
            continue
        s = mask_stats(mask)
        stats["mask_area"].append(int(np.count_nonzero(mask)))
        stats["area_fraction"].append(s["area_fraction"])
        stats["num_components"].append(int(s["num_components"]))
        stats["bbox_aspect"].append(None if math.isnan(s["bbox_aspect"]) else s["bbox_aspect"])
        if status[i] != "":
            continue
        if key not in filters:
            filters[key] = seeded_filter(cfg, references.get(key, ()))
        fg = None if foregrounds is None else foregrounds.get(key)
        ok, reason = filters[key].check(mask, foreground=fg)
        if not ok:
            status[i], stage[i], detail[i] = str(reason), STAGE_FILTER, _reason_detail(str(reason), s)
    out = rows
    for name, values in (("status", status), ("stage", stage), ("detail", detail)):
        out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, pa.string()))
    types = {"mask_area": pa.int64(), "area_fraction": pa.float64(), "num_components": pa.int32()}
    for name, values in stats.items():
        out = out.append_column(name, pa.array(values, types.get(name, pa.float64())))
    return out


def _reason_detail(reason: str, s: Mapping[str, float]) -> str:
    """A short human note on a filter rejection (the measured statistics)."""
    return (
        f"{reason}: area_fraction={s['area_fraction']:.5f}, components={int(s['num_components'])}, "
        f"bbox_aspect={s['bbox_aspect']:.3f}"
    )

"""The mask stage's plan: which real masks feed each defect key, and the deterministic list of masks to make.

Inputs: per defect key ``"<category>/<defect>"`` (every defect type of the test split) the generator-training third
of its ground-truth masks (:func:`fast_core.data.layout.split_anomalies`, ``gen_train``); test-split masks are never
read. Each is checked by :func:`pipelines.masks.stages.check_real_mask`; the unusable ones become rows of
``rejected/real-masks.parquet`` and are not used as sources.

Plan (driver side, no Ray): per key, in sorted key order, ``count`` rows ``i = 0..count−1`` with

* ``sample_id = f"{category}__{defect}__m{i:06d}"``, ``seed = row_seed(job_seed, sample_id)``
  (:func:`pipelines.manifest.row_seed`);
* with ``rng = key_rng(job_seed, category, defect)`` (:func:`pipelines.manifest.key_rng`): first the sources
  ``rng.choice(["augment", "diffusion", "real"], size=count, p=weights)``, then a permutation π of the key's usable
  real masks; row i derives from real mask ``π[i mod m]`` (augment, real; diffusion rows record none);
* output shape: ``cfg.size`` or the key's most common real mask shape (ties: the first in file-name order).

Rows are numbered across keys in plan order (``row``) and shard k holds rows [k·S, (k+1)·S).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from fast_core.data.layout import load_image, read_dataset, split_anomalies
from fast_core.masks import estimate_foreground
from pipelines.manifest import key_rng, row_seed
from pipelines.masks.config import SOURCE_NAMES, MasksConfig
from pipelines.masks.schema import REJECTED_SCHEMA, STAGE_REAL, sample_id_for
from pipelines.masks.stages import Batch, decode_mask, resize_nearest

logger = logging.getLogger(__name__)

FOREGROUND_IMAGES = 64  # normal images averaged per category for the foreground estimate


@dataclass
class RealMask:
    """One usable real training mask: its file stem, PNG bytes (0/255, native size) and decoded array."""

    stem: str
    png: bytes
    mask: np.ndarray


@dataclass
class KeyInputs:
    """One defect key's usable real masks (file-name order), the rejected ones, its count and output shape."""

    category: str
    defect: str
    reals: list[RealMask] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)  # stem, reason, detail
    count: int = 0
    shape: tuple[int, int] = (0, 0)

    @property
    def key(self) -> str:
        """``"<category>/<defect>"``."""
        return f"{self.category}/{self.defect}"

    def references(self) -> list[np.ndarray]:
        """The usable real masks at the output shape (nearest), the filter's near-duplicate references."""
        return [resize_nearest(r.mask, self.shape) for r in self.reals]


RealLoader = Callable[[list[dict[str, str]]], list[Batch]]


def real_mask_records(cfg: MasksConfig) -> tuple[list[str], list[dict[str, str]], dict[str, list[str]]]:
    """(defect keys, one record per generator-training anomaly image, sorted train/good image paths per category).

    Every defect type of the test split is listed (``keys``) even without training masks, so such a key is named
    in the error that follows.
    """
    d = cfg.dataset
    index = read_dataset(d.local_root, d.layout, d.categories)
    split = split_anomalies(index.records)
    records = [
        {
            "category": r.category,
            "defect_type": r.defect_type,
            "stem": r.stem,
            "image_file": str(r.image_path.resolve()),
            "mask_file": "" if r.mask_path is None else str(r.mask_path.resolve()),
        }
        for r in split.gen_train
    ]
    keys = sorted({(r.category, r.defect_type) for r in index.records if r.split == "test" and r.is_anomaly})
    normals: dict[str, list[str]] = defaultdict(list)
    for r in split.train_good:
        normals[r.category].append(str(r.image_path.resolve()))
    return [f"{c}/{d}" for c, d in keys], records, {k: sorted(v) for k, v in normals.items()}


def collect_inputs(cfg: MasksConfig, loader: RealLoader) -> tuple[list[KeyInputs], dict[str, list[str]]]:
    """Read and check the real masks (through ``loader``, e.g. Ray Data) and settle each key's count and shape.

    Raises:
        ValueError: unknown ``counts.per_key`` keys (the valid ones listed), no defect keys, or a key without a
            usable real mask (the reasons counted).
    """
    key_names, records, normals = real_mask_records(cfg)
    inputs = {k: KeyInputs(*k.split("/", 1)) for k in key_names}
    unknown = sorted(set(cfg.counts.per_key) - set(inputs))
    if unknown:
        raise ValueError(
            f"MasksConfig.counts.per_key: unknown defect key(s) {', '.join(map(repr, unknown))}; "
            f"defect keys of {cfg.dataset.root}: {', '.join(sorted(inputs)) or 'none'}"
        )
    if not inputs:
        raise ValueError(f"{cfg.dataset.root}: no defect types in the test split, so there are no real masks")
    results = [row for batch in loader(records) for row in _rows(batch)]
    results.sort(key=lambda r: (r["category"], r["defect_type"], Path(r["image_file"]).name, r["image_file"]))
    for r in results:
        kin = inputs[f"{r['category']}/{r['defect_type']}"]
        if r["status"]:
            kin.rejected.append({"stem": r["stem"], "reason": r["status"], "detail": r["detail"]})
            logger.warning("%s: real mask %s not used (%s: %s)", kin.key, r["stem"], r["status"], r["detail"])
        else:
            kin.reals.append(RealMask(r["stem"], r["mask_png"], decode_mask(r["mask_png"])))
    ordered = [inputs[k] for k in sorted(inputs)]
    for kin in ordered:
        if not kin.reals:
            reasons = dict(Counter(x["reason"] for x in kin.rejected))
            raise ValueError(
                f"defect {kin.key}: no usable real training mask in {cfg.dataset.root} "
                f"(rejected: {reasons or 'none found'}); fix its masks or leave the category out (dataset.categories)"
            )
        kin.count = cfg.counts.count(kin.key)
        if cfg.size is not None:
            kin.shape = (int(cfg.size[0]), int(cfg.size[1]))
        else:
            shapes = Counter(r.mask.shape for r in kin.reals)
            best = max(shapes.values())
            kin.shape = next(tuple(r.mask.shape) for r in kin.reals if shapes[r.mask.shape] == best)
        logger.info(
            "%s: %d masks at %dx%d from %d real masks (%d rejected)",
            kin.key,
            kin.count,
            kin.shape[0],
            kin.shape[1],
            len(kin.reals),
            len(kin.rejected),
        )
    return ordered, normals


def _rows(batch: Batch) -> list[dict]:
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    return [{k: batch[k][i] for k in names} for i in range(n)]


def build_plan(inputs: list[KeyInputs], cfg: MasksConfig) -> pa.Table:
    """The plan rows (see the module docstring), with the reference mask's PNG in ``ref_png``."""
    weights = cfg.sources.weights()
    names = list(SOURCE_NAMES)
    probs = np.array([weights[n] for n in names])
    cols: dict[str, list] = {
        k: []
        for k in ("sample_id", "category", "defect_type", "source", "source_mask", "ref_png", "seed", "height", "width")
    }
    for kin in inputs:
        rng = key_rng(cfg.job_seed, kin.category, kin.defect)
        sources = rng.choice(len(names), size=kin.count, p=probs)
        perm = rng.permutation(len(kin.reals))
        for i in range(kin.count):
            sid = sample_id_for(kin.category, kin.defect, i)
            source = names[int(sources[i])]
            ref = kin.reals[int(perm[i % len(kin.reals)])]
            uses_ref = source != "diffusion"
            cols["sample_id"].append(sid)
            cols["category"].append(kin.category)
            cols["defect_type"].append(kin.defect)
            cols["source"].append(source)
            cols["source_mask"].append(ref.stem if uses_ref else "")
            cols["ref_png"].append(ref.png if uses_ref else None)
            cols["seed"].append(row_seed(cfg.job_seed, sid))
            cols["height"].append(kin.shape[0])
            cols["width"].append(kin.shape[1])
    n = len(cols["sample_id"])
    rows = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            **{k: pa.array(v, pa.binary() if k == "ref_png" else None) for k, v in cols.items()},
            "row": pa.array(rows),
            "shard": pa.array(rows // cfg.shard_size),
        }
    )
    return table.set_column(table.schema.get_field_index("seed"), "seed", table.column("seed").cast(pa.int64()))


def plan_digest(plan: pa.Table) -> str:
    """SHA-256 over every plan row's id, source, reference (its PNG's digest), seed and shape."""
    h = hashlib.sha256()
    cols = [plan.column(c).to_pylist() for c in ("sample_id", "source", "ref_png", "seed", "height", "width")]
    for sid, source, ref, seed, hh, ww in zip(*cols, strict=True):
        ref_hash = hashlib.sha256(ref).hexdigest() if ref is not None else ""
        h.update(json.dumps([sid, source, ref_hash, seed, hh, ww]).encode())
    return h.hexdigest()


def real_rejected_table(inputs: list[KeyInputs]) -> pa.Table:
    """``rejected/real-masks.parquet``: the unusable real masks, ``sample_id = "real:<category>/<defect>/<stem>"``."""
    rows = [
        {
            "sample_id": f"real:{kin.key}/{r['stem']}",
            "category": kin.category,
            "defect_type": kin.defect,
            "source": "real",
            "source_mask": r["stem"],
            "stage": STAGE_REAL,
            "reason": r["reason"],
            "detail": r["detail"],
            "mask_png": None,
        }
        for kin in inputs
        for r in kin.rejected
    ]
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)


def foregrounds(inputs: list[KeyInputs], normals: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per key, the object region of its category (:func:`estimate_foreground`) at the key's output shape.

    Uses the first :data:`FOREGROUND_IMAGES` ``train/good`` images (sorted), grey, bilinear-resized to the shape.

    Raises:
        ValueError: a category without normal images, or one :func:`estimate_foreground` cannot segment.
    """
    from PIL import Image

    out: dict[str, np.ndarray] = {}
    cache: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
    for kin in inputs:
        ck = (kin.category, kin.shape)
        if ck not in cache:
            paths = normals.get(kin.category, [])[:FOREGROUND_IMAGES]
            if not paths:
                raise ValueError(f"foreground: true, but category {kin.category!r} has no train/good images")
            h, w = kin.shape
            resized = (Image.fromarray(load_image(p, "L")).resize((w, h), Image.BILINEAR) for p in paths)
            images = [np.asarray(im, np.float64) for im in resized]
            try:
                cache[ck] = estimate_foreground(images)
            except ValueError as exc:
                raise ValueError(f"foreground: category {kin.category!r}: {exc}; set foreground: false") from exc
        out[kin.key] = cache[ck]
    return out

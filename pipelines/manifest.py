"""Manifests: the immutable Parquet list of (normal image, mask, prompt, seed) pairs that synthesis works through.

A manifest is a directory URI (local or ``s3://``) holding ``manifest.parquet`` (one row per pair, columns
:data:`MANIFEST_COLUMNS` in that order) and ``manifest.json`` (a summary written last: a manifest without it is
incomplete). Built from a dataset root, a mask source and a count per defect key ``"<category>/<defect>"``:

* ``sample_id = f"{category}__{defect}__{index:06d}"``, index 0..count−1, rows ordered by (category, defect, index);
* ``seed = int.from_bytes(sha256(f"{job_seed}/{sample_id}")[:8], "big") & (2**63 − 1)`` (see :func:`row_seed`);
* per key, one ``numpy`` Generator seeded from ``sha256(f"{job_seed}/{category}/{defect}")`` (see :func:`key_rng`)
  draws a permutation π of the key's usable masks, then ``count`` normal-image indices uniformly from the
  category's sorted ``train/good`` images; row i takes mask ``π[i mod m]``, so every mask is used ⌊count/m⌋ or
  ⌈count/m⌉ times. A key's rows depend only on (job_seed, its category, its defect, its count, its inputs).

Mask sources: ``real`` — the generator-training third (:func:`fast_core.data.layout.split_anomalies`, ``gen_train``)
of each defect's ground-truth masks; test-split anomalies are never read. ``shards`` — a finished mask-stage output.
Every source mask is decoded once; an unreadable or empty one is skipped with a warning and counted in
``manifest.json``. A defect key without any usable mask is a configuration error raised before anything is written.

Rows name files inside their sources: ``image_uri`` (and a real ``mask_uri``) an absolute path under the resolved
dataset root, a shard ``mask_uri`` a side file under ``shards_uri``. :func:`read_manifest` refuses a manifest with a
row that points anywhere else (``..`` segments, another folder), when ``manifest.json`` names the dataset root.

Immutability: writing to an ``out`` that already holds a manifest with the same rows is a no-op; different rows are
an error. Bytes are deterministic (fixed row order and Parquet options, no timestamps), and ``manifest.json`` carries
a hash of the content-relevant config (everything but ``out`` and ``storage``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fast_core.configbase import to_dict
from fast_core.data.layout import load_mask, read_dataset, split_anomalies
from fast_core.data.transforms import decode_png, encode_png
from pipelines.config import RESOLVED_NAME, dump_config
from pipelines.manifest_config import ManifestConfig
from pipelines.storage import StorageConfig, exists, glob, join, ls, read_bytes, write_bytes_atomic

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "manifest.json"
FORMAT_VERSION = 1

# Column names (the synthesis stage reads these constants, not literals).
SAMPLE_ID, CATEGORY, DEFECT_TYPE, IMAGE_URI = "sample_id", "category", "defect_type", "image_uri"
MASK_URI, MASK_PNG, MASK_SOURCE, PROMPT, SEED, MODEL_URI = (
    "mask_uri",
    "mask_png",
    "mask_source",
    "prompt",
    "seed",
    "model_uri",
)
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field(SAMPLE_ID, pa.string(), nullable=False),
        pa.field(CATEGORY, pa.string(), nullable=False),
        pa.field(DEFECT_TYPE, pa.string(), nullable=False),
        pa.field(IMAGE_URI, pa.string(), nullable=False),
        pa.field(MASK_URI, pa.string()),
        pa.field(MASK_PNG, pa.binary()),
        pa.field(MASK_SOURCE, pa.string(), nullable=False),
        pa.field(PROMPT, pa.string(), nullable=False),
        pa.field(SEED, pa.int64(), nullable=False),
        pa.field(MODEL_URI, pa.string(), nullable=False),
    ]
)
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_SCHEMA.names)
_REQUIRED = tuple(f.name for f in MANIFEST_SCHEMA if not f.nullable)
# Mask-stage output columns the "shards" source reads.
SHARD_COLUMNS = (SAMPLE_ID, CATEGORY, DEFECT_TYPE, "mask")
# Fixed Parquet options: the same table always gives the same bytes (for one pyarrow version).
_PARQUET_OPTIONS: dict[str, Any] = {"compression": "snappy", "version": "2.6", "write_statistics": True}


def defect_key(category: str, defect: str) -> str:
    """The defect key (and prompt) ``"<category>/<defect>"``."""
    return f"{category}/{defect}"


def sample_id_for(category: str, defect: str, index: int) -> str:
    """``f"{category}__{defect}__{index:06d}"``.

    >>> sample_id_for("tile", "crack", 7)
    'tile__crack__000007'
    """
    return f"{category}__{defect}__{index:06d}"


def _sha256_u64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def row_seed(job_seed: int, sample_id: str) -> int:
    """The first 8 bytes of ``sha256(f"{job_seed}/{sample_id}")`` as a big-endian unsigned int, masked to 63 bits.

    >>> row_seed(0, "tile__crack__000000") == row_seed(0, "tile__crack__000000") < 2**63
    True
    """
    return _sha256_u64(f"{job_seed}/{sample_id}") & (2**63 - 1)


def key_rng(job_seed: int, category: str, defect: str) -> np.random.Generator:
    """The pairing Generator of one defect key, seeded from ``sha256(f"{job_seed}/{category}/{defect}")``."""
    return np.random.default_rng(_sha256_u64(f"{job_seed}/{category}/{defect}"))


@dataclass(frozen=True)
class MaskCandidate:
    """One usable mask: its ``mask_source`` label and exactly one of a URI or PNG bytes."""

    source: str
    uri: str | None = None
    png: bytes | None = None


@dataclass
class KeyPlan:
    """Inputs of one defect key: the category's normal images, its usable masks, and the masks skipped (and why)."""

    category: str
    defect: str
    count: int
    normal_images: list[str] = field(default_factory=list)
    masks: list[MaskCandidate] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (mask_source, reason)

    @property
    def key(self) -> str:
        """``"<category>/<defect>"``."""
        return defect_key(self.category, self.defect)


@dataclass(frozen=True)
class ManifestResult:
    """What :func:`write_manifest` did: ``status`` is ``"written"`` or ``"unchanged"`` (same rows already there)."""

    uri: str
    status: Literal["written", "unchanged"]
    rows: int
    summary: dict[str, Any]


def _mask_problem(mask: np.ndarray) -> str | None:
    return "empty" if not mask.any() else None


def _dataset_plans(cfg: ManifestConfig) -> tuple[dict[tuple[str, str], KeyPlan], dict[str, list[str]]]:
    """A key plan per defect type of the test split (with its real training-third masks for source "real"), and
    the sorted normal images per category."""
    d = cfg.dataset
    # Listed under the resolved root, so every path is absolute and lexically inside it (symlinks inside the dataset
    # are kept as they are, not followed out of it).
    index = read_dataset(Path(d.local_root).resolve(), d.layout, d.categories)
    split = split_anomalies(index.records)
    normals: dict[str, list[str]] = defaultdict(list)
    for r in split.train_good:
        normals[r.category].append(str(r.image_path))
    plans: dict[tuple[str, str], KeyPlan] = {}
    for r in index.records:  # every defect type of the test split gets a key, with or without training masks
        if r.split == "test" and r.is_anomaly:
            plans.setdefault((r.category, r.defect_type), KeyPlan(r.category, r.defect_type, 0))
    if cfg.masks.source == "real":
        for r in split.gen_train:
            plan = plans[(r.category, r.defect_type)]
            if r.mask_path is None:
                plan.skipped.append((f"real:{r.stem}", "mask_missing"))
                continue
            source = f"real:{r.mask_path.stem}"
            try:
                mask = load_mask(r.mask_path)
            except (OSError, ValueError) as exc:
                plan.skipped.append((source, f"unreadable: {exc}"))
                continue
            if problem := _mask_problem(mask):
                plan.skipped.append((source, problem))
                continue
            if cfg.masks.embed:
                plan.masks.append(MaskCandidate(source, png=encode_png(mask)))
            else:
                plan.masks.append(MaskCandidate(source, uri=str(r.mask_path)))
    return plans, {c: sorted(v) for c, v in normals.items()}


def _read_shard_rows(shards_uri: str, storage: StorageConfig | None) -> pa.Table:
    """The ``SHARD_COLUMNS`` of every ``data/*.parquet`` of a finished mask-stage output, concatenated."""
    if not exists(join(shards_uri, "_SUCCESS"), storage):
        raise ValueError(f"masks.shards_uri = {shards_uri}: no _SUCCESS marker; the mask stage has not finished there")
    files = glob(join(shards_uri, "data", "*.parquet"), storage)
    if not files:
        raise ValueError(f"masks.shards_uri = {shards_uri}: no data/*.parquet shards")
    tables = []
    for f in files:
        try:
            t = pq.read_table(io.BytesIO(read_bytes(f, storage)))
        except pa.ArrowException as exc:
            raise ValueError(f"{f}: not a readable Parquet file ({exc})") from exc
        missing = [c for c in SHARD_COLUMNS if c not in t.column_names]
        if missing:
            raise ValueError(f"{f}: mask shard lacks {', '.join(missing)}; it has {', '.join(t.column_names)}")
        mask_type = t.schema.field("mask").type
        if not pa.types.is_struct(mask_type) or mask_type.get_field_index("bytes") < 0:
            raise ValueError(f"{f}: column 'mask' must be struct<bytes: binary, path: string>, got {mask_type}")
        tables.append(
            pa.table(
                {
                    SAMPLE_ID: t[SAMPLE_ID].cast(pa.string()),
                    CATEGORY: t[CATEGORY].cast(pa.string()),
                    DEFECT_TYPE: t[DEFECT_TYPE].cast(pa.string()),
                    "png": pc.struct_field(t["mask"], "bytes").cast(pa.binary()),
                }
            )
        )
    return pa.concat_tables(tables)


def _add_shard_masks(cfg: ManifestConfig, plans: dict[tuple[str, str], KeyPlan]) -> int:
    """Fill ``plans`` with the masks of ``cfg.masks.shards_uri``; returns the number of shard rows of other keys."""
    shards_uri, storage = cfg.masks.shards_uri or "", cfg.storage
    table = _read_shard_rows(shards_uri, storage)
    order = sorted(range(table.num_rows), key=lambda i: table[SAMPLE_ID][i].as_py() or "")
    cols = {name: table[name].to_pylist() for name in (SAMPLE_ID, CATEGORY, DEFECT_TYPE, "png")}
    side_files: dict[tuple[str, str], set[str]] = {}
    seen: set[str] = set()
    unused = 0
    for i in order:
        sid, cat, defect, png = (cols[name][i] for name in (SAMPLE_ID, CATEGORY, DEFECT_TYPE, "png"))
        plan = plans.get((cat, defect))
        if plan is None:
            unused += 1
            continue
        source = f"shard:{sid}"
        if sid in seen:
            plan.skipped.append((source, "duplicate_sample_id"))
            continue
        seen.add(sid)
        if png is None:
            plan.skipped.append((source, "unreadable: no mask bytes"))
            continue
        try:
            mask = decode_png(png, "L") > 0
        except ValueError as exc:
            plan.skipped.append((source, f"unreadable: {exc}"))
            continue
        if problem := _mask_problem(mask):
            plan.skipped.append((source, problem))
            continue
        if cfg.masks.embed:
            plan.masks.append(MaskCandidate(source, png=png))
            continue
        # Side file of the output layout (DESIGN §4): masks/<category>/<defect>/<sample_id>_mask.png.
        folder = join(shards_uri, "masks", cat, defect)
        if (cat, defect) not in side_files:
            side_files[(cat, defect)] = set(ls(folder, storage)) if exists(folder, storage) else set()
        uri = join(folder, f"{sid}_mask.png")
        if uri not in side_files[(cat, defect)]:
            plan.skipped.append((source, "side_file_missing"))
            continue
        plan.masks.append(MaskCandidate(source, uri=uri))
    return unused


@dataclass
class ManifestPlan:
    """Everything a manifest is built from, checked: one :class:`KeyPlan` per defect key, in row order."""

    keys: list[KeyPlan]
    shard_rows_unused: int = 0


def plan_manifest(cfg: ManifestConfig) -> ManifestPlan:
    """List the dataset, decode every source mask once, and check the config against what was found.

    Raises:
        ValueError: an unknown ``counts.per_key`` key (the valid ones are listed), a category without ``train/good``
            images, a defect key without a usable mask, or colliding sample_ids.
    """
    plans, normals = _dataset_plans(cfg)
    unused = _add_shard_masks(cfg, plans) if cfg.masks.source == "shards" else 0
    valid = sorted(defect_key(c, d) for c, d in plans)
    unknown = sorted(set(cfg.counts.per_key) - set(valid))
    if unknown:
        raise ValueError(
            f"ManifestConfig.counts.per_key: unknown defect key(s) {', '.join(map(repr, unknown))}; "
            f"defect keys of {cfg.dataset.root}: {', '.join(valid) or 'none'}"
        )
    if not plans:
        raise ValueError(f"{cfg.dataset.root}: no defect types in the test split, so nothing to pair masks with")
    ordered = [plans[k] for k in sorted(plans)]
    ids: set[str] = set()
    for plan in ordered:
        plan.count = cfg.counts.count(plan.key)
        plan.normal_images = normals.get(plan.category, [])
        if not plan.normal_images:
            raise ValueError(f"{cfg.dataset.root}: category {plan.category!r} has no train/good images to paint on")
        for source, reason in plan.skipped:
            logger.warning("%s: mask %s skipped (%s)", plan.key, source, reason)
        if not plan.masks:
            where = cfg.masks.shards_uri if cfg.masks.source == "shards" else cfg.dataset.root
            raise ValueError(
                f"defect {plan.key}: no usable {cfg.masks.source} mask in {where} "
                f"({len(plan.skipped)} skipped); remove the category or fix its masks"
            )
        # sample_ids are "<prefix><6 digits>", so two keys' ids collide exactly when their prefixes are equal.
        prefix = sample_id_for(plan.category, plan.defect, 0)[:-6]
        if prefix in ids:
            raise ValueError(f"defect {plan.key}: its sample_ids {prefix}NNNNNN collide with another key's")
        ids.add(prefix)
        logger.info(
            "%s: %d rows from %d normal images and %d masks (%d skipped)",
            plan.key,
            plan.count,
            len(plan.normal_images),
            len(plan.masks),
            len(plan.skipped),
        )
    return ManifestPlan(ordered, unused)


def build_table(plan: ManifestPlan, job_seed: int, model_uri: str) -> pa.Table:
    """The manifest rows of ``plan`` (see the module docstring for the pairing), as a table of ``MANIFEST_SCHEMA``."""
    rows: dict[str, list[Any]] = {name: [] for name in MANIFEST_COLUMNS}
    for kp in plan.keys:
        rng = key_rng(job_seed, kp.category, kp.defect)
        perm = rng.permutation(len(kp.masks))
        image_idx = rng.integers(0, len(kp.normal_images), size=kp.count)
        for i in range(kp.count):
            mask = kp.masks[int(perm[i % len(kp.masks)])]
            sid = sample_id_for(kp.category, kp.defect, i)
            rows[SAMPLE_ID].append(sid)
            rows[CATEGORY].append(kp.category)
            rows[DEFECT_TYPE].append(kp.defect)
            rows[IMAGE_URI].append(kp.normal_images[int(image_idx[i])])
            rows[MASK_URI].append(mask.uri)
            rows[MASK_PNG].append(mask.png)
            rows[MASK_SOURCE].append(mask.source)
            rows[PROMPT].append(kp.key)
            rows[SEED].append(row_seed(job_seed, sid))
            rows[MODEL_URI].append(model_uri)
    return pa.table(rows, schema=MANIFEST_SCHEMA)


def resolved_model_uri(uri: str) -> str:
    """``uri`` as rows store it: a plain local path made absolute (workers may run elsewhere), URIs and "" (no
    model: a manifest for baseline generators only) unchanged."""
    return uri if not uri or "://" in uri else os.path.abspath(uri)


def config_hash(cfg: ManifestConfig) -> str:
    """sha256 of the content-relevant config (``out`` and ``storage`` left out), as canonical JSON."""
    data = to_dict(cfg)
    data.pop("out")
    data.pop("storage")
    data["dataset"]["root"] = str(Path(cfg.dataset.local_root).resolve())
    data["masks"]["embed_png"] = cfg.masks.embed
    data["model_uri"] = resolved_model_uri(cfg.model_uri)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _summary(cfg: ManifestConfig, plan: ManifestPlan, table: pa.Table) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "rows": table.num_rows,
        "columns": list(MANIFEST_COLUMNS),
        "job_seed": cfg.job_seed,
        "dataset_root": str(Path(cfg.dataset.local_root).resolve()),
        "layout": cfg.dataset.layout,
        "model_uri": resolved_model_uri(cfg.model_uri),
        "mask_source": {"kind": cfg.masks.source, "shards_uri": cfg.masks.shards_uri, "embed_png": cfg.masks.embed},
        "counts": {kp.key: kp.count for kp in plan.keys},
        "keys": {
            kp.key: {
                "rows": kp.count,
                "normal_images": len(kp.normal_images),
                "masks_used": len(kp.masks),
                "masks_skipped": len(kp.skipped),
            }
            for kp in plan.keys
        },
        "masks_skipped": sum(len(kp.skipped) for kp in plan.keys),
        "skipped_masks": [
            {"key": kp.key, "mask_source": s, "reason": reason} for kp in plan.keys for s, reason in kp.skipped
        ],
        "shard_rows_unused": plan.shard_rows_unused,
        "created_by": {"command": "fastgen manifest", "config_sha256": config_hash(cfg)},
    }


def table_to_parquet(table: pa.Table) -> bytes:
    """The Parquet bytes of ``table`` with fixed writer options (one row group, no timestamps)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, table.num_rows), **_PARQUET_OPTIONS)
    return buf.getvalue()


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(cfg: ManifestConfig) -> ManifestResult:
    """Build the manifest of ``cfg`` and write it to ``cfg.out``: Parquet, then ``config.resolved.yaml``, then JSON.

    An ``out`` that already holds a manifest with the same rows is left as it is (a missing ``manifest.json`` from
    an interrupted write is completed); one with other rows raises ``ValueError``: manifests are immutable.
    """
    plan = plan_manifest(cfg)
    table = build_table(plan, cfg.job_seed, resolved_model_uri(cfg.model_uri))
    summary = _summary(cfg, plan, table)
    parquet_uri, json_uri = join(cfg.out, MANIFEST_FILE), join(cfg.out, SUMMARY_FILE)
    storage = cfg.storage
    if exists(parquet_uri, storage):
        try:
            existing = pq.read_table(io.BytesIO(read_bytes(parquet_uri, storage)))
        except pa.ArrowException as exc:
            raise ValueError(f"{parquet_uri} exists but is not readable ({exc}); choose a new out") from exc
        if not existing.equals(table):
            raise ValueError(
                f"{cfg.out} already holds a different manifest ({existing.num_rows} rows); manifests are immutable: "
                "choose a new out"
            )
        if not exists(json_uri, storage):
            write_bytes_atomic(json_uri, _json_bytes(summary), storage)
        logger.info("%s already holds this manifest (%d rows); nothing written", cfg.out, table.num_rows)
        return ManifestResult(cfg.out, "unchanged", table.num_rows, summary)
    if exists(json_uri, storage):
        raise ValueError(f"{cfg.out} holds {SUMMARY_FILE} without {MANIFEST_FILE}; choose a new out")
    write_bytes_atomic(parquet_uri, table_to_parquet(table), storage)
    write_bytes_atomic(join(cfg.out, RESOLVED_NAME), dump_config(cfg).encode(), storage)
    write_bytes_atomic(json_uri, _json_bytes(summary), storage)
    logger.info("wrote manifest %s: %d rows, %d defect keys", cfg.out, table.num_rows, len(plan.keys))
    return ManifestResult(cfg.out, "written", table.num_rows, summary)


def _check_types(table: pa.Table, where: str) -> pa.Table:
    names = tuple(table.column_names)
    if names != MANIFEST_COLUMNS:
        raise ValueError(f"{where}: columns {', '.join(names)}; expected, in this order: {', '.join(MANIFEST_COLUMNS)}")
    compatible = {
        pa.string(): (pa.string(), pa.large_string()),
        pa.binary(): (pa.binary(), pa.large_binary()),
        pa.int64(): (pa.int64(),),
    }
    for f in MANIFEST_SCHEMA:
        got = table.schema.field(f.name).type
        if got not in compatible[f.type]:
            raise ValueError(f"{where}: column {f.name!r} has type {got}; expected {f.type}")
    return table.cast(MANIFEST_SCHEMA)


def _first(mask: pa.ChunkedArray) -> int | None:
    idx = pc.indices_nonzero(mask)
    return int(idx[0].as_py()) if len(idx) else None


def _normal_uri(uri: str) -> str:
    """``uri`` with ``.`` and ``..`` segments resolved lexically: an absolute local path, or ``s3://bucket/key``."""
    if uri.startswith("s3://"):
        return "s3://" + posixpath.normpath(uri[len("s3://") :])
    return os.path.normpath(os.path.abspath(uri.removeprefix("file://")))


def _inside(uri: str, roots: list[str]) -> bool:
    """Whether ``uri`` is one of ``roots`` or lies under one of them (lexically, after ``..`` is resolved)."""
    path = _normal_uri(uri)
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in map(_normal_uri, roots))


def _source_roots(summary: dict[str, Any]) -> dict[str, list[str]]:
    """Column → the folders its URIs must lie in, from ``manifest.json`` (none when it names no dataset root)."""
    root = summary.get("dataset_root")
    if not isinstance(root, str) or not root:
        return {}
    source = summary.get("mask_source")
    shards = source.get("shards_uri") if isinstance(source, dict) else None
    masks = [root, shards] if isinstance(shards, str) and shards else [root]
    return {IMAGE_URI: [root], MASK_URI: masks}


def read_manifest(uri: str, storage: StorageConfig | None = None) -> pa.Table:
    """Read and validate the manifest at the directory ``uri``; returns its rows as a table of ``MANIFEST_SCHEMA``.

    Checks: ``manifest.json`` present (the manifest is complete), columns and types, no nulls in required columns,
    exactly one of ``mask_uri`` / ``mask_png`` per row, unique ``sample_id``, ``seed >= 0``, and, when
    ``manifest.json`` names its ``dataset_root``, every ``image_uri`` under that root and every ``mask_uri`` under it
    or under the mask shards' ``shards_uri`` (a manifest cannot make synthesis read files from elsewhere). Every error
    names the manifest and, for row problems, the row index and its sample_id.
    """
    parquet_uri = join(uri, MANIFEST_FILE)
    if not exists(parquet_uri, storage):
        raise FileNotFoundError(f"no manifest at {uri} ({MANIFEST_FILE} missing)")
    summary_uri = join(uri, SUMMARY_FILE)
    if not exists(summary_uri, storage):
        raise ValueError(f"manifest {uri} is incomplete ({SUMMARY_FILE} missing); rerun fastgen manifest")
    try:
        summary = json.loads(read_bytes(summary_uri, storage))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{summary_uri}: not valid JSON ({exc})") from exc
    if not isinstance(summary, dict):
        raise ValueError(f"{summary_uri}: expected a JSON object, got {type(summary).__name__}")
    try:
        table = pq.read_table(io.BytesIO(read_bytes(parquet_uri, storage)))
    except pa.ArrowException as exc:
        raise ValueError(f"{parquet_uri}: not a readable Parquet file ({exc})") from exc
    table = _check_types(table, parquet_uri)

    def row_error(row: int, what: str) -> ValueError:
        sid = table[SAMPLE_ID][row].as_py()
        return ValueError(f"manifest {uri}: row {row} (sample_id {sid!r}): {what}")

    for name in _REQUIRED:
        if (row := _first(pc.is_null(table[name]))) is not None:
            raise row_error(row, f"{name} is null")
    has_uri, has_png = pc.is_valid(table[MASK_URI]), pc.is_valid(table[MASK_PNG])
    if (row := _first(pc.equal(has_uri, has_png))) is not None:
        both = "both mask_uri and mask_png are set" if has_uri[row].as_py() else "neither mask_uri nor mask_png is set"
        raise row_error(row, f"{both}; exactly one must be")
    if (row := _first(pc.less(table[SEED], 0))) is not None:
        raise row_error(row, f"seed {table[SEED][row].as_py()} is negative")
    ids = table[SAMPLE_ID].to_pylist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for row, sid in enumerate(ids):
            if sid in seen:
                raise row_error(row, "duplicate sample_id")
            seen.add(sid)
    for column, roots in _source_roots(summary).items():
        for row, value in enumerate(table[column].to_pylist()):
            if value is not None and not _inside(value, roots):
                raise row_error(row, f"{column} {value!r} is outside the manifest's sources ({', '.join(roots)})")
    return table

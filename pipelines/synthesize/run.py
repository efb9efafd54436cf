"""``run_synthesis``: manifest → Ray Data pipeline → committed shards → a finished dataset version.

Pipeline (see :mod:`pipelines.synthesize.stages`)::

    ray.data.from_arrow(pending manifest rows, in blocks of batch_size)   the driver has read and checked them
      → map_batches(load_inputs)           CPU tasks: fetch + decode + resize inputs
      → map_batches(FastSynthesizer)       actor pool: model loaded once per actor; num_gpus/concurrency/batch_size
                                           (BaselineSynthesizer instead for a baseline generator: cutpaste,
                                           cutpaste_scar, perlin, realpaste)
      → map_batches(encode_and_qc)         CPU tasks: QC, PNG encoding
      → stream_blocks on the driver        the shard writer: buffer rows per shard, commit each complete shard

Why the driver writes. Shard k is fixed as manifest rows [k·S, (k+1)·S) before the pipeline starts (the driver reads
the manifest's ``sample_id`` column, computes each pending row's index and shard, and the load stage tags rows with
them). Rows then arrive in any order Ray chooses; the driver buffers them per shard and, as soon as all rows of a
shard have arrived (every row arrives exactly once, as a pair or as a rejection), sorts them by manifest index and
commits the shard through :class:`pipelines.shards.ShardStore`. One committer makes exactly-once simple: no two
processes ever write the same shard, markers are written in one place, duplicate deliveries (a retried task) are
dropped by id, and a shard commits while later shards are still being synthesized (streaming; no all-to-all
``groupby`` barrier). The heavy work (decode, synthesis, PNG encoding) stays in Ray tasks and actors; the driver
only moves bytes to storage, with ``compute.io_threads`` parallel writes per shard.

Stages and resources. The actor pool asks for ``compute.num_gpus``/``num_cpus`` per actor, the CPU stages for
``compute.task_cpus`` per task. Ray Data fuses ``load_inputs`` into the actor stage when both ask for the same
resources (CPU-only runs with ``task_cpus == num_cpus``): decoding then runs in the actor's process, which saves a
worker per CPU on a CPU-only machine; with GPU actors (or different CPU requests) it is a separate pool of CPU tasks.

Input. The driver reads and checks the whole manifest before anything runs (:func:`pipelines.manifest.read_manifest`),
so the pipeline starts from those rows, already cut into actor-batch blocks, instead of listing and reading the
Parquet file again in Ray tasks (a ``ListFiles`` + ``ReadFiles`` pass that cost 5–7 s per run on a local cluster).

Resume. Before the pipeline starts, the committed shards are read from ``_commits/`` and their rows are left out of
the pipeline's input (the load stage also drops any row outside ``pending``), so a rerun synthesizes only the rest; a
finished output (``_SUCCESS``) is left as it is. All bytes depend only on the manifest, the model and
:meth:`SynthesizeConfig.content` (per-row seeds, deterministic PNG and Parquet writing, a ``run_id`` derived from the
content hash), so an interrupted-and-resumed run produces the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fast_core.data.layout import GOOD
from pipelines import storage
from pipelines.config import dump_config
from pipelines.manifest import SUMMARY_FILE, read_manifest
from pipelines.model_store import ModelInfo, read_model_info
from pipelines.ray_utils import check_cpu_budget, ensure_ray, stream_blocks
from pipelines.shards import ShardStore, commit_stream, commit_totals, num_shards
from pipelines.synthesize.baseline_stage import BaselineSynthesizer, defect_image_uris, texture_uris
from pipelines.synthesize.config import SynthesizeConfig, content_hash
from pipelines.synthesize.encode import encode_and_qc
from pipelines.synthesize.outputs import STATS, SUCCESS, write_outputs
from pipelines.synthesize.provenance import provenance
from pipelines.synthesize.schema import DATA_SCHEMA, IMAGE_STRUCT, REJECTED_SCHEMA, image_path, mask_path
from pipelines.synthesize.stages import FastSynthesizer, load_inputs

logger = logging.getLogger(__name__)

FAULT_MARKER = "_faults/actor-killed"


@dataclass
class SynthesisSummary:
    """What a synthesis run did; ``format()`` is the CLI's final summary."""

    out: str
    run_id: str
    rows: int
    shards: int
    shards_skipped: int  # already committed before this run
    shards_written: int  # committed by this run
    written: int  # pairs in the whole dataset
    rejected: int  # rejected rows in the whole dataset
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rows_this_run: int = 0
    elapsed_s: float = 0.0
    pairs_per_s: float = 0.0  # rows (pairs + rejections) synthesized by this run per wall second
    already_complete: bool = False

    def format(self) -> str:
        """A few human-readable lines."""
        if self.already_complete:
            return f"{self.out}: already complete (run {self.run_id}): {self.written} pairs, {self.rejected} rejected"
        reasons = ", ".join(f"{k}: {v}" for k, v in self.rejected_by_reason.items()) or "none"
        return (
            f"{self.out}: {self.written} pairs written, {self.rejected} rejected ({reasons})\n"
            f"shards: {self.shards} ({self.shards_written} this run, {self.shards_skipped} already committed)\n"
            f"this run: {self.rows_this_run} rows in {self.elapsed_s:.1f} s = {self.pairs_per_s:.2f} pairs/s "
            f"(run {self.run_id})"
        )


# ------------------------------------------------------------------------------------------------ manifest
def read_manifest_index(uri: str, storage_cfg: storage.StorageConfig | None) -> pa.Table:
    """Every manifest row, in manifest order, after :func:`read_manifest` checked the whole manifest (schema, nulls,
    one mask per row, unique ids)."""
    return read_manifest(uri, storage_cfg)


def _model(cfg: SynthesizeConfig, index: pa.Table) -> tuple[str, ModelInfo]:
    """(model URI, its info); for a baseline with its own geometry, no model is read: the manifest's URI (possibly
    empty) is only recorded, and the keys are the manifest's prompts."""
    if cfg.generator != "fast" and cfg.baseline.image_size is not None and cfg.baseline.image_channels is not None:
        uris = pc.unique(index.column("model_uri")).to_pylist()
        model_uri = cfg.model_uri or (str(uris[0]) if len(uris) == 1 else "")
        keys = sorted(str(k) for k in pc.unique(index.column("prompt")).to_pylist())
        return model_uri, ModelInfo(
            image_size=cfg.baseline.image_size, image_channels=cfg.baseline.image_channels, keys=keys or ["none"]
        )
    model_uri = _model_uri(cfg, index)
    info = read_model_info(model_uri, cfg.storage)
    if cfg.generator == "fast" and cfg.sampler.guidance != 1.0 and GOOD in info.untrained_keys:
        raise ValueError(
            f"sampler.guidance = {cfg.sampler.guidance} steers away from the normal key {GOOD!r}, which the model at "
            f"{model_uri} never trained on (its training data held no normal image or window, as with "
            "dataset.windows_per_normal: 0); set sampler.guidance: 1, or train the model with normal windows"
        )
    return model_uri, info


def _model_uri(cfg: SynthesizeConfig, index: pa.Table) -> str:
    """The model to load: ``cfg.model_uri`` or the single ``model_uri`` of the manifest."""
    if cfg.model_uri:
        return cfg.model_uri
    uris = pc.unique(index.column("model_uri")).to_pylist()
    if len(uris) != 1 or not uris[0]:
        raise ValueError(
            f"{cfg.manifest}: the manifest names {len(uris)} model URIs {uris[:3]}; set model_uri (a baseline "
            "generator can instead set baseline.image_size and baseline.image_channels)"
        )
    return str(uris[0])


# ------------------------------------------------------------------------------------------------ shard building
def shard_tables(
    rows: pa.Table, info: ModelInfo, cfg: SynthesizeConfig, model_uri: str, run_id: str
) -> tuple[pa.Table, pa.Table, list[tuple[str, bytes]], dict[str, dict[str, int]]]:
    """(data rows, rejected rows, PNG side files, counters) of one complete shard, rows in manifest order."""
    rows = rows.sort_by("row")
    good = pc.equal(rows.column("status"), "")
    ok, bad = rows.filter(good), rows.filter(pc.invert(good))
    meta = {name: ok.column(name).to_pylist() for name in ("sample_id", "category", "defect_type")}
    names = list(zip(meta["category"], meta["defect_type"], meta["sample_id"], strict=True))
    img_paths = [image_path(c, d, s) for c, d, s in names]
    msk_paths = [mask_path(c, d, s) for c, d, s in names]
    image_png, mask_png = ok.column("image_png").combine_chunks(), ok.column("mask_png").combine_chunks()
    n = ok.num_rows
    data = pa.table(
        {
            "sample_id": ok.column("sample_id"),
            "category": ok.column("category"),
            "defect_type": ok.column("defect_type"),
            "image": pa.StructArray.from_arrays(
                [image_png.cast(pa.binary()), pa.array(img_paths, pa.string())], fields=list(IMAGE_STRUCT)
            ),
            "mask": pa.StructArray.from_arrays(
                [mask_png.cast(pa.binary()), pa.array(msk_paths, pa.string())], fields=list(IMAGE_STRUCT)
            ),
            "width": ok.column("width").cast(pa.int32()),
            "height": ok.column("height").cast(pa.int32()),
            "mask_area": ok.column("mask_area").cast(pa.int64()),
            "seed": ok.column("seed").cast(pa.int64()),
            "source_image": ok.column("source_image"),
            "mask_source": ok.column("mask_source"),
            "sampler": pa.array([cfg.method] * n, pa.string()),
            "nfe": ok.column("nfe").cast(pa.int32()),
            "model_uri": pa.array([model_uri] * n, pa.string()),
            "run_id": pa.array([run_id] * n, pa.string()),
        },
        schema=DATA_SCHEMA,
    )
    rejected = pa.table(
        {name: bad.column("status" if name == "reason" else name) for name in REJECTED_SCHEMA.names},
        schema=REJECTED_SCHEMA,
    )
    files = list(zip(img_paths, image_png.to_pylist(), strict=True)) + list(
        zip(msk_paths, mask_png.to_pylist(), strict=True)
    )
    keys = [f"{c}/{d}" for c, d in zip(meta["category"], meta["defect_type"], strict=True)]
    counts = {
        "rejected_by_reason": dict(Counter(bad.column("status").to_pylist())),
        "written_by_key": dict(Counter(keys)),
    }
    return data, rejected, files, counts


# ------------------------------------------------------------------------------------------------ run
def _reference_start(cfg: SynthesizeConfig) -> bool:
    """FAST started from each row's real defect pasted in place (``sampler.start: reference``)."""
    return cfg.generator == "fast" and cfg.sampler.start == "reference"


def _defect_images(cfg: SynthesizeConfig, pending: pa.Table) -> dict[str, str]:
    """Realpaste and the FAST reference start: ``sample_id`` → defect image path of the pending rows, from the
    dataset that ``manifest.json`` names (``dataset_root``, ``layout``); see
    :func:`pipelines.synthesize.baseline_stage.defect_image_uris`."""
    summary = json.loads(storage.read_bytes(storage.join(cfg.manifest, SUMMARY_FILE), cfg.storage))
    root = summary.get("dataset_root")
    if not root:
        raise ValueError(
            f"{'generator realpaste' if cfg.generator == 'realpaste' else 'sampler.start reference'}: "
            f"{cfg.manifest}/{SUMMARY_FILE} names no dataset_root, so the defect images of its masks cannot be found; "
            "use a manifest written by fastgen manifest with masks.source real"
        )
    kind = (summary.get("mask_source") or {}).get("kind")
    if kind not in (None, "real"):
        logger.warning("real defect images for a manifest of %r masks: rows without a real defect image fail", kind)
    rows = read_manifest(cfg.manifest, cfg.storage)
    rows = rows.filter(pc.is_in(rows.column("sample_id"), value_set=pending.column("sample_id")))
    return defect_image_uris(rows, str(root), summary.get("layout") or "mvtec")


def _painter(
    cfg: SynthesizeConfig,
    model_uri: str,
    info: ModelInfo,
    textures: list[str],
    defect_images: dict[str, str] | None = None,
) -> tuple[type, dict[str, Any]]:
    """(actor class, its constructor kwargs) of stage 2: the FAST model, or the configured baseline generator."""
    c = cfg.compute
    if cfg.generator != "fast":
        return BaselineSynthesizer, {
            "fn_constructor_kwargs": {
                "generator": cfg.generator,
                "image_size": info.image_size,
                "image_channels": info.image_channels,
                "textures": textures,
                "defect_images": defect_images,
                "num_cpus": c.num_cpus,
                "storage_cfg": cfg.storage,
            }
        }
    return FastSynthesizer, {
        "fn_constructor_kwargs": {
            "model_uri": model_uri,
            "sampler": cfg.sampler,
            "num_gpus": c.num_gpus,
            "num_cpus": c.num_cpus,
            "dtype": c.dtype,
            "storage_cfg": cfg.storage,
            "cache_dir": cfg.model_cache_dir,
            "kill_after_batches": cfg.fault.kill_actor_after_batches,
            "fault_marker": storage.join(cfg.out, FAULT_MARKER),
        }
    }


def _build_dataset(
    cfg: SynthesizeConfig,
    model_uri: str,
    info: ModelInfo,
    index: pa.Table,
    pending: pa.Table,
    textures: list[str],
    defect_images: dict[str, str] | None = None,
) -> Any:
    """The lazy Ray Data pipeline over the manifest rows of the pending shards (see the module docstring)."""
    import ray.data

    c = cfg.compute
    rows = index.take(pending.column("row").to_numpy())  # the pending rows, in manifest order
    # One block per actor batch, so that work spreads over the actors and results stream to the writer batch by batch.
    ds = ray.data.from_arrow([rows.slice(lo, c.batch_size) for lo in range(0, rows.num_rows, c.batch_size)])
    cpu_compute = ray.data.TaskPoolStrategy(size=c.cpu_tasks) if c.cpu_tasks else None
    ds = ds.map_batches(
        load_inputs,
        batch_format="pyarrow",
        batch_size=c.batch_size,
        compute=cpu_compute,
        num_cpus=c.task_cpus,
        fn_kwargs={
            "pending": pending,
            "image_size": info.image_size,
            "image_channels": info.image_channels,
            "keys": list(info.keys),
            "storage_cfg": cfg.storage,
            "frame": info.frame if cfg.generator == "fast" else "global",
            "window_margin": info.window_margin,
            "window_zoom": info.window_zoom,
            "defect_images": defect_images if _reference_start(cfg) else None,
        },
    )
    painter, painter_kwargs = _painter(cfg, model_uri, info, textures, defect_images)
    ds = ds.map_batches(
        painter,
        batch_format="numpy",
        batch_size=c.batch_size,
        compute=ray.data.ActorPoolStrategy(size=c.concurrency),
        num_gpus=(c.num_gpus or None) if cfg.generator == "fast" else None,
        num_cpus=c.num_cpus,
        **painter_kwargs,
    )
    return ds.map_batches(
        encode_and_qc,
        batch_format="numpy",
        batch_size=c.batch_size,
        compute=cpu_compute,
        num_cpus=c.task_cpus,
        fn_kwargs={"qc_cfg": cfg.qc},
    )


def job_identity(cfg: SynthesizeConfig, model_uri: str, info: ModelInfo, n_rows: int) -> tuple[dict[str, Any], str]:
    """(content, run_id): what the output bytes depend on, and ``synth-<first 16 hex of its SHA-256>``."""
    content = {**cfg.content(model_uri), "rows": n_rows, "image_size": info.image_size}
    return content, f"synth-{content_hash(content)[:16]}"


def run_synthesis(cfg: SynthesizeConfig) -> SynthesisSummary:
    """Synthesize every manifest row not yet committed under ``cfg.out``, then finish the dataset version.

    Connects to Ray with :func:`pipelines.ray_utils.ensure_ray` when not connected yet. One driver per output URI at
    a time. Returns the summary; raises ``ValueError`` for a bad manifest or config, and the storage error when
    storage fails after its retries (a rerun resumes from the committed shards).
    """
    start = time.perf_counter()
    index = read_manifest_index(cfg.manifest, cfg.storage)
    model_uri, info = _model(cfg, index)
    n_rows = index.num_rows
    n_shards = num_shards(n_rows, cfg.shard_size)
    content, run_id = job_identity(cfg, model_uri, info, n_rows)
    store = ShardStore(
        cfg.out,
        cfg.storage,
        data_schema=DATA_SCHEMA,
        rejected_schema=REJECTED_SCHEMA,
        io_threads=cfg.compute.io_threads,
        fail_after_commits=cfg.fault.fail_writes_after_shards,
    )
    if storage.exists(store.uri(SUCCESS), cfg.storage):
        store.claim({"run_id": run_id, "content": content})
        commits = store.verify(n_shards, index.column("sample_id").to_pylist())
        summary = _summary(cfg, run_id, n_rows, n_shards, commits, skipped=n_shards, written=0, rows_run=0, start=start)
        summary.already_complete = True
        logger.info("%s is already complete (%s exists); nothing to do", cfg.out, SUCCESS)
        return summary
    store.claim({"run_id": run_id, "content": content})
    committed = store.committed()
    pending_shards = [k for k in range(n_shards) if k not in committed]
    logger.info(
        "synthesis %s: %d rows in %d shards of %d; %d already committed, %d to do",
        run_id,
        n_rows,
        n_shards,
        cfg.shard_size,
        len(committed),
        len(pending_shards),
    )
    rows_run = 0
    if pending_shards:
        rows_run = _run_pipeline(cfg, store, model_uri, info, index, pending_shards, n_shards, run_id)
    commits = store.verify(n_shards, index.column("sample_id").to_pylist())
    summary = _summary(
        cfg,
        run_id,
        n_rows,
        n_shards,
        commits,
        skipped=len(committed),
        written=len(pending_shards),
        rows_run=rows_run,
        start=start,
    )
    write_outputs(
        store,
        commits,
        run={
            "run_id": run_id,
            "manifest": cfg.manifest,
            "model_uri": model_uri,
            "sampler": cfg.method,
            "nfe": cfg.sampler.nfe,
            "image_size": info.image_size,
            "provenance": provenance(
                config_sha256=content_hash(content),
                generator=cfg.generator,
                manifest_uri=cfg.manifest,
                model_uri=model_uri,
                storage_cfg=cfg.storage,
            ),
            "last_run": {
                "rows": rows_run,
                "shards_written": len(pending_shards),
                "shards_skipped": len(committed),
                "elapsed_s": round(summary.elapsed_s, 3),
                "pairs_per_s": round(summary.pairs_per_s, 3),
                "actors": cfg.compute.concurrency,
                "batch_size": cfg.compute.batch_size,
            },
        },
        resolved_config=dump_config(cfg),
        preview_count=cfg.preview_pairs,
        storage_cfg=cfg.storage,
    )
    return summary


def _run_pipeline(
    cfg: SynthesizeConfig,
    store: ShardStore,
    model_uri: str,
    info: ModelInfo,
    index: pa.Table,
    pending_shards: list[int],
    n_shards: int,
    run_id: str,
) -> int:
    """Run the Ray Data pipeline over the pending shards and commit each as it completes; returns the rows run."""
    ensure_ray()  # no-op when connected; never lets Ray Data auto-start a bare ray.init()
    c = cfg.compute
    check_cpu_budget(c.concurrency, c.num_cpus, c.task_cpus, "read/encode tasks")
    n_rows = index.num_rows
    rows = np.concatenate(
        [np.arange(k * cfg.shard_size, min((k + 1) * cfg.shard_size, n_rows)) for k in pending_shards]
    )
    pending = pa.table(
        {
            "sample_id": index.column("sample_id").take(pa.array(rows)),
            "row": pa.array(rows, pa.int64()),
            "shard": pa.array(rows // cfg.shard_size, pa.int64()),
        }
    )
    expected = {k: min((k + 1) * cfg.shard_size, n_rows) - k * cfg.shard_size for k in pending_shards}
    textures: list[str] = []
    if cfg.generator == "perlin":
        normals = index.column("image_uri").to_pylist()
        textures = texture_uris(cfg.baseline.texture_dir, normals, cfg.baseline.max_textures)
    defect_images = _defect_images(cfg, pending) if cfg.generator == "realpaste" or _reference_start(cfg) else None
    ds = _build_dataset(cfg, model_uri, info, index, pending, textures, defect_images)
    return commit_stream(
        stream_blocks(ds, "pyarrow"),
        expected,
        store,
        lambda shard_rows: shard_tables(shard_rows, info, cfg, model_uri, run_id),
        run_id=run_id,
        n_shards=n_shards,
        unit="pairs",
    )


def _summary(
    cfg: SynthesizeConfig,
    run_id: str,
    n_rows: int,
    n_shards: int,
    commits: dict[int, Any],
    *,
    skipped: int,
    written: int,
    rows_run: int,
    start: float,
) -> SynthesisSummary:
    elapsed = time.perf_counter() - start
    written_rows, rejected_rows, reasons = commit_totals(commits)
    return SynthesisSummary(
        out=cfg.out,
        run_id=run_id,
        rows=n_rows,
        shards=n_shards,
        shards_skipped=skipped,
        shards_written=written,
        written=written_rows,
        rejected=rejected_rows,
        rejected_by_reason=reasons,
        rows_this_run=rows_run,
        elapsed_s=elapsed,
        pairs_per_s=rows_run / elapsed if elapsed > 0 and rows_run else 0.0,
    )


__all__ = ["STATS", "SUCCESS", "SynthesisSummary", "read_manifest_index", "run_synthesis"]

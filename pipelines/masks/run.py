"""``run_masks``: dataset root → real masks → plan → Ray Data generation → filtered, committed mask shards.

Pipeline::

    ray.data.from_items(real-mask records) → map_batches(load_real_masks)          the plan's sources (driver)
    build_plan (driver, deterministic)                                             sample_id, source, reference, seed
    ray.data.from_arrow(rows of pending shards)
      → map_batches(generate_masks)      CPU tasks: augment / real copies
      → map_batches(MaskSampler)         actor pool, only when sources.diffusion > 0: model loaded once per actor;
                                         a whole-mask sample resized to the row's size, a box/stretch shape placed
                                         at one of its key's real sizes (fast_core.masks.placement)
      → stream_blocks on the driver      buffer rows per shard; a complete shard is filtered in plan order
                                         (filter_shard) and committed through ShardStore

Shard k is plan rows [k·S, (k+1)·S), fixed before the pipeline starts. The filter runs on the driver per complete
shard because its near-duplicate check is stateful: run per shard in plan order, each shard's outcome depends on that
shard alone, so any scheduling and any resume give the same bytes (near duplicates are caught against the key's real
masks and the shard's earlier masks, not across shards). A rerun skips committed shards; a finished output
(``_SUCCESS``) is left as it is. Output layout: :mod:`pipelines.masks.schema`, :mod:`pipelines.masks.outputs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fast_core.configbase import to_dict
from pipelines import storage
from pipelines.config import dump_config
from pipelines.masks.config import MasksConfig
from pipelines.masks.outputs import SUCCESS, write_outputs, write_real_rejected
from pipelines.masks.plan import (
    KeyInputs,
    build_plan,
    collect_inputs,
    foregrounds,
    plan_digest,
    real_rejected_table,
)
from pipelines.masks.schema import DATA_SCHEMA, MASK_STRUCT, REJECTED_SCHEMA, mask_path
from pipelines.masks.stages import Batch, MaskSampler, fetch_mask_model, filter_shard, generate_masks, load_real_masks
from pipelines.ray_utils import ensure_ray, stream_blocks
from pipelines.shards import ShardStore, commit_stream, commit_totals, num_shards

logger = logging.getLogger(__name__)


@dataclass
class MasksSummary:
    """What a mask-stage run did; ``format()`` is the CLI's final summary."""

    out: str
    run_id: str
    rows: int
    shards: int
    shards_skipped: int
    shards_written: int
    written: int
    rejected: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    real_rejected: int = 0
    rows_this_run: int = 0
    elapsed_s: float = 0.0
    masks_per_s: float = 0.0
    already_complete: bool = False

    def format(self) -> str:
        """A few human-readable lines."""
        if self.already_complete:
            return f"{self.out}: already complete (run {self.run_id}): {self.written} masks, {self.rejected} rejected"
        reasons = ", ".join(f"{k}: {v}" for k, v in self.rejected_by_reason.items()) or "none"
        return (
            f"{self.out}: {self.written} masks written, {self.rejected} rejected ({reasons}); "
            f"{self.real_rejected} real masks unusable\n"
            f"shards: {self.shards} ({self.shards_written} this run, {self.shards_skipped} already committed)\n"
            f"this run: {self.rows_this_run} masks in {self.elapsed_s:.1f} s = {self.masks_per_s:.1f} masks/s "
            f"(run {self.run_id})"
        )


def _ray_real_loader(records: list[dict[str, str]]) -> list[Batch]:
    """Check and encode the real masks with Ray Data (one CPU task per block of records)."""
    import ray.data

    if not records:
        return []
    ds = ray.data.from_items(records, override_num_blocks=max(1, min(64, len(records) // 16)))
    ds = ds.map_batches(load_real_masks, batch_format="numpy", batch_size=16)
    return list(ds.iter_batches(batch_size=None, batch_format="numpy"))


def _diffusion_keys(cfg: MasksConfig, inputs: list[KeyInputs]) -> None:
    """Check that the mask model knows every key that draws diffusion rows (before any work)."""
    if cfg.sources.diffusion <= 0 or not cfg.mask_model_uri:
        return
    local = fetch_mask_model(cfg.mask_model_uri, cfg.storage, cfg.model_cache_dir)
    known = set(json.loads((local / "config.json").read_text()).get("keys", []))
    missing = sorted(k.key for k in inputs if k.key not in known)
    if missing:
        raise ValueError(
            f"mask_model_uri = {cfg.mask_model_uri}: the model has no class for {', '.join(missing)}; "
            f"its keys: {', '.join(sorted(known)) or 'none'}"
        )


def job_identity(cfg: MasksConfig, plan: pa.Table) -> tuple[dict[str, Any], str]:
    """(content, run_id): what the output bytes depend on, and ``masks-<first 16 hex of its SHA-256>``."""
    content = {**cfg.content(), "plan_sha256": plan_digest(plan), "rows": plan.num_rows}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return content, f"masks-{digest[:16]}"


def shard_tables(
    rows: pa.Table, run_id: str
) -> tuple[pa.Table, pa.Table, list[tuple[str, bytes]], dict[str, dict[str, int]]]:
    """(data rows, rejected rows, PNG side files, counters) of one filtered shard, rows in plan order."""
    rows = rows.sort_by("row")
    good = pc.equal(rows.column("status"), "")
    ok, bad = rows.filter(good), rows.filter(pc.invert(good))
    cats, defects, ids = (ok.column(c).to_pylist() for c in ("category", "defect_type", "sample_id"))
    paths = [mask_path(c, d, s) for c, d, s in zip(cats, defects, ids, strict=True)]
    pngs = ok.column("mask_png").combine_chunks().cast(pa.binary())
    n = ok.num_rows
    data = pa.table(
        {
            "sample_id": ok.column("sample_id"),
            "category": ok.column("category"),
            "defect_type": ok.column("defect_type"),
            "mask": pa.StructArray.from_arrays([pngs, pa.array(paths, pa.string())], fields=list(MASK_STRUCT)),
            "width": ok.column("width").cast(pa.int32()),
            "height": ok.column("height").cast(pa.int32()),
            "source": ok.column("source"),
            "source_mask": ok.column("source_mask"),
            "seed": ok.column("seed").cast(pa.int64()),
            "mask_area": ok.column("mask_area"),
            "area_fraction": ok.column("area_fraction"),
            "num_components": ok.column("num_components"),
            "bbox_aspect": ok.column("bbox_aspect"),
            "run_id": pa.array([run_id] * n, pa.string()),
        },
        schema=DATA_SCHEMA,
    )
    rejected = pa.table(
        {
            **{c: bad.column(c).cast(pa.string()) for c in ("sample_id", "category", "defect_type", "source")},
            "source_mask": bad.column("source_mask").cast(pa.string()),
            "stage": bad.column("stage").cast(pa.string()),
            "reason": bad.column("status").cast(pa.string()),
            "detail": bad.column("detail").cast(pa.string()),
            "mask_png": bad.column("mask_png").cast(pa.binary()),
        },
        schema=REJECTED_SCHEMA,
    )
    files = list(zip(paths, pngs.to_pylist(), strict=True))
    keys_ok = [f"{c}/{d}" for c, d in zip(cats, defects, strict=True)]
    bad_cats, bad_defects = bad.column("category").to_pylist(), bad.column("defect_type").to_pylist()
    bad_keys = [f"{c}/{d}" for c, d in zip(bad_cats, bad_defects, strict=True)]
    reasons = bad.column("status").to_pylist()
    counts = {
        "written_by_key": dict(Counter(keys_ok)),
        "written_by_source": dict(Counter(ok.column("source").to_pylist())),
        "rejected_by_key": dict(Counter(bad_keys)),
        "rejected_by_source": dict(Counter(bad.column("source").to_pylist())),
        "rejected_by_reason": dict(Counter(reasons)),
        "rejected_by_key_reason": dict(Counter(f"{k}:{r}" for k, r in zip(bad_keys, reasons, strict=True))),
    }
    return data, rejected, files, counts


def _to_arrow(batch: Batch) -> pa.Table:
    """A numpy batch from Ray Data as an Arrow table (bytes columns as binary)."""
    cols = {}
    for name, values in batch.items():
        if name in ("mask_png", "ref_png"):
            cols[name] = pa.array(list(values), pa.binary())
        elif values.dtype == object:
            cols[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        else:
            cols[name] = pa.array(values)
    return pa.table(cols)


def _build_dataset(cfg: MasksConfig, pending: pa.Table) -> Any:
    """The lazy Ray Data pipeline over the pending plan rows."""
    import ray.data

    c = cfg.compute
    blocks = [pending.slice(i, c.batch_size) for i in range(0, pending.num_rows, c.batch_size)]
    ds = ray.data.from_arrow(blocks)
    cpu = ray.data.TaskPoolStrategy(size=c.cpu_tasks) if c.cpu_tasks else None
    ds = ds.map_batches(
        generate_masks,
        batch_format="numpy",
        batch_size=c.batch_size,
        compute=cpu,
        num_cpus=c.task_cpus,
        fn_kwargs={"augment_cfg": cfg.augment},
    )
    if cfg.sources.diffusion > 0:
        ds = ds.map_batches(
            MaskSampler,
            batch_format="numpy",
            batch_size=c.batch_size,
            compute=ray.data.ActorPoolStrategy(size=c.concurrency),
            num_gpus=c.num_gpus or None,
            num_cpus=c.num_cpus,
            fn_constructor_kwargs={
                "model_uri": cfg.mask_model_uri,
                "nfe": cfg.diffusion.nfe,
                "threshold": cfg.diffusion.threshold,
                "num_gpus": c.num_gpus,
                "num_cpus": c.num_cpus,
                "storage_cfg": cfg.storage,
                "cache_dir": cfg.model_cache_dir,
                "jitter": cfg.diffusion.jitter,
                "specks": (cfg.filter.min_component_px, cfg.filter.max_components) if cfg.diffusion.despeckle else None,
            },
        )
    return ds


def run_masks(cfg: MasksConfig) -> MasksSummary:
    """Make, filter and commit every planned mask not yet committed under ``cfg.out``, then finish the mask set.

    Connects to Ray with :func:`pipelines.ray_utils.ensure_ray` when not connected yet. Raises ``ValueError`` for a
    config that does not fit the dataset or the mask model (before anything is written).
    """
    start = time.perf_counter()
    ensure_ray()
    inputs, normals = collect_inputs(cfg, _ray_real_loader)
    _diffusion_keys(cfg, inputs)
    plan = build_plan(inputs, cfg)
    references = {kin.key: kin.references() for kin in inputs}
    fg = foregrounds(inputs, normals) if cfg.foreground else None
    n_rows, n_shards = plan.num_rows, num_shards(plan.num_rows, cfg.shard_size)
    content, run_id = job_identity(cfg, plan)
    store = ShardStore(
        cfg.out,
        cfg.storage,
        data_schema=DATA_SCHEMA,
        rejected_schema=REJECTED_SCHEMA,
        io_threads=cfg.compute.io_threads,
    )
    store.claim({"run_id": run_id, "content": content})
    ids = plan.column("sample_id").to_pylist()
    real_rejected = real_rejected_table(inputs)
    if storage.exists(store.uri(SUCCESS), cfg.storage):
        commits = store.verify(n_shards, ids)
        logger.info("%s is already complete (%s exists); nothing to do", cfg.out, SUCCESS)
        return _summary(cfg, run_id, n_rows, commits, n_shards, 0, 0, start, real_rejected.num_rows, True)
    write_real_rejected(store, real_rejected)
    committed = store.committed()
    pending_shards = [k for k in range(n_shards) if k not in committed]
    logger.info(
        "masks %s: %d masks in %d shards of %d; %d already committed, %d to do",
        run_id,
        n_rows,
        n_shards,
        cfg.shard_size,
        len(committed),
        len(pending_shards),
    )
    rows_run = 0
    if pending_shards:
        rows_run = _run_pipeline(cfg, store, plan, pending_shards, n_shards, run_id, references, fg)
    commits = store.verify(n_shards, ids)
    summary = _summary(
        cfg, run_id, n_rows, commits, n_shards, len(pending_shards), rows_run, start, real_rejected.num_rows, False
    )
    write_outputs(
        store,
        commits,
        references=references,
        real_rejected=real_rejected,
        run={
            "run_id": run_id,
            "dataset_root": content["dataset"]["root"],
            "sources": cfg.sources.weights(),
            "shapes": {kin.key: list(kin.shape) for kin in inputs},
            "last_run": {
                "rows": rows_run,
                "shards_written": len(pending_shards),
                "shards_skipped": len(committed),
                "elapsed_s": round(summary.elapsed_s, 3),
                "masks_per_s": round(summary.masks_per_s, 3),
            },
        },
        resolved_config=dump_config(cfg),
        sheet=to_dict(cfg.contact_sheet),
    )
    return summary


def _run_pipeline(
    cfg: MasksConfig,
    store: ShardStore,
    plan: pa.Table,
    pending_shards: list[int],
    n_shards: int,
    run_id: str,
    references: dict[str, list[np.ndarray]],
    fg: dict[str, np.ndarray] | None,
) -> int:
    """Run the Ray Data pipeline over the pending shards; filter and commit each shard as it completes."""
    shard_col = plan.column("shard").to_numpy()
    pending = plan.filter(pa.array(np.isin(shard_col, pending_shards)))
    expected = {k: int(np.count_nonzero(shard_col == k)) for k in pending_shards}
    batches = stream_blocks(_build_dataset(cfg, pending), "numpy")
    return commit_stream(
        (_to_arrow(batch) for batch in batches),
        expected,
        store,
        lambda rows: shard_tables(filter_shard(rows, cfg.filter, references, fg), run_id),
        run_id=run_id,
        n_shards=n_shards,
        unit="masks",
    )


def _summary(
    cfg: MasksConfig,
    run_id: str,
    n_rows: int,
    commits: dict[int, Any],
    n_shards: int,
    written_shards: int,
    rows_run: int,
    start: float,
    real_rejected: int,
    complete: bool,
) -> MasksSummary:
    elapsed = time.perf_counter() - start
    written_rows, rejected_rows, reasons = commit_totals(commits)
    return MasksSummary(
        out=cfg.out,
        run_id=run_id,
        rows=n_rows,
        shards=n_shards,
        shards_skipped=n_shards - written_shards,
        shards_written=written_shards,
        written=written_rows,
        rejected=rejected_rows,
        rejected_by_reason=reasons,
        real_rejected=real_rejected,
        rows_this_run=rows_run,
        elapsed_s=elapsed,
        masks_per_s=rows_run / elapsed if elapsed > 0 and rows_run else 0.0,
        already_complete=complete,
    )

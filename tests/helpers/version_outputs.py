"""Finish a version made by :func:`tests.helpers.synthetic_versions.make_synthetic_version` the way a synthesis run
does: shard markers built from its data parts, optional rejected rows, and
:func:`pipelines.synthesize.outputs.write_outputs` (stats, contact sheet, dataset card, report, ``_SUCCESS``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.shards import ShardCommit, ShardStore
from pipelines.storage import StorageConfig
from pipelines.synthesize.outputs import write_outputs
from pipelines.synthesize.provenance import provenance
from pipelines.synthesize.schema import DATA_SCHEMA, REJECTED_SCHEMA

MODEL_INFO = {"image_size": 32, "image_channels": 3, "keys": ["widget/crack"], "preset": "tiny", "run_id": "train-1"}


def write_rejected(root: Path, shard: int, rows: Sequence[Mapping[str, str]]) -> list[str]:
    """``rejected/part-<shard>.parquet`` with ``rows`` (sample_id, category, defect_type, stage, reason, detail)."""
    path = root / "rejected" / f"part-{shard:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows), schema=REJECTED_SCHEMA), path)
    return [r["sample_id"] for r in rows]


def shard_commits(
    root: Path, rejected: Mapping[int, Sequence[Mapping[str, str]]] | None = None
) -> dict[int, ShardCommit]:
    """The markers a synthesis run would have written for the local version ``root`` (rejected rows are written)."""
    rejected = rejected or {}
    commits = {}
    for k, part in enumerate(sorted((root / "data").glob("part-*.parquet"))):
        table = pq.read_table(part, columns=["sample_id", "category", "defect_type"])
        cats, defects = table.column("category").to_pylist(), table.column("defect_type").to_pylist()
        bad = rejected.get(k, ())
        commits[k] = ShardCommit(
            shard=k,
            sample_ids=table.column("sample_id").to_pylist(),
            rejected_ids=write_rejected(root, k, bad) if bad else [],
            files={},
            run_id="synth-test",
            counts={
                "written_by_key": dict(Counter(f"{c}/{d}" for c, d in zip(cats, defects, strict=True))),
                "rejected_by_reason": dict(Counter(r["reason"] for r in bad)),
            },
        )
    return commits


def write_model_and_manifest(folder: Path, job_seed: int = 7) -> tuple[str, str]:
    """A ``model.json`` and a ``manifest.json`` (only what provenance reads) under ``folder``; (model, manifest)."""
    model, manifest = folder / "model", folder / "manifest"
    model.mkdir(parents=True, exist_ok=True)
    manifest.mkdir(parents=True, exist_ok=True)
    (model / "model.json").write_text(json.dumps(MODEL_INFO, indent=2) + "\n")
    summary = {"job_seed": job_seed, "created_by": {"config_sha256": "ab" * 32}, "dataset_root": "/data"}
    (manifest / "manifest.json").write_text(json.dumps(summary) + "\n")
    return str(model), str(manifest)


def finish_version(
    uri: str,
    commits: Mapping[int, ShardCommit],
    model_uri: str,
    manifest_uri: str,
    *,
    preview_pairs: int = 2,
    storage_cfg: StorageConfig | None = None,
) -> dict[str, Any]:
    """``write_outputs`` on the version at ``uri`` (local or ``s3://``) with a run like run_synthesis's; the stats."""
    store = ShardStore(uri, storage_cfg, data_schema=DATA_SCHEMA, rejected_schema=REJECTED_SCHEMA)
    run = {
        "run_id": "synth-0123456789abcdef",
        "manifest": manifest_uri,
        "model_uri": model_uri,
        "sampler": "aias",
        "nfe": 10,
        "image_size": 32,
        "provenance": provenance(
            config_sha256="0123456789abcdef" * 4,
            generator="fast",
            manifest_uri=manifest_uri,
            model_uri=model_uri,
            storage_cfg=None,
        ),
    }
    return write_outputs(
        store, commits, run=run, resolved_config="shard_size: 3\n", preview_count=preview_pairs, storage_cfg=storage_cfg
    )

"""Test manifests written with pyarrow in the manifest contract's schema, without running ``fastgen manifest``.

:func:`pair_rows` pairs the ``train/good`` images of a dummy MVTec dataset with its ground-truth masks round-robin;
rows can then be edited (to inject bad rows) and written with :func:`write_manifest_rows`, which also writes the
``manifest.json`` that marks a manifest complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.manifest import MANIFEST_FILE, MANIFEST_SCHEMA, SUMMARY_FILE, row_seed, sample_id_for, table_to_parquet
from pipelines.storage import StorageConfig, join, write_bytes_atomic


def pair_rows(
    dataset_root: str | Path,
    model_uri: str,
    counts: dict[tuple[str, str], int],
    job_seed: int = 0,
    embed_png: bool = False,
) -> list[dict[str, Any]]:
    """Manifest rows: for each (category, defect) ``count`` rows pairing good images and masks round-robin."""
    root = Path(dataset_root).resolve()
    rows = []
    for (cat, defect), n in counts.items():
        images = sorted((root / cat / "train" / "good").glob("*.png"))
        masks = sorted((root / cat / "ground_truth" / defect).glob("*_mask.png"))
        for i in range(n):
            sid = sample_id_for(cat, defect, i)
            mask = masks[i % len(masks)]
            rows.append(
                {
                    "sample_id": sid,
                    "category": cat,
                    "defect_type": defect,
                    "image_uri": str(images[i % len(images)]),
                    "mask_uri": None if embed_png else str(mask),
                    "mask_png": mask.read_bytes() if embed_png else None,
                    "mask_source": f"real:{mask.stem}",
                    "prompt": f"{cat}/{defect}",
                    "seed": row_seed(job_seed, sid),
                    "model_uri": model_uri,
                }
            )
    return rows


def write_manifest_rows(uri: str, rows: list[dict[str, Any]], storage: StorageConfig | None = None) -> str:
    """Write ``rows`` as ``<uri>/manifest.parquet`` plus a minimal ``manifest.json``; returns ``uri``."""
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    write_bytes_atomic(join(uri, MANIFEST_FILE), table_to_parquet(table), storage)
    summary = {"rows": table.num_rows, "created_by": {"command": "tests.helpers.manifests"}}
    write_bytes_atomic(join(uri, SUMMARY_FILE), (json.dumps(summary) + "\n").encode(), storage)
    return uri

"""What goes on a version's contact sheet, read from its committed shards (the drawing is :mod:`.sheet`).

Selection, fixed so that one version always shows the same pairs: per defect key ``<category>/<defect>`` the first
``per_key`` pairs in sample order (shard order, then row order inside a shard). Only the shards that hold those pairs
are read: a shard marker's ``written_by_key`` counter says which keys a shard holds (a marker without it is read).
Each pair's normal image is read from the row's ``source_image`` URI (local or ``s3://``); one that cannot be read or
decoded is shown as a placeholder and counted in :attr:`SheetInput.unreadable_normals`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from fast_core.data.transforms import decode_png
from pipelines import storage
from pipelines.shards import ShardCommit, ShardStore
from pipelines.storage import StorageConfig
from pipelines.synthesize.sheet import SheetGroup, SheetPair

logger = logging.getLogger(__name__)

COLUMNS = ["sample_id", "category", "defect_type", "image", "mask", "source_image"]


@dataclass
class SheetInput:
    """The groups to draw and the source normal images that could not be read (URIs, sorted)."""

    groups: list[SheetGroup]
    unreadable_normals: list[str] = field(default_factory=list)


def key_totals(commits: Mapping[int, ShardCommit]) -> dict[str, int]:
    """Pairs written per defect key over every shard marker, keys sorted."""
    totals: dict[str, int] = {}
    for commit in commits.values():
        for key, n in commit.counts.get("written_by_key", {}).items():
            totals[key] = totals.get(key, 0) + n
    return dict(sorted(totals.items()))


def shards_to_read(commits: Mapping[int, ShardCommit], per_key: int) -> list[int]:
    """The shards, ascending, that hold the first ``per_key`` pairs of every key (plus any without a key counter)."""
    needed: dict[str, int] = {}
    out = []
    for k in sorted(commits):
        commit = commits[k]
        if not commit.sample_ids:
            continue
        counts = commit.counts.get("written_by_key")
        if counts is None or any(needed.get(key, 0) < per_key for key in counts):
            out.append(k)
        for key, n in (counts or {}).items():
            needed[key] = needed.get(key, 0) + n
    return out


def read_normal(uri: str, storage_cfg: StorageConfig | None) -> np.ndarray | None:
    """The normal image at ``uri`` as uint8 RGB, or None (logged) when it cannot be read or decoded."""
    try:
        return decode_png(storage.read_bytes(uri, storage_cfg), "RGB")
    except (OSError, ValueError) as exc:
        logger.warning("contact sheet: normal image %s is unreadable (%s); a placeholder is drawn", uri, exc)
        return None


def sheet_input(
    store: ShardStore, commits: Mapping[int, ShardCommit], per_key: int, storage_cfg: StorageConfig | None
) -> SheetInput:
    """The first ``per_key`` pairs of every defect key, decoded, with their normal images (see the module)."""
    if per_key < 1:
        raise ValueError(f"per_key = {per_key} must be >= 1")
    totals = key_totals(commits)
    pairs: dict[str, list[SheetPair]] = {}
    normals: dict[str, np.ndarray | None] = {}
    for k in shards_to_read(commits, per_key):
        data = storage.read_bytes(store.uri(store.data_path(k)), store.storage)
        for row in pq.read_table(io.BytesIO(data), columns=COLUMNS).to_pylist():
            key = f"{row['category']}/{row['defect_type']}"
            shown = pairs.setdefault(key, [])
            if len(shown) >= per_key:
                continue
            source = row["source_image"]
            if source not in normals:
                normals[source] = read_normal(source, storage_cfg) if source else None
            shown.append(
                SheetPair(
                    sample_id=row["sample_id"],
                    image=decode_png(row["image"]["bytes"]),
                    mask=decode_png(row["mask"]["bytes"], "L"),
                    normal=normals[source],
                )
            )
    groups = [
        SheetGroup(key=key, total=totals.get(key, len(shown)), pairs=tuple(shown))
        for key, shown in sorted(pairs.items())
    ]
    unreadable = sorted(uri or "(no source_image)" for uri, image in normals.items() if image is None)
    return SheetInput(groups=groups, unreadable_normals=unreadable)

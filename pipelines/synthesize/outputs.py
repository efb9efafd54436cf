"""The dataset-level files of a synthesis output, written once every shard is committed.

``stats.json`` (counts, rejections by reason, throughput, versions), ``config.resolved.yaml``, ``preview.png`` (a
contact sheet: each tile is the synthesized image next to the same image with its mask overlaid in red), and
``_SUCCESS``, always last: a reader that sees ``_SUCCESS`` sees a complete dataset version.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from fast_core.data.transforms import decode_png, encode_png
from pipelines import storage
from pipelines.shards import ShardCommit, ShardStore
from pipelines.storage import StorageConfig

logger = logging.getLogger(__name__)

STATS = "stats.json"
PREVIEW = "preview.png"
SUCCESS = "_SUCCESS"
OVERLAY_ALPHA = 0.5  # overlay = (1 − α) · image + α · red inside the mask
PREVIEW_COLUMNS = 4  # pairs per contact-sheet row
PREVIEW_PAD = 2  # pixels between tiles


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide the output bytes."""
    out = {}
    for name in ("fastgen", "torch", "diffusers", "ray", "pyarrow", "pillow", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def sum_counts(commits: Mapping[int, ShardCommit], name: str) -> dict[str, int]:
    """Sum the counter ``name`` over every shard marker."""
    total: Counter[str] = Counter()
    for commit in commits.values():
        total.update(commit.counts.get(name, {}))
    return dict(sorted(total.items()))


def build_stats(commits: Mapping[int, ShardCommit], run: Mapping[str, Any]) -> dict[str, Any]:
    """``stats.json`` content: totals from every marker (all attempts) plus ``run`` (this attempt's numbers)."""
    written = sum(len(c.sample_ids) for c in commits.values())
    rejected = sum(len(c.rejected_ids) for c in commits.values())
    return {
        "rows": written + rejected,
        "written": written,
        "rejected": rejected,
        "rejected_by_reason": sum_counts(commits, "rejected_by_reason"),
        "written_by_key": sum_counts(commits, "written_by_key"),
        "shards": len(commits),
        **run,
        "versions": versions(),
    }


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): ``image`` with mask pixels blended towards red, (1 − α)·x + α·(255, 0, 0)."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    out = rgb.astype(np.float32)
    sel = mask > 0
    out[sel] = (1.0 - OVERLAY_ALPHA) * out[sel] + OVERLAY_ALPHA * np.array([255.0, 0.0, 0.0], np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def contact_sheet(pairs: Sequence[tuple[np.ndarray, np.ndarray]], columns: int = PREVIEW_COLUMNS) -> np.ndarray:
    """A grid of tiles ``[image | overlay]``, ``columns`` pairs per row, on black; RGB uint8.

    >>> sheet = contact_sheet([(np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8))] * 3, columns=2)
    >>> sheet.shape
    (14, 26, 3)
    """
    if not pairs:
        raise ValueError("contact_sheet needs at least one pair")
    h, w = pairs[0][0].shape[:2]
    cols = min(columns, len(pairs))
    rows = -(-len(pairs) // cols)
    tile_w = 2 * w + PREVIEW_PAD
    sheet = np.zeros((rows * (h + PREVIEW_PAD) + PREVIEW_PAD, cols * (tile_w + PREVIEW_PAD) + PREVIEW_PAD, 3), np.uint8)
    for i, (image, mask) in enumerate(pairs):
        r, c = divmod(i, cols)
        y = PREVIEW_PAD + r * (h + PREVIEW_PAD)
        x = PREVIEW_PAD + c * (tile_w + PREVIEW_PAD)
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        sheet[y : y + h, x : x + w] = rgb
        sheet[y : y + h, x + w + PREVIEW_PAD : x + 2 * w + PREVIEW_PAD] = overlay(image, mask)
    return sheet


def preview_pairs(store: ShardStore, commits: Mapping[int, ShardCommit], count: int) -> list[tuple[np.ndarray, ...]]:
    """The first ``count`` pairs of the dataset in shard order, decoded from the data parts."""
    pairs: list[tuple[np.ndarray, ...]] = []
    for k in sorted(commits):
        if len(pairs) >= count:
            break
        if not commits[k].sample_ids:
            continue
        data = storage.read_bytes(store.uri(store.data_path(k)), store.storage)
        table = pq.read_table(io.BytesIO(data), columns=["image", "mask"])
        for image, mask in zip(table.column("image").to_pylist(), table.column("mask").to_pylist(), strict=True):
            pairs.append((decode_png(image["bytes"]), decode_png(mask["bytes"], "L")))
            if len(pairs) >= count:
                break
    return pairs


def write_outputs(
    store: ShardStore,
    commits: Mapping[int, ShardCommit],
    *,
    run: Mapping[str, Any],
    resolved_config: str,
    preview_count: int,
    storage_cfg: StorageConfig | None,
) -> dict[str, Any]:
    """Write ``stats.json``, ``config.resolved.yaml``, ``preview.png`` (when there are pairs), then ``_SUCCESS``."""
    stats = build_stats(commits, run)
    storage.write_text_atomic(store.uri(STATS), json.dumps(stats, indent=2, sort_keys=True) + "\n", storage_cfg)
    storage.write_text_atomic(store.uri("config.resolved.yaml"), resolved_config, storage_cfg)
    pairs = preview_pairs(store, commits, preview_count) if preview_count else []
    if pairs:
        storage.write_bytes_atomic(store.uri(PREVIEW), encode_png(contact_sheet(pairs)), storage_cfg)
    success = {"run_id": run.get("run_id"), "written": stats["written"], "rejected": stats["rejected"]}
    storage.write_text_atomic(store.uri(SUCCESS), json.dumps(success, sort_keys=True) + "\n", storage_cfg)
    logger.info("wrote %s, %s, %s and %s", STATS, "config.resolved.yaml", PREVIEW if pairs else "(no preview)", SUCCESS)
    return stats

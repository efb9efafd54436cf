"""The set-level files of a mask-stage output, written once every shard is committed.

``stats.json``: counts per source / defect key / rejection reason, area-fraction, component-count and
bounding-box-aspect histograms (:func:`fast_core.masks.histogram_summary`) of the accepted masks, and per key the
fidelity of the accepted masks to the key's real training masks (:func:`fast_core.masks.compare_mask_sets`: 1-D
Wasserstein distances of those statistics and of compactness, and how many masks are near-copies of a real one, next
to the same figure among the real masks), over all sources (``fidelity``) and per source (``fidelity_by_source``:
augmented and diffusion-sampled masks side by side); ``config.resolved.yaml``; ``contact_sheet.png`` (one row of
accepted masks per key, then a row of rejected masks, each labelled by its reason); ``_SUCCESS`` last.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from fast_core.data.png import encode_png
from fast_core.masks import compare_mask_sets, histogram_summary
from pipelines import storage
from pipelines.masks.schema import REAL_REJECTED_FILE
from pipelines.masks.stages import decode_mask
from pipelines.shards import ShardCommit, ShardStore
from pipelines.synthesize.outputs import sum_counts, versions

logger = logging.getLogger(__name__)

STATS = "stats.json"
CONTACT_SHEET = "contact_sheet.png"
SUCCESS = "_SUCCESS"
RESOLVED = "config.resolved.yaml"
LABEL_H = 14  # pixels of the text line above each contact-sheet row / under each rejected tile
PAD = 4


def read_parts(store: ShardStore, commits: Mapping[int, ShardCommit], rejected: bool) -> pa.Table | None:
    """Every committed data part (or rejected part) concatenated in shard order; None when there is none."""
    tables = []
    for k in sorted(commits):
        if rejected and not commits[k].rejected_ids:
            continue
        path = store.rejected_path(k) if rejected else store.data_path(k)
        tables.append(pq.read_table(io.BytesIO(storage.read_bytes(store.uri(path), store.storage))))
    return pa.concat_tables(tables) if tables else None


def build_stats(
    data: pa.Table | None,
    commits: Mapping[int, ShardCommit],
    references: Mapping[str, Sequence[np.ndarray]],
    real_rejected: pa.Table,
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """``stats.json`` content (see the module docstring); totals from every marker, ``run`` this attempt's numbers."""
    written = sum(len(c.sample_ids) for c in commits.values())
    rejected = sum(len(c.rejected_ids) for c in commits.values())
    by_key: dict[str, list[np.ndarray]] = defaultdict(list)
    by_source: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    hist: dict[str, Any] = {}
    if data is not None and data.num_rows:
        cats, defects = data.column("category").to_pylist(), data.column("defect_type").to_pylist()
        sources, masks = data.column("source").to_pylist(), data.column("mask").to_pylist()
        for cat, defect, source, m in zip(cats, defects, sources, masks, strict=True):
            mask = decode_mask(m["bytes"])
            by_key[f"{cat}/{defect}"].append(mask)
            by_source[source][f"{cat}/{defect}"].append(mask)
        for name in ("area_fraction", "num_components", "bbox_aspect"):
            values = np.array(data.column(name).to_pylist(), dtype=np.float64)
            hist[name] = histogram_summary(values)
    fidelity = _fidelity(by_key, references)
    fidelity_by_source = {source: _fidelity(keys, references) for source, keys in sorted(by_source.items())}
    real_reasons = Counter(real_rejected.column("reason").to_pylist())
    return {
        "rows": written + rejected,
        "written": written,
        "rejected": rejected,
        "written_by_source": sum_counts(commits, "written_by_source"),
        "rejected_by_source": sum_counts(commits, "rejected_by_source"),
        "written_by_key": sum_counts(commits, "written_by_key"),
        "rejected_by_key": sum_counts(commits, "rejected_by_key"),
        "rejected_by_reason": sum_counts(commits, "rejected_by_reason"),
        "rejected_by_key_reason": sum_counts(commits, "rejected_by_key_reason"),
        "real_masks": {
            "used_by_key": {key: len(refs) for key, refs in sorted(references.items())},
            "rejected": real_rejected.num_rows,
            "rejected_by_reason": dict(sorted(real_reasons.items())),
        },
        "histograms": hist,
        "fidelity": fidelity,
        "fidelity_by_source": fidelity_by_source,
        "shards": len(commits),
        **run,
        "versions": versions(),
    }


def _fidelity(
    by_key: Mapping[str, Sequence[np.ndarray]], references: Mapping[str, Sequence[np.ndarray]]
) -> dict[str, Any]:
    """Per key with real masks: :func:`fast_core.masks.compare_mask_sets` of the key's accepted masks against them."""
    return {
        key: compare_mask_sets(by_key[key], refs) if by_key.get(key) else {"n_generated": 0}
        for key, refs in sorted(references.items())
    }


def _tile(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask (white on dark grey, so the image frame shows) fitted into a ``size``² tile keeping its aspect ratio,
    letterboxed in near-black; uint8 (size, size)."""
    h, w = mask.shape
    scale = size / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    im = Image.fromarray(np.where(mask, 255, 56).astype(np.uint8)).resize((tw, th), Image.NEAREST)
    tile = np.full((size, size), 16, np.uint8)
    y, x = (size - th) // 2, (size - tw) // 2
    tile[y : y + th, x : x + tw] = np.asarray(im)
    return tile


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]], tile: int = 96, columns: int | None = None
) -> np.ndarray:
    """A grey uint8 image: per row its label, then its masks as tiles, each with an optional caption below.

    >>> m = np.zeros((10, 20), bool); m[2:5, 3:9] = True
    >>> contact_sheet([("a/b", [(m, ""), (m, "empty")])], tile=32).shape
    (68, 76)
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    cols = columns or max(1, max(len(items) for _, items in rows))
    row_h = LABEL_H + tile + LABEL_H + PAD
    sheet = Image.new("L", (PAD + cols * (tile + PAD), PAD + len(rows) * row_h), 0)
    draw = ImageDraw.Draw(sheet)
    for r, (label, items) in enumerate(rows):
        y = PAD + r * row_h
        draw.text((PAD, y), label, fill=255)
        for c, (mask, caption) in enumerate(items[:cols]):
            x = PAD + c * (tile + PAD)
            sheet.paste(Image.fromarray(_tile(mask, tile)), (x, y + LABEL_H))
            if caption:
                draw.text((x, y + LABEL_H + tile + 1), caption[: max(4, tile // 6)], fill=200)
    return np.asarray(sheet)


def sheet_rows(
    data: pa.Table | None, rejected: pa.Table | None, keys: Sequence[str], per_key: int, n_rejected: int
) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    """Contact-sheet rows: the first ``per_key`` accepted masks of each key, then the first rejected masks."""
    out: list[tuple[str, list[tuple[np.ndarray, str]]]] = []
    if data is not None and per_key:
        found: dict[str, list[tuple[np.ndarray, str]]] = defaultdict(list)
        cats, defects = data.column("category").to_pylist(), data.column("defect_type").to_pylist()
        sources = data.column("source").to_pylist()
        for cat, defect, src, m in zip(cats, defects, sources, data.column("mask").to_pylist(), strict=True):
            items = found[f"{cat}/{defect}"]
            if len(items) < per_key:
                items.append((decode_mask(m["bytes"]), src))
        out.extend((f"{key} (accepted)", found[key]) for key in keys if found.get(key))
    if rejected is not None and n_rejected:
        items = []
        pngs, reasons = rejected.column("mask_png").to_pylist(), rejected.column("reason").to_pylist()
        for png, reason in zip(pngs, reasons, strict=True):
            if png is not None and len(items) < n_rejected:
                items.append((decode_mask(png), reason))
        if items:
            out.append(("rejected (reason)", items))
    return out


def write_outputs(
    store: ShardStore,
    commits: Mapping[int, ShardCommit],
    *,
    references: Mapping[str, Sequence[np.ndarray]],
    real_rejected: pa.Table,
    run: Mapping[str, Any],
    resolved_config: str,
    sheet: Mapping[str, int],
) -> dict[str, Any]:
    """Write ``stats.json``, ``config.resolved.yaml``, ``contact_sheet.png`` (when there are masks), then
    ``_SUCCESS``. ``sheet``: ``per_key``, ``rejected``, ``tile`` of the contact sheet."""
    data = read_parts(store, commits, rejected=False)
    rejected = read_parts(store, commits, rejected=True)
    stats = build_stats(data, commits, references, real_rejected, run)
    storage.write_text_atomic(store.uri(STATS), json.dumps(stats, indent=2, sort_keys=True) + "\n", store.storage)
    storage.write_text_atomic(store.uri(RESOLVED), resolved_config, store.storage)
    rows = sheet_rows(data, rejected, sorted(references), sheet["per_key"], sheet["rejected"])
    if rows and sheet["per_key"]:
        png = encode_png(contact_sheet(rows, tile=sheet["tile"]))
        storage.write_bytes_atomic(store.uri(CONTACT_SHEET), png, store.storage)
    success = {"run_id": run.get("run_id"), "written": stats["written"], "rejected": stats["rejected"]}
    storage.write_text_atomic(store.uri(SUCCESS), json.dumps(success, sort_keys=True) + "\n", store.storage)
    logger.info("wrote %s, %s, %s and %s", STATS, RESOLVED, CONTACT_SHEET if rows else "(no contact sheet)", SUCCESS)
    return stats


def write_real_rejected(store: ShardStore, table: pa.Table) -> None:
    """``rejected/real-masks.parquet`` (deterministic bytes), when any real mask was rejected."""
    if table.num_rows:
        from pipelines.shards import parquet_bytes

        storage.write_bytes_atomic(store.uri(REAL_REJECTED_FILE), parquet_bytes(table), store.storage)

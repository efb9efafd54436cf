"""The dataset-level files of a synthesis output, written once every shard is committed.

In this order: ``stats.json`` (counts, rejections by reason, throughput, versions, provenance),
``config.resolved.yaml``, ``preview.png`` (the contact sheet: per defect type the first ``preview_pairs`` pairs as
normal | synthesized | mask outline tiles, :mod:`.sheet`; only when there is a pair and ``preview_pairs`` > 0),
``README.md`` (the Hugging Face dataset card, :mod:`.card`), ``report.html`` (the card, the stats and the contact
sheet as one static page, :mod:`.report`), and ``_SUCCESS``, always last: a reader that sees ``_SUCCESS`` sees a
complete dataset version, card included. Every file goes through :mod:`pipelines.storage` (local or ``s3://``).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from fast_core.data.transforms import encode_png
from pipelines import storage
from pipelines.shards import ShardCommit, ShardStore
from pipelines.storage import StorageConfig
from pipelines.synthesize.card import CARD, CardFacts, card_markdown, version_title
from pipelines.synthesize.preview import SheetInput, sheet_input
from pipelines.synthesize.report import REPORT, report_html
from pipelines.synthesize.sheet import render_sheet

logger = logging.getLogger(__name__)

STATS = "stats.json"
PREVIEW = "preview.png"
SUCCESS = "_SUCCESS"


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


def rejected_by_key(store: ShardStore, commits: Mapping[int, ShardCommit]) -> dict[str, int]:
    """Rejected rows per ``<category>/<defect>``, read from the rejected parts of the shards that have any."""
    total: Counter[str] = Counter()
    for k in sorted(commits):
        if not commits[k].rejected_ids:
            continue
        data = storage.read_bytes(store.uri(store.rejected_path(k)), store.storage)
        table = pq.read_table(io.BytesIO(data), columns=["category", "defect_type"])
        cats, defects = table.column("category").to_pylist(), table.column("defect_type").to_pylist()
        total.update(f"{c}/{d}" for c, d in zip(cats, defects, strict=True))
    return dict(sorted(total.items()))


def write_preview(
    store: ShardStore, commits: Mapping[int, ShardCommit], per_key: int, title: str, storage_cfg: StorageConfig | None
) -> SheetInput | None:
    """Draw and write ``preview.png`` (:mod:`.sheet`, pairs chosen by :mod:`.preview`); None when it has no pair."""
    chosen = sheet_input(store, commits, per_key, storage_cfg)
    if not any(g.pairs for g in chosen.groups):
        return None
    sheet = render_sheet(chosen.groups, title)
    storage.write_bytes_atomic(store.uri(PREVIEW), encode_png(sheet.pixels), storage_cfg)
    return chosen


def write_outputs(
    store: ShardStore,
    commits: Mapping[int, ShardCommit],
    *,
    run: Mapping[str, Any],
    resolved_config: str,
    preview_count: int,
    storage_cfg: StorageConfig | None,
) -> dict[str, Any]:
    """Write the dataset-level files of the module docstring, ``_SUCCESS`` last; returns the stats.

    ``preview_count`` is the pairs per defect type on the contact sheet (0: no sheet).
    """
    stats = build_stats(commits, run)
    storage.write_text_atomic(store.uri(STATS), json.dumps(stats, indent=2, sort_keys=True) + "\n", storage_cfg)
    storage.write_text_atomic(store.uri("config.resolved.yaml"), resolved_config, storage_cfg)
    title = version_title(store.root)
    chosen = write_preview(store, commits, preview_count, title, storage_cfg) if preview_count else None
    facts = CardFacts(
        title=title,
        stats=stats,
        data_bytes=sum(storage.sizes(store.uri("data", "part-*.parquet"), storage_cfg).values()),
        rejected_by_key=rejected_by_key(store, commits),
        preview=PREVIEW if chosen else None,
        preview_per_key=preview_count,
        unreadable_normals=chosen.unreadable_normals if chosen else (),
    )
    storage.write_text_atomic(store.uri(CARD), card_markdown(facts), storage_cfg)
    storage.write_text_atomic(store.uri(REPORT), report_html(facts), storage_cfg)
    success = {"run_id": run.get("run_id"), "written": stats["written"], "rejected": stats["rejected"]}
    storage.write_text_atomic(store.uri(SUCCESS), json.dumps(success, sort_keys=True) + "\n", storage_cfg)
    logger.info(
        "wrote %s, config.resolved.yaml, %s, %s, %s and %s",
        STATS,
        PREVIEW if chosen else "(no preview)",
        CARD,
        REPORT,
        SUCCESS,
    )
    return stats

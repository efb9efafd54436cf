"""Dataset inspection: read a local dataset folder, validate every file, and write the report as JSON on request.

Glue around :func:`fast_core.data.layout.read_dataset` and :func:`fast_core.data.validate.validate_dataset`; the
report itself (counts, ⌊n/3⌋ split sizes, modes, size ranges, problems) is built and formatted in fast_core.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fast_core.configbase import check_choices
from fast_core.data.layout import Layout, read_dataset
from fast_core.data.validate import Report, validate_dataset

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class InspectConfig:
    """What ``fastgen inspect`` checks."""

    root: str  # local dataset folder: one category folder (train/ + test/) or a folder of them
    layout: Layout = "mvtec"  # folder layout: "mvtec" (<stem>_mask.png) or "btad" (train/ok, test/ok|ko)
    categories: tuple[str, ...] | None = None  # only these categories (default: every category found)
    binarize_threshold: int | None = None  # accept soft masks, binarized at value >= N (1..255); None: must be 0/255

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.root:
            raise ValueError("InspectConfig.root is empty; give a dataset folder")
        if "://" in self.root:
            raise ValueError(f"InspectConfig.root = {self.root!r}: inspect reads local folders only; copy it first")
        if self.binarize_threshold is not None and not 1 <= self.binarize_threshold <= 255:
            raise ValueError(f"InspectConfig.binarize_threshold = {self.binarize_threshold} must be in 1..255")


def inspect_dataset(cfg: InspectConfig) -> Report:
    """Read and validate the dataset ``cfg.root``; every file is decoded once. Returns the full report."""
    start = time.perf_counter()
    index = read_dataset(cfg.root, cfg.layout, cfg.categories)
    report = validate_dataset(index, cfg.binarize_threshold)
    logger.info(
        "inspected %s: %d images in %d categories in %.1f s",
        cfg.root,
        len(index.records),
        len(index.categories),
        time.perf_counter() - start,
    )
    return report


def write_report_json(report: Report, path: str | Path) -> Path:
    """Write ``report.to_dict()`` as indented JSON to the local file ``path`` (parent folders are created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return out

"""Dataset layer: layout readers (MVTec, BTAD), the ⌊n/3⌋ evaluation split, validation, and procedural datasets.

Everything here works on local paths with pathlib, Pillow and numpy; object storage is handled in ``pipelines``.
"""

from __future__ import annotations

from fast_core.data.layout import (
    GOOD,
    IMAGE_EXTENSIONS,
    DatasetIndex,
    ImageRecord,
    Layout,
    LayoutIssue,
    Split,
    find_categories,
    load_image,
    load_mask,
    read_btad,
    read_dataset,
    read_mvtec,
    split_anomalies,
)
from fast_core.data.validate import Problem, ProblemKind, Report, validate_dataset

__all__ = [
    "GOOD",
    "IMAGE_EXTENSIONS",
    "DatasetIndex",
    "ImageRecord",
    "Layout",
    "LayoutIssue",
    "Problem",
    "ProblemKind",
    "Report",
    "Split",
    "find_categories",
    "load_image",
    "load_mask",
    "read_btad",
    "read_dataset",
    "read_mvtec",
    "split_anomalies",
    "validate_dataset",
]

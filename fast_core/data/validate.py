"""Dataset validation: decode every image and mask, collect every problem in one pass, and summarise the dataset.

:func:`validate_dataset` never stops at the first problem. It fully decodes each file with Pillow (``load()``, so a
truncated PNG is caught), checks each anomaly image's mask (present, same size, strictly 0/255, not empty) and turns
the reader's layout issues (stray masks, unexpected files) into problems. The :class:`Report` keeps image counts,
modes and size ranges per (category, split, defect type), the ⌊n/3⌋ generator/test split sizes of FAST_SPEC §8, and
the problems; :meth:`Report.format` renders a table plus one line per problem that names the file.

Severity: every problem is an ``"error"`` except unexpected paths and, when a ``binarize_threshold`` is given,
non-binary masks (they will be binarised at that threshold), which are ``"warning"``. ``Report.ok`` is True when
there is no error.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from fast_core.data.layout import DatasetIndex, ImageRecord, split_anomalies

logger = logging.getLogger(__name__)

ProblemKind = Literal[
    "unreadable",  # the file cannot be opened or fully decoded (e.g. a truncated PNG)
    "missing_mask",  # an anomaly image without a ground-truth mask
    "size_mismatch",  # mask size differs from its image size
    "mask_not_binary",  # mask values other than 0 and 255
    "empty_mask",  # an anomaly image whose mask marks no pixel
    "stray_mask",  # a mask with no image
    "unusual_mode",  # image mode other than L/RGB, or mask mode other than L/1
    "duplicate_stem",  # two images of one folder share a stem (their masks would collide)
    "unexpected_path",  # a file or folder the layout has no place for
]
Severity = Literal["error", "warning"]
#: Every problem kind, in the order of :data:`ProblemKind`.
PROBLEM_KINDS: tuple[str, ...] = get_args(ProblemKind)

#: Image modes the pipeline reads as they are.
IMAGE_MODES: tuple[str, ...] = ("L", "RGB")
#: Mask modes accepted as they are.
MASK_MODES: tuple[str, ...] = ("L", "1")

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Problem:
    """One problem with one file: ``path``, ``kind`` (a :data:`ProblemKind`), a message and a severity."""

    path: Path
    kind: ProblemKind
    message: str
    severity: Severity = "error"

    def format(self) -> str:
        """One line: ``ERROR   kind            path: message``."""
        return f"{self.severity.upper():<7} {self.kind:<15} {self.path}: {self.message}"


@dataclass
class GroupStats:
    """Counts and image properties of one (category, split, defect type) group.

    ``gen_train``/``test`` are the FAST_SPEC §8 split sizes: for anomaly groups ⌊n/3⌋ and n − ⌊n/3⌋, for test/good
    0 and n, for train/good 0 and 0.
    """

    images: int = 0
    masks: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    width: tuple[int, int] | None = None  # (min, max) over the decodable images
    height: tuple[int, int] | None = None
    gen_train: int = 0
    test: int = 0


GroupKey = tuple[str, str, str]  # (category, split, defect_type)


@dataclass
class Report:
    """The result of :func:`validate_dataset`: per-group statistics and every problem found."""

    groups: dict[GroupKey, GroupStats]
    problems: list[Problem]
    root: str | None = None
    layout: str | None = None
    binarize_threshold: int | None = None

    @property
    def counts(self) -> dict[GroupKey, int]:
        """Number of images per (category, split, defect type)."""
        return {k: g.images for k, g in self.groups.items()}

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity ``"error"``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The problems of severity ``"warning"``."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when no problem is an error."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: groups as a list of rows, problems as a list of dicts."""
        rows = []
        for (category, split, defect), g in self.groups.items():
            rows.append(
                {
                    "category": category,
                    "split": split,
                    "defect_type": defect,
                    "images": g.images,
                    "masks": g.masks,
                    "modes": dict(g.modes),
                    "width": list(g.width) if g.width else None,
                    "height": list(g.height) if g.height else None,
                    "gen_train": g.gen_train,
                    "test": g.test,
                }
            )
        problems = [
            {"path": str(p.path), "kind": p.kind, "severity": p.severity, "message": p.message} for p in self.problems
        ]
        return {
            "root": self.root,
            "layout": self.layout,
            "binarize_threshold": self.binarize_threshold,
            "ok": self.ok,
            "groups": rows,
            "problems": problems,
        }

    def format(self) -> str:
        """A human-readable table of the groups, the split rule, and one line per problem (each naming its file)."""
        n_images = sum(g.images for g in self.groups.values())
        n_masks = sum(g.masks for g in self.groups.values())
        categories = sorted({k[0] for k in self.groups})
        where = f"{self.root} ({self.layout} layout)" if self.root else "dataset"
        lines = [
            f"{where}: {len(categories)} categor{'y' if len(categories) == 1 else 'ies'}, "
            f"{n_images} images, {n_masks} masks"
        ]
        header = ("category", "split", "defect", "images", "masks", "gen-train", "test", "modes", "width", "height")
        table = [header]
        for (category, split, defect), g in self.groups.items():
            is_anomaly = split == "test" and defect != "good"
            table.append(
                (
                    category,
                    split,
                    defect,
                    str(g.images),
                    str(g.masks) if is_anomaly else "-",
                    str(g.gen_train) if is_anomaly else "-",
                    str(g.test) if split == "test" else "-",
                    " ".join(f"{m}:{n}" for m, n in sorted(g.modes.items())) or "-",
                    _range(g.width),
                    _range(g.height),
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        numeric = {3, 4, 5, 6}
        for row in table:
            cells = [
                c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        lines.append("gen-train: the first floor(n/3) anomaly images (by name) per defect; test: the rest + test/good")
        if not self.problems:
            lines.append("problems: none")
        else:
            lines.append(f"problems: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
            lines.extend(p.format() for p in self.problems)
        return "\n".join(lines)


def _range(r: tuple[int, int] | None) -> str:
    if r is None:
        return "-"
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def _extend(r: tuple[int, int] | None, v: int) -> tuple[int, int]:
    return (v, v) if r is None else (min(r[0], v), max(r[1], v))


def _decode(path: Path) -> tuple[Image.Image | None, str | None]:
    """Open and fully decode ``path``; returns (image, None) or (None, the decoder's complaint)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy(), None
    except _DECODE_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _check_mask(
    record: ImageRecord, path: Path, image_size: tuple[int, int] | None, threshold: int | None
) -> list[Problem]:
    """Problems with the mask ``path`` of the anomaly ``record``."""
    mask, error = _decode(path)
    if mask is None:
        return [Problem(path, "unreadable", f"cannot decode mask: {error}")]
    problems = []
    if mask.mode not in MASK_MODES:
        problems.append(
            Problem(path, "unusual_mode", f"mask mode {mask.mode}; expected one of {', '.join(MASK_MODES)}")
        )
    if image_size is not None and mask.size != image_size:
        problems.append(
            Problem(
                path,
                "size_mismatch",
                f"mask is {mask.size[0]}x{mask.size[1]}, image "
                f"{record.image_path.name} is {image_size[0]}x{image_size[1]} (width x height)",
            )
        )
    try:
        grey = np.asarray(mask.convert("L"), dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        return [*problems, Problem(path, "unreadable", f"cannot convert mask mode {mask.mode} to L: {exc}")]
    values = np.unique(grey)
    other = values[(values != 0) & (values != 255)]
    if other.size:
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if values.size > 8 else "")
        msg = f"mask is not binary: {values.size} distinct values ({shown}), expected only 0 and 255"
        if threshold is None:
            problems.append(Problem(path, "mask_not_binary", msg + "; pass a binarize threshold to accept it"))
        else:
            problems.append(
                Problem(path, "mask_not_binary", msg + f"; will be binarized at >= {threshold}", severity="warning")
            )
    foreground = grey >= threshold if threshold is not None else grey > 0
    if not foreground.any():
        rule = f"no value >= {threshold}" if threshold is not None else "all zero"
        problems.append(
            Problem(path, "empty_mask", f"mask of anomaly image {record.image_path.name} is empty ({rule})")
        )
    return problems


def validate_dataset(dataset: DatasetIndex | Sequence[ImageRecord], binarize_threshold: int | None = None) -> Report:
    """Decode every image and mask of ``dataset`` and collect every problem (never stopping at the first).

    Args:
        dataset: a :class:`DatasetIndex` (its layout issues, e.g. stray masks, are reported too) or plain records
            (then only the files the records name are checked).
        binarize_threshold: if set (1..255), non-binary masks are warnings, to be binarized at ``value >= threshold``;
            if None they are errors. Emptiness is judged at the same threshold (or ``value > 0`` when None).

    Returns:
        A :class:`Report`; ``report.ok`` is False when any error was found.
    """
    if binarize_threshold is not None and not 1 <= binarize_threshold <= 255:
        raise ValueError(f"binarize_threshold = {binarize_threshold} must be in 1..255 (or None)")
    index = dataset if isinstance(dataset, DatasetIndex) else None
    records = list(index.records if index is not None else dataset)
    problems: list[Problem] = []
    groups: dict[GroupKey, GroupStats] = defaultdict(GroupStats)
    modes: dict[GroupKey, Counter[str]] = defaultdict(Counter)
    seen_stems: dict[tuple[Path, str], Path] = {}

    for record in records:
        key = (record.category, record.split, record.defect_type)
        g = groups[key]
        g.images += 1
        stem_key = (record.image_path.parent, record.stem)
        if stem_key in seen_stems:
            problems.append(
                Problem(
                    record.image_path,
                    "duplicate_stem",
                    f"same stem as {seen_stems[stem_key].name}; masks are matched by stem, so keep one of them",
                )
            )
        else:
            seen_stems[stem_key] = record.image_path

        image, error = _decode(record.image_path)
        size = None
        if image is None:
            problems.append(Problem(record.image_path, "unreadable", f"cannot decode image: {error}"))
        else:
            size = image.size
            modes[key][image.mode] += 1
            g.width = _extend(g.width, size[0])
            g.height = _extend(g.height, size[1])
            if image.mode not in IMAGE_MODES:
                problems.append(
                    Problem(
                        record.image_path,
                        "unusual_mode",
                        f"image mode {image.mode}; expected one of {', '.join(IMAGE_MODES)}",
                    )
                )
        if not record.is_anomaly:
            continue
        if record.mask_path is None:
            problems.append(Problem(record.image_path, "missing_mask", "anomaly image has no ground-truth mask"))
            continue
        g.masks += 1
        problems.extend(_check_mask(record, record.mask_path, size, binarize_threshold))

    if index is not None:
        for issue in index.issues:
            severity: Severity = "warning" if issue.kind == "unexpected_path" else "error"
            problems.append(Problem(issue.path, issue.kind, issue.message, severity=severity))

    split = split_anomalies(records)
    for r in split.gen_train:
        groups[(r.category, r.split, r.defect_type)].gen_train += 1
    for r in (*split.test_anomalies, *split.test_good):
        groups[(r.category, r.split, r.defect_type)].test += 1
    for key, counter in modes.items():
        groups[key].modes = dict(sorted(counter.items()))

    order = sorted(groups, key=lambda k: (k[0], k[1] != "train", k[1], k[2] != "good", k[2]))
    problems.sort(key=lambda p: (str(p.path), p.kind))
    report = Report(
        groups={k: groups[k] for k in order},
        problems=problems,
        root=str(index.root) if index is not None else None,
        layout=index.layout if index is not None else None,
        binarize_threshold=binarize_threshold,
    )
    logger.info(
        "validated %d images: %d error(s), %d warning(s)", len(records), len(report.errors), len(report.warnings)
    )
    return report

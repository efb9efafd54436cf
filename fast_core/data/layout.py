"""Dataset-layout readers: MVTec-AD and BTAD folders → typed, sorted image records, the ⌊n/3⌋ split, pixel loaders.

A dataset root is either one category folder (it has ``train/`` and ``test/``) or a folder of such category folders.
MVTec layout::

    <cat>/train/good/*.png   <cat>/test/good/*.png   <cat>/test/<defect>/*.png
    <cat>/ground_truth/<defect>/<stem>_mask.png

BTAD layout (``ok`` is read as the normal class ``"good"``)::

    <cat>/train/ok/*   <cat>/test/ok/*   <cat>/test/ko/*   <cat>/ground_truth/ko/<stem>.png|bmp

Readers never open image files (that is :mod:`fast_core.data.validate`'s job); they only list folders, pair images
with masks by stem and note what does not fit the layout (stray masks, unexpected files) as :class:`LayoutIssue`.
Every list is sorted, so the same folder always gives the same records in the same order. Pure pathlib + Pillow +
numpy; local paths only.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

Layout = Literal["mvtec", "btad"]
SplitName = Literal["train", "test"]
LayoutIssueKind = Literal["stray_mask", "unexpected_path"]

#: File name endings read as images (compared lower-case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: The defect type of normal (defect-free) images, whatever the layout calls them.
GOOD = "good"

# Folder names of each layout: the normal class and the mask-name suffix after the image stem.
_NORMAL_FOLDER: dict[str, str] = {"mvtec": "good", "btad": "ok"}
_MASK_SUFFIX: dict[str, str] = {"mvtec": "_mask", "btad": ""}
_CATEGORY_ENTRIES = ("train", "test", "ground_truth")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    Attributes:
        category: category folder name, e.g. ``"magnetic_tile"``.
        split: ``"train"`` or ``"test"`` (the folder it sits in).
        defect_type: ``"good"`` for normal images, else the defect folder name (e.g. ``"crack"``).
        image_path: path of the image file.
        mask_path: path of its ground-truth mask, or None (normal images, or an anomaly whose mask is missing).
    """

    category: str
    split: SplitName
    defect_type: str
    image_path: Path
    mask_path: Path | None = None

    @property
    def is_anomaly(self) -> bool:
        """True for defect images (``defect_type != "good"``)."""
        return self.defect_type != GOOD

    @property
    def stem(self) -> str:
        """The image file name without its extension."""
        return self.image_path.stem


@dataclass(frozen=True)
class LayoutIssue:
    """A path that does not fit the layout: a mask without an image, or a file/folder the layout has no place for."""

    path: Path
    kind: LayoutIssueKind
    message: str


@dataclass(frozen=True)
class DatasetIndex:
    """Everything a reader found under a dataset root.

    Attributes:
        root: the root as given.
        layout: ``"mvtec"`` or ``"btad"``.
        categories: category names, sorted.
        records: every image, sorted by (category, split, defect_type, file name).
        issues: stray masks and unexpected paths, sorted by path.
    """

    root: Path
    layout: Layout
    categories: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    issues: tuple[LayoutIssue, ...] = ()


@dataclass(frozen=True)
class Split:
    """The evaluation split of FAST_SPEC §8.

    For each (category, defect type) the anomaly images sorted by file name are cut at ⌊n/3⌋: the first ⌊n/3⌋ train
    the generator (``gen_train``), the other n − ⌊n/3⌋ (``test_anomalies``) plus every ``test/good`` image
    (``test_good``) form the segmentation test set. ``train_good`` are the normal images synthesis paints on.
    """

    gen_train: tuple[ImageRecord, ...]
    test_anomalies: tuple[ImageRecord, ...]
    test_good: tuple[ImageRecord, ...]
    train_good: tuple[ImageRecord, ...]


def is_image_file(path: Path) -> bool:
    """True when ``path`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_category_dir(path: Path) -> bool:
    """True when ``path`` is a category folder, i.e. has both ``train/`` and ``test/`` sub-folders."""
    return (path / "train").is_dir() and (path / "test").is_dir()


def _sorted_entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda p: p.name)


def find_categories(root: str | Path, categories: Iterable[str] | None = None) -> list[Path]:
    """The category folders under ``root`` (or ``[root]`` when it is a category itself), sorted by name.

    Args:
        root: a category folder or a folder of category folders.
        categories: keep only these names; an unknown name is a ``ValueError`` that lists the known ones.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no category folder found, or an unknown name in ``categories``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found or not a folder: {root}")
    is_category = is_category_dir(root)
    found = [root] if is_category else [p for p in _sorted_entries(root) if p.is_dir() and is_category_dir(p)]
    if not found:
        raise ValueError(
            f"{root}: no category folder found (a category folder has train/ and test/ sub-folders); "
            "pass a category folder or a folder of them"
        )
    if categories is None:
        return found
    wanted = list(categories)
    by_name = {p.name: p for p in found}
    unknown = [c for c in wanted if c not in by_name]
    if unknown:
        raise ValueError(
            f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
            f"found: {', '.join(sorted(by_name))}"
        )
    return [by_name[c] for c in sorted(set(wanted))]


def _list_images(folder: Path, issues: list[LayoutIssue]) -> list[Path]:
    """Image files of ``folder`` (sorted); any other entry is an ``unexpected_path`` issue."""
    images = []
    for p in _sorted_entries(folder):
        if p.is_file() and is_image_file(p):
            images.append(p)
        else:
            what = "folder" if p.is_dir() else "file"
            issues.append(
                LayoutIssue(p, "unexpected_path", f"{what} that is not an image ({folder.name}/ holds images)")
            )
    return images


def _read_category(cat_dir: Path, layout: Layout, issues: list[LayoutIssue]) -> list[ImageRecord]:
    """Records of one category folder; stray masks and unexpected entries go to ``issues``."""
    normal = _NORMAL_FOLDER[layout]
    suffix = _MASK_SUFFIX[layout]
    category = cat_dir.name
    records: list[ImageRecord] = []
    for entry in _sorted_entries(cat_dir):
        if entry.name not in _CATEGORY_ENTRIES or not entry.is_dir():
            issues.append(LayoutIssue(entry, "unexpected_path", f"not part of the {layout} layout of a category"))

    # Ground-truth masks, keyed by (defect folder, image stem).
    masks: dict[tuple[str, str], Path] = {}
    gt_dir = cat_dir / "ground_truth"
    if gt_dir.is_dir():
        for defect_dir in _sorted_entries(gt_dir):
            if not defect_dir.is_dir():
                issues.append(LayoutIssue(defect_dir, "unexpected_path", "ground_truth/ holds one folder per defect"))
                continue
            for mask in _list_images(defect_dir, issues):
                stem = mask.stem
                if suffix and not stem.endswith(suffix):
                    issues.append(
                        LayoutIssue(mask, "unexpected_path", f"mask name does not end in '{suffix}' + extension")
                    )
                    continue
                key = (defect_dir.name, stem[: len(stem) - len(suffix)] if suffix else stem)
                if key in masks:
                    issues.append(
                        LayoutIssue(mask, "unexpected_path", f"second mask for image stem {key[1]!r} ({masks[key]})")
                    )
                    continue
                masks[key] = mask

    used: set[tuple[str, str]] = set()
    for split in get_args(SplitName):
        split_dir = cat_dir / split
        if not split_dir.is_dir():
            continue
        for defect_dir in _sorted_entries(split_dir):
            if not defect_dir.is_dir():
                issues.append(LayoutIssue(defect_dir, "unexpected_path", f"{split}/ holds one folder per class"))
                continue
            if split == "train" and defect_dir.name != normal:
                issues.append(
                    LayoutIssue(defect_dir, "unexpected_path", f"train/ holds only normal images ({normal}/)")
                )
                continue
            defect_type = GOOD if defect_dir.name == normal else defect_dir.name
            for image in _list_images(defect_dir, issues):
                mask = None
                if defect_type != GOOD:
                    key = (defect_dir.name, image.stem)
                    mask = masks.get(key)
                    if mask is not None:
                        used.add(key)
                records.append(ImageRecord(category, split, defect_type, image, mask))

    for key, mask in sorted(masks.items(), key=lambda kv: kv[1]):
        if key not in used:
            issues.append(LayoutIssue(mask, "stray_mask", f"mask without an image (no test/{key[0]}/{key[1]}.<ext>)"))
    return records


def read_dataset(root: str | Path, layout: Layout = "mvtec", categories: Iterable[str] | None = None) -> DatasetIndex:
    """List a dataset in the MVTec or BTAD layout.

    Args:
        root: a category folder or a folder of category folders.
        layout: ``"mvtec"`` or ``"btad"``.
        categories: keep only these categories (default: all).

    Returns:
        A :class:`DatasetIndex` with sorted records and the layout issues found.

    >>> read_dataset("/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: dataset root not found or not a folder: /no/such/folder
    """
    if layout not in get_args(Layout):
        raise ValueError(f"layout = {layout!r} is not one of: {', '.join(map(repr, get_args(Layout)))}")
    cat_dirs = find_categories(root, categories)
    issues: list[LayoutIssue] = []
    records: list[ImageRecord] = []
    for cat_dir in cat_dirs:
        records.extend(_read_category(cat_dir, layout, issues))
    records.sort(key=lambda r: (r.category, r.split, r.defect_type, r.image_path.name))
    issues.sort(key=lambda i: (str(i.path), i.kind))
    logger.debug("%s: %d categories, %d images, %d layout issues", root, len(cat_dirs), len(records), len(issues))
    return DatasetIndex(Path(root), layout, tuple(p.name for p in cat_dirs), tuple(records), tuple(issues))


def read_mvtec(root: str | Path, categories: Iterable[str] | None = None) -> list[ImageRecord]:
    """The sorted image records of an MVTec-layout dataset (see :func:`read_dataset` for the issues too)."""
    return list(read_dataset(root, "mvtec", categories).records)


def read_btad(root: str | Path, categories: Iterable[str] | None = None) -> list[ImageRecord]:
    """The sorted image records of a BTAD-layout dataset (``ok`` → ``"good"``, masks ``ground_truth/ko/<stem>.*``)."""
    return list(read_dataset(root, "btad", categories).records)


def split_anomalies(records: Sequence[ImageRecord]) -> Split:
    """Split as FAST_SPEC §8 does: per (category, defect type) the first ⌊n/3⌋ anomaly images train the generator.

    Anomaly images are those in ``test/`` with a defect type other than ``"good"``, sorted by file name within each
    (category, defect type); the input order does not matter.

    >>> recs = [ImageRecord("c", "test", "crack", Path(f"c/test/crack/{i}.png")) for i in range(7)]
    >>> s = split_anomalies(recs)
    >>> [r.stem for r in s.gen_train], len(s.test_anomalies)
    (['0', '1'], 5)
    """
    groups: dict[tuple[str, str], list[ImageRecord]] = defaultdict(list)
    test_good: list[ImageRecord] = []
    train_good: list[ImageRecord] = []
    for r in records:
        if r.split == "test" and r.is_anomaly:
            groups[(r.category, r.defect_type)].append(r)
        elif r.split == "test":
            test_good.append(r)
        elif not r.is_anomaly:
            train_good.append(r)
    gen_train: list[ImageRecord] = []
    test_anomalies: list[ImageRecord] = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda r: (r.image_path.name, str(r.image_path)))
        n_gen = len(group) // 3
        gen_train.extend(group[:n_gen])
        test_anomalies.extend(group[n_gen:])

    def by_path(rs: list[ImageRecord]) -> tuple[ImageRecord, ...]:
        return tuple(sorted(rs, key=lambda r: (r.category, r.defect_type, r.image_path.name, str(r.image_path))))

    return Split(tuple(gen_train), tuple(test_anomalies), by_path(test_good), by_path(train_good))


# Modes returned as they are; others need an explicit target mode.
_NATIVE_MODES = ("L", "RGB")
#: Modes whose conversion to 8 bits would clip values silently (16/32-bit integer, float): refused, never converted.
WIDE_MODES: tuple[str, ...] = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# What Pillow raises for a file it cannot decode (not an image, truncated, corrupt; UnidentifiedImageError is OSError).
_UNDECODABLE = (OSError, SyntaxError, EOFError)


@contextlib.contextmanager
def _decoding(path: str | Path, what: str) -> Iterator[None]:
    """Turn Pillow's errors for an undecodable file into one ``ValueError`` that names ``path``.

    A header that claims more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's ``DecompressionBombError``,
    raised by ``Image.open`` from the header alone) is refused before any pixel is decoded. A missing file stays a
    ``FileNotFoundError``.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: {what} refused before decoding: {exc}") from exc
    except _UNDECODABLE as exc:
        raise ValueError(f"{path}: cannot decode {what} ({type(exc).__name__}: {exc})") from exc


def load_image(path: str | Path, mode: Literal["L", "RGB"] | None = None) -> np.ndarray:
    """Decode an image to a uint8 array: (H, W) for ``"L"``, (H, W, 3) for ``"RGB"``.

    Args:
        path: image file.
        mode: convert to this mode; None keeps the file's own mode, which must then be ``"L"``, ``"1"`` or ``"RGB"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown ``mode``, a 16-bit/float image (8-bit conversion would clip it), a file mode that
            needs an explicit ``mode`` (e.g. RGBA, P), or a file that cannot be decoded (truncated, not an image, a
            header claiming too many pixels); the message names ``path``.
    """
    if mode not in (None, *_NATIVE_MODES):
        raise ValueError(f"mode = {mode!r} is not one of: None, 'L', 'RGB'")
    with _decoding(path, "image"), Image.open(path) as im:
        if im.mode in WIDE_MODES:
            raise ValueError(f"{path}: image mode {im.mode} is not 8-bit; convert the dataset to 8-bit L or RGB")
        if mode is None:
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode not in _NATIVE_MODES:
                raise ValueError(f"{path}: image mode {im.mode} needs an explicit mode='L' or mode='RGB'")
            return np.asarray(im, dtype=np.uint8).copy()
        return np.asarray(im.convert(mode), dtype=np.uint8).copy()


def load_mask(path: str | Path, threshold: int = 128) -> np.ndarray:
    """Decode a mask to a bool (H, W) array, True = anomaly: grey value (after conversion to ``"L"``) ≥ ``threshold``.

    A 0/255 mask gives the same result for any threshold in 1..255. Whether a mask is strictly binary is checked by
    :func:`fast_core.data.validate.validate_dataset`, not here. Errors are those of :func:`load_image`.
    """
    if not 1 <= threshold <= 255:
        raise ValueError(f"threshold = {threshold} must be in 1..255")
    with _decoding(path, "mask"), Image.open(path) as im:
        if im.mode in WIDE_MODES:
            raise ValueError(f"{path}: mask mode {im.mode} is not 8-bit; save masks as 8-bit L (0/255)")
        grey = np.asarray(im.convert("L"), dtype=np.uint8)
    return grey >= threshold

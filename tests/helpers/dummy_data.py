"""Tiny real-layout datasets for tests (MVTec and BTAD), and helpers that corrupt them in known ways.

Images are seeded random noise; masks are 0/255 rectangles, never empty. Sizes are given as (height, width).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image


def _image_size(size: tuple[int, int], index: int, vary_size: bool) -> tuple[int, int]:
    """(height, width) of image ``index``: ``size`` or, with ``vary_size``, a few pixels larger."""
    h, w = size
    return (h + 4 * (index % 3), w + 2 * (index % 4)) if vary_size else (h, w)


def write_image(path: Path, size: tuple[int, int], mode: str, rng: np.random.Generator) -> Path:
    """Write a random uint8 image of (height, width) ``size`` in ``mode`` ("L" or "RGB") as ``path``."""
    h, w = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int], rng: np.random.Generator) -> Path:
    """Write a 0/255 mask of (height, width) ``size`` holding one non-empty rectangle of 255."""
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[y0 : y0 + int(rng.integers(2, h // 2)), x0 : x0 + int(rng.integers(2, w // 2))] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def make_dummy_mvtec(
    root: str | Path,
    categories: Sequence[str] = ("widget",),
    n_good: int = 4,
    n_test_good: int = 2,
    defects: Mapping[str, int] | None = None,
    size: tuple[int, int] = (32, 40),
    mode: Literal["L", "RGB"] = "L",
    seed: int = 0,
    vary_size: bool = False,
) -> Path:
    """Write ``<root>/<cat>/{train/good,test/good,test/<defect>,ground_truth/<defect>}`` and return ``root``.

    Files are ``NNN.png`` and masks ``NNN_mask.png``; ``defects`` maps a defect type to its image count
    (default ``{"scratch": 3}``).
    """
    root = Path(root)
    defects = {"scratch": 3} if defects is None else defects
    rng = np.random.default_rng(seed)
    for cat in categories:
        for split, n in (("train", n_good), ("test", n_test_good)):
            for i in range(n):
                write_image(root / cat / split / "good" / f"{i:03d}.png", _image_size(size, i, vary_size), mode, rng)
        for defect, n in defects.items():
            for i in range(n):
                s = _image_size(size, i, vary_size)
                write_image(root / cat / "test" / defect / f"{i:03d}.png", s, mode, rng)
                write_mask(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png", s, rng)
    return root


def make_dummy_btad(
    root: str | Path,
    categories: Sequence[str] = ("01",),
    n_good: int = 4,
    n_test_good: int = 2,
    n_defect: int = 3,
    size: tuple[int, int] = (32, 40),
    mode: Literal["L", "RGB"] = "RGB",
    seed: int = 0,
    image_ext: str = ".bmp",
    mask_ext: str = ".png",
) -> Path:
    """Write a BTAD-layout dataset: ``train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko/<stem><mask_ext>``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for cat in categories:
        for split, n in (("train", n_good), ("test", n_test_good)):
            for i in range(n):
                write_image(root / cat / split / "ok" / f"{i:04d}{image_ext}", size, mode, rng)
        for i in range(n_defect):
            write_image(root / cat / "test" / "ko" / f"{i:04d}{image_ext}", size, mode, rng)
            write_mask(root / cat / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", size, rng)
    return root


# --- corruption helpers -------------------------------------------------------------------------------------------


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Keep only the first ``keep`` fraction of the file's bytes (a truncated PNG still opens, but cannot decode)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def resize_mask(path: Path, size: tuple[int, int]) -> Path:
    """Rewrite a mask at (height, width) ``size`` (nearest neighbour), so it no longer matches its image."""
    with Image.open(path) as im:
        im.resize((size[1], size[0]), Image.NEAREST).save(path)
    return path


def delete_mask(path: Path) -> Path:
    """Remove a mask file; returns its former path."""
    path.unlink()
    return path


def add_stray_mask(category_dir: Path, defect: str, stem: str, size: tuple[int, int] = (32, 40)) -> Path:
    """Write ``ground_truth/<defect>/<stem>_mask.png`` for an image that does not exist."""
    return write_mask(category_dir / "ground_truth" / defect / f"{stem}_mask.png", size, np.random.default_rng(1))


def write_non_binary_mask(path: Path, low: int = 0, high: int = 200) -> Path:
    """Rewrite a mask with a horizontal ramp of grey values from ``low`` to ``high`` (same size)."""
    with Image.open(path) as im:
        w, h = im.size
    ramp = np.linspace(low, high, w).round().astype(np.uint8)
    Image.fromarray(np.tile(ramp, (h, 1))).save(path)
    return path


def write_empty_mask(path: Path) -> Path:
    """Rewrite a mask as all zeros (same size)."""
    with Image.open(path) as im:
        w, h = im.size
    Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
    return path


def convert_mode(path: Path, mode: str = "RGBA") -> Path:
    """Rewrite an image in another Pillow mode (e.g. "RGBA", "P", "I;16")."""
    with Image.open(path) as im:
        im.load()
        converted = im.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(im.convert("L")).astype("<u2"))
    converted.save(path)
    return path

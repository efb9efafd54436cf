"""Procedural industrial-surface datasets with exact defect masks, written in the MVTec layout (for demos and tests).

Three surface categories and three defect types, all drawn from a numpy ``Generator`` seeded per file, so the same
seed gives byte-identical PNGs whatever the counts of other files:

- ``brushed_metal`` (mode L): anisotropic streaks (noise blurred along x) + a broad diagonal sheen + fine grain.
- ``woven_fabric`` (mode RGB): plain weave; warp threads on top where (column + row) is even, weft elsewhere, each
  thread shaded like a cylinder, with per-thread tone variation and a gentle low-frequency wobble.
- ``grid`` (mode L): a slightly rotated lattice of bright round wires over a dark plate, alternating over/under.

Defects are painted by alpha compositing, ``x ← (1 − A) x + A c``, with an alpha map A that is 0 outside the defect
and at least 0.25 inside; the mask is exactly ``A > 0`` (the pixels that were painted):

- ``scratch``: a thin quadratic Bézier line, bright or dark.
- ``hole``: a dark irregular blob, darker at its centre, with a raised bright rim (the rim is part of the mask).
- ``stain``: a soft-edged blotch (brown tint on colour, darkening on grey) with a darker drying ring at its edge.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

logger = logging.getLogger(__name__)

CategoryName = Literal["brushed_metal", "woven_fabric", "grid"]
DefectName = Literal["scratch", "hole", "stain"]

#: The image mode written for each category.
CATEGORY_MODES: dict[str, Literal["L", "RGB"]] = {"brushed_metal": "L", "woven_fabric": "RGB", "grid": "L"}
#: The defect types, in the order they are generated.
DEFECTS: tuple[str, ...] = get_args(DefectName)
#: Smallest image side for which the defects stay recognisable.
MIN_SIZE = 32
#: Name of the file in the dataset root that records how it was made.
MARKER_NAME = "procedural.json"


@dataclass(kw_only=True)
class ProceduralConfig:
    """What :func:`make_procedural_dataset` makes (the seed is passed separately)."""

    categories: tuple[CategoryName, ...] = ("brushed_metal", "woven_fabric", "grid")  # surface kinds, one folder each
    defects: tuple[DefectName, ...] = ("scratch", "hole", "stain")  # test/<defect> folders of every category
    n_train_good: int = 24  # normal images per category in train/good
    n_test_good: int = 6  # normal images per category in test/good
    n_per_defect: int = 6  # anomaly images (and masks) per category and defect type
    size: int = 128  # square image side in pixels (>= 32)

    def __post_init__(self) -> None:
        _check_names("categories", self.categories, get_args(CategoryName))
        _check_names("defects", self.defects, get_args(DefectName))
        for name in ("n_train_good", "n_test_good", "n_per_defect"):
            if getattr(self, name) < 0:
                raise ValueError(f"ProceduralConfig.{name} = {getattr(self, name)} must be >= 0")
        if self.size < MIN_SIZE:
            raise ValueError(f"ProceduralConfig.size = {self.size} must be >= {MIN_SIZE}")


def _check_names(field: str, names: Sequence[str], valid: tuple[str, ...]) -> None:
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ValueError(
            f"ProceduralConfig.{field} = {tuple(names)!r}: "
            f"{'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; valid: {', '.join(map(repr, valid))}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"ProceduralConfig.{field} = {tuple(names)!r} lists a name twice")


def file_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator for one file, from the run seed and the file's keys (CRC32 of strings, so stable across runs).

    >>> float(file_rng(0, "grid", "train", 3).random()) == float(file_rng(0, "grid", "train", 3).random())
    True
    """
    if seed < 0:
        raise ValueError(f"seed = {seed} must be >= 0")
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _normalised_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]
) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation (wrap-around borders)."""
    n = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return n / (n.std() + 1e-12)


def _brushed_metal(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size  # (S, S) in [0, 1)
    streaks = _normalised_noise(rng, (size, size), (rng.uniform(0.4, 0.9), size * rng.uniform(0.1, 0.25)))
    grain = _normalised_noise(rng, (size, size), 0.6)
    angle = rng.uniform(-0.9, 0.9)
    d = x * np.cos(angle) + y * np.sin(angle) - rng.uniform(0.2, 1.0)
    sheen = np.exp(-((d / rng.uniform(0.15, 0.35)) ** 2))
    img = rng.uniform(0.42, 0.6) + 0.045 * streaks + 0.012 * grain + 0.2 * sheen - 0.06 * y
    return img.astype(np.float32)


# Fabric base colours (RGB in [0, 1]): navy, khaki, burgundy, bottle green, beige, slate.
_FABRIC_COLOURS = np.array(
    [
        [0.18, 0.24, 0.42],
        [0.52, 0.47, 0.32],
        [0.50, 0.14, 0.17],
        [0.20, 0.38, 0.26],
        [0.72, 0.66, 0.54],
        [0.36, 0.40, 0.45],
    ]
)


def _woven_fabric(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(6.0, 9.0) * size / 128
    wobble = 0.12 * period
    u = (x + wobble * _normalised_noise(rng, (size, size), size / 8)) / period  # warp coordinate
    v = (y + wobble * _normalised_noise(rng, (size, size), size / 8)) / period  # weft coordinate
    cu, cv = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - cu, v - cv
    warp_on_top = (cu + cv) % 2 == 0
    # Cylinder shading across each thread, a slight bulge along it; 0 in the gaps between threads.
    shade = np.where(
        warp_on_top,
        np.sin(np.pi * fu) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fv)),
        np.sin(np.pi * fv) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fu)),
    )
    n_threads = size // 2 + 4
    warp_tone = 1.0 + rng.normal(0.0, 0.05, n_threads)[cu % n_threads]
    weft_tone = 1.0 + rng.normal(0.0, 0.05, n_threads)[cv % n_threads]
    base = _FABRIC_COLOURS[rng.integers(len(_FABRIC_COLOURS))] * rng.uniform(0.85, 1.15)
    warp_colour = base * 1.08
    weft_colour = base * 0.82 + rng.uniform(-0.04, 0.04, 3)
    tone = np.where(warp_on_top, warp_tone, weft_tone)[..., None]
    colour = np.where(warp_on_top[..., None], warp_colour, weft_colour) * tone  # (S, S, 3)
    fibre = 0.025 * np.where(
        warp_on_top,
        _normalised_noise(rng, (size, size), (1.5, 0.3)),
        _normalised_noise(rng, (size, size), (0.3, 1.5)),
    )
    img = colour * (0.3 + 0.7 * shade[..., None]) + fibre[..., None]
    return img.astype(np.float32)


def _grid(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(11.0, 15.0) * size / 128
    half_width = rng.uniform(0.16, 0.24) * period
    theta = rng.uniform(-0.08, 0.08)
    jitter = 0.08 * period * _normalised_noise(rng, (size, size), size / 6)
    xr = x * np.cos(theta) - y * np.sin(theta) + rng.uniform(0, period) + jitter
    yr = x * np.sin(theta) + y * np.cos(theta) + rng.uniform(0, period) - jitter
    cu, cv = np.floor(xr / period).astype(int), np.floor(yr / period).astype(int)
    du = np.abs(xr - (cu + 0.5) * period) / half_width  # 0 at a vertical wire's axis, 1 at its edge
    dv = np.abs(yr - (cv + 0.5) * period) / half_width
    cover_v = np.clip(1.5 * (1.0 - du), 0.0, 1.0)  # slightly soft wire edges
    cover_h = np.clip(1.5 * (1.0 - dv), 0.0, 1.0)
    wire = rng.uniform(0.68, 0.8)
    value_v = wire * (0.55 + 0.45 * np.sqrt(np.clip(1.0 - du**2, 0.0, 1.0)))
    value_h = wire * (0.55 + 0.45 * np.sqrt(np.clip(1.0 - dv**2, 0.0, 1.0)))
    plate = 0.16 + 0.03 * _normalised_noise(rng, (size, size), 2.0) + 0.05 * (y / size)
    vertical_on_top = (cu + cv) % 2 == 0
    bottom_val, bottom_cov = np.where(vertical_on_top, value_h, value_v), np.where(vertical_on_top, cover_h, cover_v)
    top_val, top_cov = np.where(vertical_on_top, value_v, value_h), np.where(vertical_on_top, cover_v, cover_h)
    top_d = np.where(vertical_on_top, du, dv)
    img = plate * (1 - bottom_cov) + bottom_val * bottom_cov
    img = img * (1.0 - 0.45 * np.clip(1.5 * (1.0 - top_d / 1.5), 0.0, 1.0))  # the top wire's shadow
    img = img * (1 - top_cov) + top_val * top_cov
    img = img + 0.01 * _normalised_noise(rng, (size, size), 0.5)
    return img.astype(np.float32)


_TEXTURES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "brushed_metal": _brushed_metal,
    "woven_fabric": _woven_fabric,
    "grid": _grid,
}


def make_texture(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A defect-free surface: float32 in [0, 1], (S, S) for grey categories and (S, S, 3) for colour ones.

    >>> make_texture("woven_fabric", 32, np.random.default_rng(0)).shape
    (32, 32, 3)
    """
    if category not in _TEXTURES:
        raise ValueError(f"category = {category!r} is not one of: {', '.join(map(repr, _TEXTURES))}")
    if size < MIN_SIZE:
        raise ValueError(f"size = {size} must be >= {MIN_SIZE}")
    return np.clip(_TEXTURES[category](size, rng), 0.0, 1.0)


def _polar(size: int, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(distance / boundary radius, angle) around a random centre, with a wobbly boundary r(φ)."""
    cy, cx = rng.uniform(0.22 * size, 0.78 * size, 2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    phi = np.arctan2(y - cy, x - cx)
    r = np.full_like(phi, radius)
    for k in (2, 3, 4, 5):
        r *= 1.0 + rng.uniform(0.0, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return np.hypot(y - cy, x - cx) / r, phi


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    p0 = rng.uniform(0.15 * size, 0.85 * size, 2)
    angle = rng.uniform(0, 2 * np.pi)
    p2 = np.clip(p0 + rng.uniform(0.3, 0.6) * size * np.array([np.cos(angle), np.sin(angle)]), 2, size - 3)
    normal = np.array([-(p2 - p0)[1], (p2 - p0)[0]])
    p1 = (p0 + p2) / 2 + rng.uniform(-0.3, 0.3) * normal
    t = np.linspace(0.0, 1.0, 4 * size)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bézier, (N, 2) as (x, y)
    canvas = Image.new("L", (size, size), 0)
    width = max(1, int(round(rng.uniform(1.0, 2.4) * size / 128)))
    ImageDraw.Draw(canvas).line([tuple(p) for p in points.tolist()], fill=255, width=width, joint="curve")
    mask = np.asarray(canvas) > 0
    colour = 0.95 if rng.random() < 0.6 else 0.05
    alpha = np.where(mask, rng.uniform(0.75, 0.9), 0.0)
    return alpha, np.full_like(img, colour)


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    d, _ = _polar(size, rng, rng.uniform(0.04, 0.08) * size)
    rim = rng.uniform(0.3, 0.5)
    inside, on_rim = d <= 1.0, (d > 1.0) & (d <= 1.0 + rim)
    dark = 0.03 + 0.12 * np.clip(d, 0.0, 1.0)  # darkest at the centre
    raised = np.minimum(1.0, img * 1.3 + 0.12)
    if img.ndim == 3:
        dark, inside_c = dark[..., None], inside[..., None]
    else:
        inside_c = inside
    colour = np.where(inside_c, dark, raised)
    alpha = np.where(inside, 1.0, np.where(on_rim, 0.3 + 0.5 * (1.0 - (d - 1.0) / rim), 0.0))
    return alpha, colour


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    d, _ = _polar(size, rng, rng.uniform(0.08, 0.16) * size)
    d = d + 0.12 * _normalised_noise(rng, (size, size), size / 20)
    inside = d < 1.0
    core = np.clip((1.0 - d) / 0.45, 0.0, 1.0) ** 1.5  # 0 at the edge → 1 in the middle: soft edge
    ring = 0.2 * np.exp(-(((1.0 - d) / 0.08) ** 2))  # drying ring at the edge
    alpha = np.where(inside, np.clip(0.28 + 0.45 * core + ring, 0.0, 1.0), 0.0)
    if img.ndim == 3:
        tint = np.array([0.62, 0.45, 0.22]) * rng.uniform(0.8, 1.1)
        colour = img * 0.3 + tint * 0.4
    else:
        colour = img * rng.uniform(0.35, 0.55)
    return alpha, colour


_DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
}


def paint_defect(image: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect onto a float image in [0, 1]: ``x ← (1 − A) x + A c``; returns (image, mask = A > 0).

    Pixels outside the mask are returned unchanged (bit for bit); inside it A ≥ 0.25.

    >>> img = np.full((64, 64), 0.5, np.float32)
    >>> out, mask = paint_defect(img, "hole", np.random.default_rng(0))
    >>> bool(mask.any()), bool((out[~mask] == img[~mask]).all())
    (True, True)
    """
    if defect not in _DEFECTS:
        raise ValueError(f"defect = {defect!r} is not one of: {', '.join(map(repr, _DEFECTS))}")
    alpha, colour = _DEFECTS[defect](image.astype(np.float64), rng)
    mask = alpha > 0
    a = alpha[..., None] if image.ndim == 3 else alpha
    painted = np.clip((1.0 - a) * image + a * colour, 0.0, 1.0).astype(image.dtype)
    return np.where(mask if image.ndim == 2 else mask[..., None], painted, image), mask


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] → uint8 with rounding: ``round(255 x)``."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def _check_root(root: Path, params: dict) -> None:
    """Allow an empty or absent root, or one made earlier with the same parameters (its files are rewritten)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder")
    if not any(root.iterdir()):
        return
    marker = root / MARKER_NAME
    if not marker.is_file():
        raise ValueError(f"{root} is not empty and holds no {MARKER_NAME}; choose an empty or new folder")
    previous = json.loads(marker.read_text())
    if previous != params:
        diffs = [f"{k}: {previous.get(k)!r} there, {v!r} asked" for k, v in params.items() if previous.get(k) != v]
        raise ValueError(
            f"{root} holds a procedural dataset made with other parameters ({'; '.join(diffs)}); "
            "choose another folder or remove that one"
        )


def make_procedural_dataset(
    root: str | Path,
    categories: Sequence[str] = ("brushed_metal", "woven_fabric", "grid"),
    n_train_good: int = 24,
    n_test_good: int = 6,
    n_per_defect: int = 6,
    size: int = 128,
    seed: int = 0,
    defects: Sequence[str] = DEFECTS,
) -> Path:
    """Write a procedural dataset in the MVTec layout under ``root``; the same arguments give byte-identical files.

    Layout: ``<cat>/train/good/NNN.png``, ``<cat>/test/good/NNN.png``, ``<cat>/test/<defect>/NNN.png`` and
    ``<cat>/ground_truth/<defect>/NNN_mask.png`` (0/255, mode L), plus ``procedural.json`` recording the arguments.
    ``root`` must be empty, absent, or made before with the same arguments.

    Args:
        root: output folder (a folder of category folders).
        categories: any of ``brushed_metal`` (L), ``woven_fabric`` (RGB), ``grid`` (L).
        n_train_good: normal images per category in ``train/good``.
        n_test_good: normal images per category in ``test/good``.
        n_per_defect: anomaly images per category and defect type.
        size: square image side in pixels (>= 32).
        seed: run seed (>= 0); each file draws from ``file_rng(seed, category, split, defect, index)``.
        defects: any of ``scratch``, ``hole``, ``stain``.

    Returns:
        ``root`` as a Path.
    """
    cfg = ProceduralConfig(
        categories=tuple(categories),  # type: ignore[arg-type]
        defects=tuple(defects),  # type: ignore[arg-type]
        n_train_good=n_train_good,
        n_test_good=n_test_good,
        n_per_defect=n_per_defect,
        size=size,
    )
    root = Path(root)
    params = {
        "categories": list(cfg.categories),
        "defects": list(cfg.defects),
        "n_train_good": n_train_good,
        "n_test_good": n_test_good,
        "n_per_defect": n_per_defect,
        "size": size,
        "seed": seed,
    }
    if seed < 0:
        raise ValueError(f"seed = {seed} must be >= 0")
    _check_root(root, params)
    root.mkdir(parents=True, exist_ok=True)
    for category in cfg.categories:
        cat_dir = root / category
        for split, count in (("train", n_train_good), ("test", n_test_good)):
            for i in range(count):
                texture = make_texture(category, size, file_rng(seed, category, split, "good", i))
                _save_png(to_uint8(texture), cat_dir / split / "good" / f"{i:03d}.png")
        for defect in cfg.defects:
            for i in range(n_per_defect):
                rng = file_rng(seed, category, "test", defect, i)
                image, mask = paint_defect(make_texture(category, size, rng), defect, rng)
                _save_png(to_uint8(image), cat_dir / "test" / defect / f"{i:03d}.png")
                _save_png(
                    np.where(mask, 255, 0).astype(np.uint8), cat_dir / "ground_truth" / defect / f"{i:03d}_mask.png"
                )
        logger.info(
            "procedural %s: %d train/good, %d test/good, %d per defect",
            category,
            n_train_good,
            n_test_good,
            n_per_defect,
        )
    (root / MARKER_NAME).write_text(json.dumps(params, indent=2) + "\n")
    return root

"""CutPaste anomaly generator (Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and
Localization", CVPR 2021), a baseline that FAST is compared against (FAST_SPEC §8.5).

A rectangle is cut from one place of a normal image (or of another normal image, ``source``), optionally
colour-jittered, optionally rotated, and pasted at another place. Two variants follow the paper: ``"patch"`` (a
rectangle whose area is a fraction of the image and whose aspect ratio is log-uniform) and ``"scar"`` (a thin long
rectangle rotated by a random angle). The returned mask is the rasterised footprint of the pasted patch. This module
also holds the small image helpers shared by the baselines (input checks, colour jitter, RGB↔HSV). Pure numpy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fast_core.configbase import check_choices

logger = logging.getLogger(__name__)

# ITU-R BT.601 luma weights, the grayscale conversion of Pillow and torchvision.
_LUMA = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------------------------------
# shared image helpers
# --------------------------------------------------------------------------------------------------------------------


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate the baseline image contract and return ``image`` unchanged.

    Args:
        image: ``np.uint8`` array of shape (H, W) (grayscale) or (H, W, C) with C in {1, 3}.
        name: the argument name used in error messages.

    Raises:
        ValueError: on another dtype, rank or channel count, or an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"{name} must have shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


def check_range(name: str, bounds: tuple[float, float], low: float, high: float) -> None:
    """Raise ``ValueError`` unless ``low <= bounds[0] <= bounds[1] <= high``."""
    if len(bounds) != 2 or not (low <= bounds[0] <= bounds[1] <= high):
        raise ValueError(f"{name} = {tuple(bounds)} must be (lo, hi) with {low} <= lo <= hi <= {high}")


def is_rgb(image: np.ndarray) -> bool:
    """True for an (H, W, 3) image, False for (H, W) and (H, W, 1)."""
    return image.ndim == 3 and image.shape[2] == 3


def to_gray(x: np.ndarray) -> np.ndarray:
    """Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of a float (..., 3) array, shape (...)."""
    return x @ _LUMA


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Convert float RGB in [0, 1], shape (..., 3), to HSV in [0, 1] (hue as a fraction of the circle)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = rgb.max(axis=-1)
    minc = rgb.min(axis=-1)
    delta = maxc - minc
    safe_delta = np.where(delta > 0, delta, 1.0)
    s = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`: float HSV in [0, 1], shape (..., 3), to RGB in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def color_jitter(patch: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue change of a uint8 patch (torchvision ``ColorJitter`` style).

    With ``j = strength``, factors are drawn in a fixed order and each step clips to [0, 255]:
    brightness ``x ← b·x``, b ~ U[1−j, 1+j]; contrast ``x ← c·(x − μ) + μ`` with μ the mean luma, c ~ U[1−j, 1+j];
    for RGB only, saturation ``x ← Y + s·(x − Y)`` with Y the per-pixel luma, s ~ U[1−j, 1+j], and a hue rotation
    ``h ← (h + δ) mod 1``, δ ~ U[−j, j]. The result is rounded to uint8. ``strength == 0`` returns a copy.
    """
    if strength == 0:
        return patch.copy()
    x = patch.astype(np.float64)
    b = rng.uniform(1.0 - strength, 1.0 + strength)
    x = np.clip(x * b, 0.0, 255.0)
    c = rng.uniform(1.0 - strength, 1.0 + strength)
    mean = float(to_gray(x).mean()) if is_rgb(x) else float(x.mean())
    x = np.clip((x - mean) * c + mean, 0.0, 255.0)
    if is_rgb(x):
        s = rng.uniform(1.0 - strength, 1.0 + strength)
        gray = to_gray(x)[..., None]
        x = np.clip(gray + s * (x - gray), 0.0, 255.0)
        delta = rng.uniform(-strength, strength)
        hsv = rgb_to_hsv(x / 255.0)
        hsv[..., 0] = (hsv[..., 0] + delta) % 1.0
        x = np.clip(hsv_to_rgb(hsv) * 255.0, 0.0, 255.0)
    return np.rint(x).astype(np.uint8)


def rotate_patch(patch: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a patch about its centre with nearest-neighbour sampling, expanding the canvas to fit.

    Destination pixel centres ``p = (x, y)`` (x right, y down) of the (bh, bw) bounding box are mapped back by
    ``q = R(θ)·(p − c_dst) + c_src`` with ``R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]``, the inverse of a
    counter-clockwise on-screen turn by θ; a destination pixel belongs to the footprint iff ``q`` falls inside the
    (ph, pw) source rectangle, and takes the value of the source pixel containing ``q``. ``θ = 0`` returns the patch
    itself with a full footprint.

    Args:
        patch: (ph, pw) or (ph, pw, C) array.
        angle_deg: counter-clockwise rotation in degrees.

    Returns:
        ``(rotated, footprint)``: the rotated patch (zeros outside the footprint) and a bool (bh, bw) footprint.
    """
    ph, pw = patch.shape[:2]
    if angle_deg == 0:
        return patch.copy(), np.ones((ph, pw), dtype=bool)
    theta = math.radians(angle_deg)
    c, s = math.cos(theta), math.sin(theta)
    bw = max(1, math.ceil(abs(pw * c) + abs(ph * s) - 1e-9))
    bh = max(1, math.ceil(abs(pw * s) + abs(ph * c) - 1e-9))
    dy = np.arange(bh)[:, None] + 0.5 - bh / 2.0
    dx = np.arange(bw)[None, :] + 0.5 - bw / 2.0
    u = c * dx - s * dy + pw / 2.0
    v = s * dx + c * dy + ph / 2.0
    footprint = (u >= 0) & (u < pw) & (v >= 0) & (v < ph)
    ui = np.clip(np.floor(u).astype(np.int64), 0, pw - 1)
    vi = np.clip(np.floor(v).astype(np.int64), 0, ph - 1)
    rotated = patch[vi, ui]
    rotated[~footprint] = 0
    return rotated, footprint


# --------------------------------------------------------------------------------------------------------------------
# CutPaste
# --------------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class CutPasteConfig:
    """Configuration of :class:`CutPaste`; defaults are the paper's (images of about 256×256 pixels)."""

    mode: Literal["patch", "scar"] = "patch"  # "patch": CutPaste; "scar": CutPaste-Scar
    area_ratio: tuple[float, float] = (0.02, 0.15)  # patch: area / (H·W), uniform in [lo, hi]
    aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)  # patch: width / height, log-uniform in [lo, hi]
    scar_width: tuple[int, int] = (2, 16)  # scar: width in pixels, uniform integer in [lo, hi]
    scar_length: tuple[int, int] = (10, 25)  # scar: length (height before rotation) in pixels, [lo, hi]
    patch_rotation: tuple[float, float] = (0.0, 0.0)  # patch: rotation angle in degrees, uniform in [lo, hi]
    scar_rotation: tuple[float, float] = (-45.0, 45.0)  # scar: rotation angle in degrees, uniform in [lo, hi]
    color_jitter: float = 0.1  # jitter strength j of brightness/contrast/saturation/hue; 0 disables
    max_tries: int = 100  # resampling budget for a patch that fits both images

    def __post_init__(self) -> None:
        check_choices(self)
        check_range("CutPasteConfig.area_ratio", self.area_ratio, 1e-12, 1.0)
        check_range("CutPasteConfig.aspect_ratio", self.aspect_ratio, 1e-12, math.inf)
        check_range("CutPasteConfig.scar_width", self.scar_width, 1, math.inf)
        check_range("CutPasteConfig.scar_length", self.scar_length, 1, math.inf)
        check_range("CutPasteConfig.patch_rotation", self.patch_rotation, -360.0, 360.0)
        check_range("CutPasteConfig.scar_rotation", self.scar_rotation, -360.0, 360.0)
        if not 0.0 <= self.color_jitter <= 0.5:
            raise ValueError(f"CutPasteConfig.color_jitter = {self.color_jitter} must be in [0, 0.5]")
        if self.max_tries < 1:
            raise ValueError(f"CutPasteConfig.max_tries = {self.max_tries} must be >= 1")


class CutPaste:
    """CutPaste / CutPaste-Scar anomaly generator.

    One call of :meth:`generate` draws, in order: the patch size ((h, w) from area ratio ``a ~ U[a_lo, a_hi]`` and
    aspect ratio ``r = exp(U[log r_lo, log r_hi])`` as ``w = round(√(a·H·W·r))``, ``h = round(√(a·H·W / r))``; or the
    scar's integer width and length), the rotation angle, the cut position in the source, the colour jitter and the
    paste position, so the same ``rng`` state gives the same bytes.

    The mask is the pasted footprint: pixels outside it are bit-identical to the input; pixels inside it take the
    pasted values, and a pasted value that happens to equal the original one still belongs to the mask.
    """

    def __init__(self, config: CutPasteConfig | None = None) -> None:
        self.config = config if config is not None else CutPasteConfig()

    def _sample_size(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        """Patch (h, w) before rotation."""
        cfg = self.config
        if cfg.mode == "scar":
            w = int(rng.integers(cfg.scar_width[0], cfg.scar_width[1], endpoint=True))
            h = int(rng.integers(cfg.scar_length[0], cfg.scar_length[1], endpoint=True))
            return h, w
        area = rng.uniform(cfg.area_ratio[0], cfg.area_ratio[1]) * height * width
        ratio = math.exp(rng.uniform(math.log(cfg.aspect_ratio[0]), math.log(cfg.aspect_ratio[1])))
        return round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))

    def generate(
        self, image: np.ndarray, rng: np.random.Generator, *, source: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut a patch (from ``source`` when given, else from ``image``) and paste it into a copy of ``image``.

        Args:
            image: normal image, ``np.uint8`` (H, W), (H, W, 1) or (H, W, 3).
            rng: numpy random generator; the only source of randomness.
            source: optional other normal image with the same channel layout to cut from (any size).

        Returns:
            ``(image_out, mask)``: ``image_out`` with the shape and dtype of ``image``; ``mask`` bool (H, W), the
            pasted footprint (1 = anomaly).

        Raises:
            ValueError: on invalid images, or when no patch fits after ``max_tries`` draws.
        """
        check_image(image)
        src = image if source is None else check_image(source, "source")
        if src.ndim != image.ndim or src.shape[2:] != image.shape[2:]:
            raise ValueError(f"source shape {src.shape} has another channel layout than image shape {image.shape}")
        cfg = self.config
        height, width = image.shape[:2]
        rot_range = cfg.scar_rotation if cfg.mode == "scar" else cfg.patch_rotation
        for _ in range(cfg.max_tries):
            ph, pw = self._sample_size(height, width, rng)
            angle = float(rng.uniform(rot_range[0], rot_range[1]))
            if not (1 <= ph <= src.shape[0] and 1 <= pw <= src.shape[1]):
                continue
            _, footprint = rotate_patch(np.zeros((ph, pw), dtype=np.uint8), angle)
            bh, bw = footprint.shape
            if bh > height or bw > width or not footprint.any():
                continue
            break
        else:
            raise ValueError(
                f"CutPaste({cfg.mode}): no patch fits image {image.shape[:2]} and source {src.shape[:2]} "
                f"in {cfg.max_tries} tries; lower area_ratio / scar sizes for such small images"
            )
        # 1. cut
        y0 = int(rng.integers(0, src.shape[0] - ph, endpoint=True))
        x0 = int(rng.integers(0, src.shape[1] - pw, endpoint=True))
        patch = color_jitter(src[y0 : y0 + ph, x0 : x0 + pw], cfg.color_jitter, rng)
        # 2. rotate (the footprint only depends on the shape and angle, as computed above)
        rotated, footprint = rotate_patch(patch, angle)
        # 3. paste
        y1 = int(rng.integers(0, height - bh, endpoint=True))
        x1 = int(rng.integers(0, width - bw, endpoint=True))
        out = image.copy()
        region = out[y1 : y1 + bh, x1 : x1 + bw]
        region[footprint] = rotated[footprint]
        mask = np.zeros((height, width), dtype=bool)
        mask[y1 : y1 + bh, x1 : x1 + bw] = footprint
        logger.debug("CutPaste %s: %dx%d at %.1f deg, mask area %d", cfg.mode, ph, pw, angle, int(mask.sum()))
        return out, mask

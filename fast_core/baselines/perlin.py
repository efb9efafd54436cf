"""DRAEM-style anomaly generator (Zavrtanik et al., "DRAEM – A discriminatively trained reconstruction embedding for
surface anomaly detection", ICCV 2021), a baseline that FAST is compared against (FAST_SPEC §8.5).

A mask is drawn by thresholding rotated 2-D gradient (Perlin) noise at random lattice scales; inside it a texture
image (from a texture set, or, when the caller has none, a different normal image of the dataset) is blended into the
normal image with a random opacity. Pixels outside the mask are left bit-identical. Pure numpy plus Pillow (resize).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fast_core.baselines.cutpaste import check_image, check_range, is_rgb, to_gray
from fast_core.configbase import check_choices

logger = logging.getLogger(__name__)

TEXTURE_AUGMENTATIONS = ("gamma", "multiply_add", "invert", "posterize", "solarize", "autocontrast", "equalize")


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic interpolant ``f(t) = 6t⁵ − 15t⁴ + 10t³`` (zero first and second derivative at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise_2d(
    shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator, *, angle_deg: float = 0.0
) -> np.ndarray:
    """2-D gradient (Perlin) noise sampled at the pixel centres of an image, optionally on a rotated lattice.

    Pixel centres ``p`` are rotated about the image centre by ``angle_deg`` and scaled to lattice units, ``res[0]``
    cells along the height and ``res[1]`` along the width: ``g = (y'·res₀/H, x'·res₁/W)``. Every lattice corner ``k``
    holds a random unit gradient ``d_k = (cos φ_k, sin φ_k)``, ``φ_k ~ U[0, 2π)``. With ``f = g − ⌊g⌋`` the value is
    the bilinear blend, weighted by ``_fade(f)``, of the four corner dot products ``d_k · (f − k)``, times √2 (as in
    DRAEM), so values lie in about [−1, 1]. Any shape works (no divisibility condition on ``res``).

    Args:
        shape: (H, W) of the output.
        res: lattice cells across (height, width), each >= 1.
        rng: numpy random generator for the gradients.
        angle_deg: rotation of the lattice in degrees.

    Returns:
        float64 array (H, W).
    """
    height, width = shape
    if height < 1 or width < 1 or res[0] < 1 or res[1] < 1:
        raise ValueError(f"perlin_noise_2d needs shape and res >= 1, got shape={shape}, res={res}")
    theta = math.radians(angle_deg)
    c, s = math.cos(theta), math.sin(theta)
    dy = np.arange(height)[:, None] + 0.5 - height / 2.0
    dx = np.arange(width)[None, :] + 0.5 - width / 2.0
    gx = (c * dx - s * dy) * (res[1] / width)
    gy = (s * dx + c * dy) * (res[0] / height)
    gx = gx - gx.min()
    gy = gy - gy.min()
    x0 = np.floor(gx).astype(np.int64)
    y0 = np.floor(gy).astype(np.int64)
    fx, fy = gx - x0, gy - y0
    phi = rng.uniform(0.0, 2.0 * math.pi, size=(int(y0.max()) + 2, int(x0.max()) + 2))
    grad_x, grad_y = np.cos(phi), np.sin(phi)

    def corner(oy: int, ox: int) -> np.ndarray:
        """Dot product of the corner gradient with the offset from that corner."""
        return grad_x[y0 + oy, x0 + ox] * (fx - ox) + grad_y[y0 + oy, x0 + ox] * (fy - oy)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2.0) * (top + v * (bottom - top))


@dataclass(kw_only=True)
class PerlinConfig:
    """Configuration of :class:`PerlinAnomaly`; defaults follow DRAEM except the opacity range (see ``opacity``)."""

    scale_exponent: tuple[int, int] = (0, 5)  # lattice cells per side 2^k, k uniform integer in [lo, hi], per axis
    rotation: tuple[float, float] = (-90.0, 90.0)  # lattice rotation in degrees, uniform in [lo, hi]
    threshold: float = 0.5  # mask = noise > threshold
    opacity: tuple[float, float] = (0.1, 1.0)  # β ~ U[lo, hi): out = (1 − β)·I + β·T inside the mask
    area_ratio: tuple[float, float] = (0.0, 1.0)  # accepted mask area / (H·W); the mask is never empty
    texture_augmentations: int = 3  # how many distinct TEXTURE_AUGMENTATIONS to apply to the texture (DRAEM: 3)
    max_tries: int = 100  # noise draws before giving up on a mask inside the area bounds

    def __post_init__(self) -> None:
        check_choices(self)
        check_range("PerlinConfig.scale_exponent", self.scale_exponent, 0, 12)
        check_range("PerlinConfig.rotation", self.rotation, -360.0, 360.0)
        check_range("PerlinConfig.opacity", self.opacity, 0.0, 1.0)
        check_range("PerlinConfig.area_ratio", self.area_ratio, 0.0, 1.0)
        if not -1.5 < self.threshold < 1.5:
            raise ValueError(f"PerlinConfig.threshold = {self.threshold} must be in (-1.5, 1.5)")
        if not 0 <= self.texture_augmentations <= len(TEXTURE_AUGMENTATIONS):
            raise ValueError(
                f"PerlinConfig.texture_augmentations = {self.texture_augmentations} must be in "
                f"[0, {len(TEXTURE_AUGMENTATIONS)}] (choices: {', '.join(TEXTURE_AUGMENTATIONS)})"
            )
        if self.max_tries < 1:
            raise ValueError(f"PerlinConfig.max_tries = {self.max_tries} must be >= 1")


def _augment(x: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """One texture augmentation on a float array in [0, 255] (a numpy subset of DRAEM's imgaug list)."""
    if name == "gamma":  # x ← 255·(x/255)^γ, γ ~ U[0.5, 2]
        return 255.0 * (x / 255.0) ** rng.uniform(0.5, 2.0)
    if name == "multiply_add":  # x ← m·x + a, m ~ U[0.8, 1.2], a ~ U[−30, 30]
        return x * rng.uniform(0.8, 1.2) + rng.uniform(-30.0, 30.0)
    if name == "invert":
        return 255.0 - x
    if name == "posterize":  # keep the top b bits, b ~ {4, ..., 7}
        bits = int(rng.integers(4, 7, endpoint=True))
        step = 2.0 ** (8 - bits)
        return np.floor(x / step) * step
    if name == "solarize":  # invert values at or above τ ~ U[32, 128]
        tau = rng.uniform(32.0, 128.0)
        return np.where(x >= tau, 255.0 - x, x)
    if name == "autocontrast":  # per channel, stretch [min, max] to [0, 255]
        lo = x.min(axis=(0, 1), keepdims=True)
        hi = x.max(axis=(0, 1), keepdims=True)
        return np.where(hi > lo, (x - lo) * 255.0 / np.where(hi > lo, hi - lo, 1.0), x)
    if name == "equalize":  # per channel, map values through the empirical CDF of their rounded values
        q = np.rint(x).astype(np.int64)
        out = np.empty_like(x)
        for ch in range(x.shape[2]):
            cdf = np.cumsum(np.bincount(q[..., ch].ravel(), minlength=256)).astype(np.float64)
            cdf_min = cdf[cdf > 0][0]
            denom = cdf[-1] - cdf_min
            out[..., ch] = (cdf[q[..., ch]] - cdf_min) * 255.0 / denom if denom > 0 else x[..., ch]
        return out
    raise ValueError(f"unknown texture augmentation {name!r}; valid: {', '.join(TEXTURE_AUGMENTATIONS)}")


class PerlinAnomaly:
    """DRAEM-style Perlin-noise mask plus texture blend.

    One :meth:`generate` call draws, in order: per try, the two scale exponents, the rotation and the noise gradients
    (until the mask ``noise > threshold`` (∧ ``foreground``) is non-empty with area inside ``area_ratio``); then the
    texture augmentations and their parameters; then the opacity β. ``image_out = (1 − β)·I + β·T`` inside the mask
    (rounded to uint8), ``image_out = I`` outside. DRAEM writes the same blend as ``β'·I + (1 − β')·T`` with
    ``β' ~ U[0, 0.8)``, i.e. opacity ``1 − β'`` in (0.2, 1]; here the opacity range is configurable and defaults to
    [0.1, 1.0). The mask is the blend footprint: a pixel whose blended value rounds to its original value still
    belongs to it.
    """

    def __init__(self, config: PerlinConfig | None = None) -> None:
        self.config = config if config is not None else PerlinConfig()

    def sample_mask(
        self, shape: tuple[int, int], rng: np.random.Generator, *, foreground: np.ndarray | None = None
    ) -> np.ndarray:
        """A non-empty bool (H, W) mask from thresholded rotated Perlin noise, within the configured area bounds.

        Raises:
            RuntimeError: when ``max_tries`` draws give no acceptable mask.
        """
        cfg = self.config
        if foreground is not None and (foreground.shape != tuple(shape) or foreground.dtype != np.bool_):
            raise ValueError(
                f"foreground must be a bool array of shape {tuple(shape)}, got {foreground.dtype} {foreground.shape}"
            )
        total = shape[0] * shape[1]
        for _ in range(cfg.max_tries):
            ky, kx = rng.integers(cfg.scale_exponent[0], cfg.scale_exponent[1], size=2, endpoint=True)
            angle = float(rng.uniform(cfg.rotation[0], cfg.rotation[1]))
            noise = perlin_noise_2d(shape, (2 ** int(ky), 2 ** int(kx)), rng, angle_deg=angle)
            mask = noise > cfg.threshold
            if foreground is not None:
                mask &= foreground
            area = int(mask.sum())
            if area > 0 and cfg.area_ratio[0] <= area / total <= cfg.area_ratio[1]:
                return mask
        raise RuntimeError(
            f"PerlinAnomaly: no non-empty mask with area ratio in {cfg.area_ratio} after {cfg.max_tries} tries "
            f"(shape {tuple(shape)}, threshold {cfg.threshold}"
            + (", restricted to the given foreground)" if foreground is not None else ")")
        )

    def prepare_texture(self, texture: np.ndarray, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The texture as float (H, W, C) in [0, 255] matching ``image``: channels converted (luma or replicated),
        resized bilinearly to the image size, then ``texture_augmentations`` distinct augmentations applied."""
        check_image(texture, "texture")
        height, width = image.shape[:2]
        if texture.shape[:2] != (height, width):
            pil = Image.fromarray(texture if texture.ndim == 2 or is_rgb(texture) else texture[..., 0])
            texture = np.asarray(pil.resize((width, height), resample=Image.Resampling.BILINEAR))
        tex = texture.astype(np.float64)
        if tex.ndim == 2:
            tex = tex[..., None]
        channels = 1 if image.ndim == 2 else image.shape[2]
        if channels == 1 and tex.shape[2] == 3:
            tex = to_gray(tex)[..., None]
        elif channels == 3 and tex.shape[2] == 1:
            tex = np.repeat(tex, 3, axis=2)
        k = self.config.texture_augmentations
        if k > 0:
            for idx in rng.choice(len(TEXTURE_AUGMENTATIONS), size=k, replace=False):
                tex = np.clip(_augment(tex, TEXTURE_AUGMENTATIONS[int(idx)], rng), 0.0, 255.0)
        return tex

    def generate(
        self,
        image: np.ndarray,
        rng: np.random.Generator,
        *,
        texture: np.ndarray,
        foreground: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blend ``texture`` into ``image`` inside a fresh Perlin mask.

        Args:
            image: normal image, ``np.uint8`` (H, W), (H, W, 1) or (H, W, 3).
            rng: numpy random generator; the only source of randomness.
            texture: ``np.uint8`` texture image of any size, grayscale or RGB (a texture-set image, or a different
                normal image of the same dataset when no texture set is used).
            foreground: optional bool (H, W); the mask is restricted to it (e.g. the object region).

        Returns:
            ``(image_out, mask)``: ``image_out`` with the shape and dtype of ``image``; ``mask`` bool (H, W),
            non-empty (1 = anomaly).

        Raises:
            ValueError: on invalid inputs. RuntimeError: when no acceptable mask is found in ``max_tries`` draws.
        """
        check_image(image)
        mask = self.sample_mask(image.shape[:2], rng, foreground=foreground)
        tex = self.prepare_texture(texture, image, rng)
        beta = float(rng.uniform(self.config.opacity[0], self.config.opacity[1]))
        base = image.astype(np.float64)
        if base.ndim == 2:
            base = base[..., None]
        blended = np.rint(np.clip((1.0 - beta) * base + beta * tex, 0.0, 255.0)).astype(np.uint8)
        out = image.copy()
        out[mask] = blended[mask].reshape(out[mask].shape)
        logger.debug("PerlinAnomaly: mask area %d, opacity %.3f", int(mask.sum()), beta)
        return out, mask

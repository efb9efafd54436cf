"""Real-defect paste ("realpaste"), a baseline that FAST is compared against next to CutPaste and DRAEM-style Perlin:
a real defect, cut from a defect image along its ground-truth mask, is pasted onto a normal image.

For a normal image ``I`` (H, W[, C]), a defect image ``D`` (H', W'[, C], same channel layout) and its mask ``M``
(H', W'), one :meth:`RealPaste.generate` call does:

1. cut: the bounding box of ``M`` grown by ``g = max(margin, feather)`` pixels on every side (clipped to ``D``) gives
   the patch ``P`` and its mask ``Mp``; the margin supplies the defect image's own pixels to the feather band;
2. transform: ``P`` and ``Mp`` are flipped left-right with probability ``flip_h``, up-down with probability ``flip_v``,
   then turned counter-clockwise by ``k·90°``, ``k ~ U{0, 1, 2, 3}`` (``k = 0`` unless ``rotate90``); when the turned
   mask box does not fit ``I`` (H ≠ W) but the other orientation does, ``k ← (k + 1) mod 4``;
3. place: the (bh, bw) box of the transformed mask gets a top-left corner ``(y, x)`` uniform in
   ``[0, H − bh] × [0, W − bw]`` (the mask lies wholly inside ``I``; patch margin falling outside ``I`` is dropped).
   A position is accepted when at least ``min_inside`` of the placed mask pixels lie in the foreground estimate ``F``
   of ``I`` (:func:`fast_core.baselines.foreground.border_foreground`, which is the whole image when it covers less
   than ``min_foreground``); after ``max_tries`` rejected positions the one with the largest fraction is used;
4. intensity match: ``P ← P + δ`` with, per channel, ``δ = mean(I over ring(M′)) − mean(D over ring(M))`` where
   ``M′`` is the placed mask and ``ring(A) = dilate(A, r) ∖ A`` for a (2r+1)² square, ``r = ring_width``, within the
   image. The defect keeps its contrast to its surroundings while its level follows the new surroundings; an empty
   ring (a mask covering its whole image) gives ``δ = 0``;
5. blend: ``α = max(M′, G ∗ M′)`` with ``G`` a separable Gaussian of radius ``feather`` (σ = feather / 2, weights
   summing to 1), computed on the patch canvas; ``out = round(clip(α·P + (1 − α)·I, 0, 255))`` where ``α > 0`` and
   ``out = I`` elsewhere. ``feather = 0`` is a hard paste (``α = M′``).

The returned mask is ``M′`` (bool (H, W)), never empty. Inside it ``α = 1``, so the output is the shifted defect. With
``feather > 0`` the pixels up to ``feather`` px (Chebyshev distance) outside ``M′`` are blended too; every pixel
farther away is bit-identical to ``I``. Randomness (flips, k, positions) comes only from the ``rng`` argument, in
that order. Pure numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fast_core.baselines.cutpaste import check_image
from fast_core.baselines.foreground import border_foreground, dilate
from fast_core.configbase import check_choices

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RealPasteConfig:
    """Configuration of :class:`RealPaste` (defaults for images of about 256×256 pixels)."""

    margin: int = 4  # px of defect-image context cut around the mask's box (at least ``feather`` are always cut)
    flip_h: float = 0.5  # probability of a left-right flip
    flip_v: float = 0.5  # probability of an up-down flip
    rotate90: bool = True  # turn by k·90°, k uniform in {0, 1, 2, 3}; False: never turned
    feather: int = 2  # radius in px of the Gaussian feather of α (σ = feather / 2); 0: hard paste
    intensity_match: bool = True  # shift the patch by the difference of the ring means (step 4); False: δ = 0
    ring_width: int = 3  # r of the rings around the source and the placed mask
    fg_tolerance: float = 20.0  # foreground: some channel differs from the border colour by more than this
    fg_close_radius: int = 2  # foreground: closing radius
    min_foreground: float = 0.1  # a foreground estimate covering less than this fraction: the whole image is used
    min_inside: float = 0.95  # placement: fraction of the mask that must fall inside the foreground estimate
    max_tries: int = 50  # placement: positions drawn before taking the best one drawn

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("margin", "feather", "fg_close_radius"):
            if not 0 <= getattr(self, name) <= 64:
                raise ValueError(f"RealPasteConfig.{name} = {getattr(self, name)} must be in [0, 64]")
        for name in ("flip_h", "flip_v", "min_foreground", "min_inside"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"RealPasteConfig.{name} = {getattr(self, name)} must be in [0, 1]")
        if not 1 <= self.ring_width <= 64:
            raise ValueError(f"RealPasteConfig.ring_width = {self.ring_width} must be in [1, 64]")
        if not 0.0 <= self.fg_tolerance <= 255.0:
            raise ValueError(f"RealPasteConfig.fg_tolerance = {self.fg_tolerance} must be in [0, 255]")
        if self.max_tries < 1:
            raise ValueError(f"RealPasteConfig.max_tries = {self.max_tries} must be >= 1")


def feather_alpha(mask: np.ndarray, radius: int) -> np.ndarray:
    """``α = max(M, G ∗ M)`` as float64 (H, W), ``G`` the separable Gaussian of radius r, σ = r/2 (zero padding).

    ``α = M`` for r = 0; ``α = 1`` on the mask and ``α = 0`` beyond Chebyshev distance r of it.
    """
    m = mask.astype(np.float64)
    if radius <= 0:
        return m
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(t**2) / (2.0 * (radius / 2.0) ** 2))
    kernel /= kernel.sum()
    h, w = m.shape
    padded = np.pad(m, radius)
    rows = sum(kernel[d] * padded[:, d : d + w] for d in range(2 * radius + 1))
    blurred = sum(kernel[d] * rows[d : d + h] for d in range(2 * radius + 1))
    return np.maximum(m, blurred)


def ring_mean(image: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray | None:
    """Per-channel mean of float (H, W, C) ``image`` over ``dilate(mask, width) ∖ mask``; None for an empty ring."""
    ring = dilate(mask, width) & ~mask
    if not ring.any():
        return None
    return image[ring].mean(axis=0)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) → float64 (H, W, C)."""
    x = image.astype(np.float64)
    return x[..., None] if x.ndim == 2 else x


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), the half-open bounding box of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


class RealPaste:
    """Real-defect paste generator (see the module docstring for the algorithm and its formulas)."""

    def __init__(self, config: RealPasteConfig | None = None) -> None:
        self.config = config if config is not None else RealPasteConfig()

    def _check(self, image: np.ndarray, defect: np.ndarray, defect_mask: np.ndarray) -> np.ndarray:
        """Validate the inputs; returns the defect mask as bool (H', W')."""
        check_image(image)
        check_image(defect, "defect")
        if defect.ndim != image.ndim or defect.shape[2:] != image.shape[2:]:
            raise ValueError(f"defect shape {defect.shape} has another channel layout than image shape {image.shape}")
        if not isinstance(defect_mask, np.ndarray) or defect_mask.shape != defect.shape[:2]:
            shape = getattr(defect_mask, "shape", type(defect_mask).__name__)
            raise ValueError(f"defect_mask shape {shape} does not match the defect image's (H, W) {defect.shape[:2]}")
        mask = defect_mask > 0
        if not mask.any():
            raise ValueError("defect_mask is empty: there is no defect to paste")
        y0, x0, y1, x1 = _box(mask)
        (height, width), (bh, bw) = image.shape[:2], (y1 - y0, x1 - x0)
        if not (bh <= height and bw <= width) and not (self.config.rotate90 and bw <= height and bh <= width):
            raise ValueError(f"the defect's {bh}x{bw} box is bigger than the {height}x{width} image")
        return mask

    def _transform(
        self, patch: np.ndarray, pmask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Random flips and quarter turns of (patch (h, w, C), mask (h, w)); also returns k."""
        cfg = self.config
        if rng.random() < cfg.flip_h:
            patch, pmask = patch[:, ::-1], pmask[:, ::-1]
        if rng.random() < cfg.flip_v:
            patch, pmask = patch[::-1], pmask[::-1]
        k = int(rng.integers(0, 4)) if cfg.rotate90 else 0
        y0, x0, y1, x1 = _box(pmask)
        fits = (y1 - y0 <= shape[0] and x1 - x0 <= shape[1], x1 - x0 <= shape[0] and y1 - y0 <= shape[1])
        if not fits[k % 2]:
            k = (k + 1) % 4
        return np.rot90(patch, k), np.rot90(pmask, k), k

    def _place(self, pmask: np.ndarray, fg: np.ndarray, rng: np.random.Generator) -> tuple[int, int, float]:
        """Top-left (y, x) of the mask box in the image, and the fraction of the mask inside ``fg``."""
        height, width = fg.shape
        y0, x0, y1, x1 = _box(pmask)
        box = pmask[y0:y1, x0:x1]
        area = float(box.sum())
        best = (0, 0, -1.0)
        for _ in range(self.config.max_tries):
            y = int(rng.integers(0, height - box.shape[0], endpoint=True))
            x = int(rng.integers(0, width - box.shape[1], endpoint=True))
            inside = float(fg[y : y + box.shape[0], x : x + box.shape[1]][box].sum()) / area
            if inside > best[2]:
                best = (y, x, inside)
            if inside >= self.config.min_inside:
                break
        return best

    def generate(
        self, image: np.ndarray, rng: np.random.Generator, *, defect: np.ndarray, defect_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Paste the defect of ``defect`` (where ``defect_mask > 0``) into a copy of ``image``.

        Args:
            image: normal image, ``np.uint8`` (H, W), (H, W, 1) or (H, W, 3).
            rng: numpy random generator; the only source of randomness.
            defect: the real defect image, ``np.uint8`` with the channel layout of ``image`` (any H', W').
            defect_mask: its ground-truth mask (H', W'), bool or numeric (> 0 = defect).

        Returns:
            ``(image_out, mask)``: ``image_out`` with the shape and dtype of ``image``; ``mask`` bool (H, W), the
            placed defect mask (1 = anomaly).

        Raises:
            ValueError: on invalid images, mismatched shapes, an empty mask, or a defect whose box does not fit.
        """
        src_mask = self._check(image, defect, defect_mask)
        cfg = self.config
        height, width = image.shape[:2]
        src = _as_hwc(defect)
        # 1. cut the mask box plus margin
        grow = max(cfg.margin, cfg.feather)
        y0, x0, y1, x1 = _box(src_mask)
        cy0, cx0 = max(0, y0 - grow), max(0, x0 - grow)
        cy1, cx1 = min(src.shape[0], y1 + grow), min(src.shape[1], x1 + grow)
        # 2. flips and quarter turns
        patch, pmask, k = self._transform(src[cy0:cy1, cx0:cx1], src_mask[cy0:cy1, cx0:cx1], (height, width), rng)
        # 3. placement: the canvas top-left (ty, tx) puts the mask box at (y, x)
        fg = border_foreground(
            image, tolerance=cfg.fg_tolerance, close_radius=cfg.fg_close_radius, min_fraction=cfg.min_foreground
        )
        y, x, inside = self._place(pmask, fg, rng)
        by0, bx0, _, _ = _box(pmask)
        ty, tx = y - by0, x - bx0
        iy0, ix0 = max(0, ty), max(0, tx)
        iy1, ix1 = min(height, ty + pmask.shape[0]), min(width, tx + pmask.shape[1])
        canvas = (slice(iy0 - ty, iy1 - ty), slice(ix0 - tx, ix1 - tx))
        target = (slice(iy0, iy1), slice(ix0, ix1))
        mask = np.zeros((height, width), dtype=bool)
        mask[target] = pmask[canvas]
        base = _as_hwc(image)
        # 4. intensity match
        delta = np.zeros(base.shape[2])
        if cfg.intensity_match:
            tgt_mean, src_mean = ring_mean(base, mask, cfg.ring_width), ring_mean(src, src_mask, cfg.ring_width)
            if tgt_mean is not None and src_mean is not None:
                delta = tgt_mean - src_mean
        # 5. feathered alpha blend, written only where α > 0
        alpha = feather_alpha(pmask, cfg.feather)[canvas]
        blended = alpha[..., None] * (patch[canvas] + delta) + (1.0 - alpha[..., None]) * base[target]
        blended = np.rint(np.clip(blended, 0.0, 255.0)).astype(np.uint8)
        out = image.copy()
        region = out[target]
        touched = alpha > 0
        region[touched] = blended[touched].reshape(region[touched].shape)
        logger.debug(
            "RealPaste: mask area %d at (%d, %d), k=%d, %.2f inside the foreground, delta %s",
            int(mask.sum()),
            y,
            x,
            k,
            inside,
            np.round(delta, 1).tolist(),
        )
        return out, mask


def paste_in_place(image: np.ndarray, defect: np.ndarray, mask: np.ndarray, ring_width: int = 3) -> np.ndarray:
    """The real defect put where ``mask`` already lies: the reference image of a FAST reference start.

    Unlike :meth:`RealPaste.generate` nothing moves: the manifest has already placed the defect's own mask on the
    normal image, resized to it (nearest). The defect image ``D`` (H', W') is resized to the normal image ``I``
    (H, W) the same way the mask was, bilinearly, shifted by the ring-mean difference per channel
    (``δ = mean(I over ring(M)) − mean(D over ring(M))``, ``ring(M) = dilate(M, r) ∖ M``, as step 4 of the module
    docstring; δ = 0 for an empty ring), and written inside ``M`` only: ``out = M ⊙ round(clip(D + δ)) + (1 − M) ⊙ I``.

    Args:
        image: normal image, ``np.uint8`` (H, W), (H, W, 1) or (H, W, 3).
        defect: the real defect image, ``np.uint8`` with the channel layout of ``image`` (any H', W').
        mask: bool (H, W), the defect's mask at the normal image's size; nonempty.
        ring_width: r of the ring.

    Returns:
        ``image_out`` with the shape and dtype of ``image``.

    Raises:
        ValueError: on a dtype, channel or shape mismatch, or an empty mask.
    """
    check_image(image, "image")
    check_image(defect, "defect")
    if image.ndim != defect.ndim or (image.ndim == 3 and image.shape[2] != defect.shape[2]):
        raise ValueError(f"paste_in_place: image {image.shape} and defect {defect.shape} differ in channels")
    if mask.shape != image.shape[:2] or not mask.any():
        raise ValueError(f"paste_in_place: mask {mask.shape} must be nonempty and of the image size {image.shape[:2]}")
    height, width = image.shape[:2]
    if defect.shape[:2] != (height, width):  # one PIL image (L or RGB): every channel with the same kernel
        pil = Image.fromarray(defect if defect.ndim == 2 or defect.shape[2] == 3 else defect[..., 0])
        defect = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
    src, base = _as_hwc(defect), _as_hwc(image)
    tgt_mean, src_mean = ring_mean(base, mask, ring_width), ring_mean(src, mask, ring_width)
    delta = tgt_mean - src_mean if tgt_mean is not None and src_mean is not None else np.zeros(base.shape[2])
    out = image.copy().reshape(height, width, -1)
    out[mask] = np.rint(np.clip(src[mask] + delta, 0.0, 255.0)).astype(np.uint8)
    return out.reshape(image.shape)

"""Seeded geometric augmentation of binary anomaly masks: affine, flips, elastic warp, morphology, random placement.

One real mask (1 = anomaly, 0 = background) becomes a new, plausible mask of the same defect type. The geometry
(rotation, scale and shear about the mask's centroid, then flips about the image centre, then a smooth elastic
displacement) is composed into a single coordinate map and resampled once, bilinearly, then thresholded at 0.5, so
the result stays binary without the staircase of repeated nearest-neighbour resampling. Morphology (open, close,
dilate, erode with disc elements) and an integer translation of the mask's bounding box follow; both are exact on
binary arrays. Every random draw comes from the caller's ``np.random.Generator`` in a fixed order, so the same seed
gives the same mask. Pure numpy + scipy.ndimage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from fast_core.configbase import check_choices

logger = logging.getLogger(__name__)

__all__ = ["MaskAugmentConfig", "augment_mask", "disk"]


@dataclass(kw_only=True)
class MaskAugmentConfig:
    """Bounds of the random mask augmentation; every draw is uniform within its bounds.

    The forward map from input pixel ``p`` (row, col) to output pixel ``q`` is

        q = F · (c' + A · D · (p − c)) + f,    A = R(θ) · Sh(φ) · diag(s, s)

    with ``c`` the input centroid, ``D = diag(H'/H, W'/W)`` the rescale to the output shape, ``c' = D c`` (pixel
    centres), ``θ ~ U(−rotation_deg, rotation_deg)``, shear angle ``φ ~ U(−shear_deg, shear_deg)``,
    ``log s ~ U(log s_min, log s_max)``, and ``F``/``f`` optional mirrorings about the image centre. The elastic
    displacement is ``d = alpha · g / max|g|`` with ``g = G_sigma * U(−1, 1)`` per axis (Simard et al., 2003), so
    ``alpha`` is the largest displacement in output pixels.
    """

    rotation_deg: float = 30.0  # θ ~ U(-rotation_deg, +rotation_deg), about the mask centroid
    scale_range: tuple[float, float] = (0.8, 1.25)  # isotropic scale s, log-uniform in [min, max]
    shear_deg: float = 10.0  # shear angle φ ~ U(-shear_deg, +shear_deg) (x' = x + tan φ · y)
    hflip_prob: float = 0.5  # probability of a left-right mirror about the image centre
    vflip_prob: float = 0.5  # probability of an up-down mirror about the image centre
    elastic_alpha: float = 3.0  # largest elastic displacement in output pixels; 0 disables the elastic warp
    elastic_sigma: float = 8.0  # Gaussian smoothing (pixels) of the random displacement field
    interpolation: Literal["bilinear", "nearest"] = "bilinear"  # resampling before thresholding at 0.5
    open_prob: float = 0.2  # probability of a binary opening (removes thin spurs)
    close_prob: float = 0.2  # probability of a binary closing (fills narrow gaps)
    dilate_prob: float = 0.15  # probability of a dilation (grows the mask)
    erode_prob: float = 0.15  # probability of an erosion (shrinks the mask)
    morph_radius: tuple[int, int] = (1, 3)  # disc radius r ~ U{min..max} (pixels) for each applied operation
    random_placement: bool = True  # translate the mask's bounding box to a uniform random valid location
    placement_margin: int = 0  # minimum distance (pixels) between the placed bounding box and the image border
    max_tries: int = 8  # fresh draws when a result comes out empty; after that the empty mask is returned

    def __post_init__(self) -> None:
        """Validate choices and bounds; raise ``ValueError`` naming the offending field."""
        check_choices(self)
        for name in ("hflip_prob", "vflip_prob", "open_prob", "close_prob", "dilate_prob", "erode_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"MaskAugmentConfig.{name} = {p} must lie in [0, 1]")
        for name in ("rotation_deg", "shear_deg", "elastic_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"MaskAugmentConfig.{name} = {getattr(self, name)} must be >= 0")
        if not 0 <= self.shear_deg < 90:
            raise ValueError(f"MaskAugmentConfig.shear_deg = {self.shear_deg} must lie in [0, 90)")
        s_min, s_max = self.scale_range
        if not 0 < s_min <= s_max:
            raise ValueError(f"MaskAugmentConfig.scale_range = {self.scale_range} needs 0 < min <= max")
        if self.elastic_sigma <= 0:
            raise ValueError(f"MaskAugmentConfig.elastic_sigma = {self.elastic_sigma} must be > 0")
        r_min, r_max = self.morph_radius
        if not 1 <= r_min <= r_max:
            raise ValueError(f"MaskAugmentConfig.morph_radius = {self.morph_radius} needs 1 <= min <= max")
        if self.placement_margin < 0:
            raise ValueError(f"MaskAugmentConfig.placement_margin = {self.placement_margin} must be >= 0")
        if self.max_tries < 1:
            raise ValueError(f"MaskAugmentConfig.max_tries = {self.max_tries} must be >= 1")


def disk(radius: int) -> np.ndarray:
    """A boolean disc structuring element of the given radius, shape ``(2r+1, 2r+1)``: ``y² + x² <= r²``.

    >>> disk(1).astype(int)
    array([[0, 1, 0],
           [1, 1, 1],
           [0, 1, 0]])
    """
    if radius < 0:
        raise ValueError(f"disk radius must be >= 0, got {radius}")
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (y * y + x * x) <= radius * radius


def _morph(mask: np.ndarray, op: str, radius: int) -> np.ndarray:
    """Binary ``op`` in {"open", "close", "dilate", "erode"} with ``disk(radius)``, on a zero-padded copy.

    Padding by ``radius`` makes the image border behave like background for every operation alike (scipy's
    closing would otherwise erode masks that touch the border).
    """
    se = disk(radius)
    padded = np.pad(mask, radius, mode="constant", constant_values=False)
    if op == "open":
        out = ndimage.binary_opening(padded, structure=se)
    elif op == "close":
        out = ndimage.binary_closing(padded, structure=se)
    elif op == "dilate":
        out = ndimage.binary_dilation(padded, structure=se)
    elif op == "erode":
        out = ndimage.binary_erosion(padded, structure=se)
    else:
        raise ValueError(f"unknown morphology op {op!r}; valid: 'open', 'close', 'dilate', 'erode'")
    return out[radius:-radius, radius:-radius]


def _warp(mask: np.ndarray, rng: np.random.Generator, cfg: MaskAugmentConfig, out_shape: tuple[int, int]) -> np.ndarray:
    """Affine (about the centroid) + flips (about the image centre) + elastic warp, resampled once and thresholded."""
    h, w = mask.shape
    ho, wo = out_shape
    # 1. draws, in a fixed order
    theta = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    phi = math.radians(rng.uniform(-cfg.shear_deg, cfg.shear_deg))
    s_min, s_max = cfg.scale_range
    s = math.exp(rng.uniform(math.log(s_min), math.log(s_max)))
    hflip = rng.random() < cfg.hflip_prob
    vflip = rng.random() < cfg.vflip_prob

    # 2. forward linear map in (row, col) coordinates: A = R(θ) · Sh(φ) · s, then D rescales to the output grid
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    shear = np.array([[1.0, 0.0], [math.tan(phi), 1.0]])  # col' = col + tan φ · row
    rescale = np.diag([ho / h, wo / w])
    lin = rot @ shear @ (s * np.eye(2)) @ rescale  # (2, 2), acts on p - c
    c_in = np.array(ndimage.center_of_mass(mask))  # (row, col) centroid of the input mask
    c_out = (c_in + 0.5) * np.array([ho / h, wo / w]) - 0.5  # the same point on the output pixel grid
    flip = np.diag([-1.0 if vflip else 1.0, -1.0 if hflip else 1.0])
    centre = np.array([(ho - 1) / 2.0, (wo - 1) / 2.0])
    # forward: q = flip · (c_out + lin · (p − c_in) − centre) + centre
    # inverse: p = c_in + lin⁻¹ · (flip · (q − centre) + centre − c_out)
    inv = np.linalg.inv(lin)

    # 3. output grid q plus the elastic displacement d(q); sampling happens at q + d(q)
    qr, qc = np.meshgrid(np.arange(ho, dtype=np.float64), np.arange(wo, dtype=np.float64), indexing="ij")
    if cfg.elastic_alpha > 0:
        for grid in (qr, qc):
            g = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, size=(ho, wo)), cfg.elastic_sigma, mode="reflect")
            peak = np.abs(g).max()
            if peak > 0:
                grid += cfg.elastic_alpha * g / peak

    # 4. back-map every output pixel into the input and resample once
    u = flip @ np.stack([qr.ravel() - centre[0], qc.ravel() - centre[1]]) + (centre - c_out)[:, None]  # (2, N)
    p = c_in[:, None] + inv @ u  # (2, N) input (row, col)
    order = 1 if cfg.interpolation == "bilinear" else 0
    vals = ndimage.map_coordinates(mask.astype(np.float32), p, order=order, mode="constant", cval=0.0)
    return vals.reshape(ho, wo) >= 0.5


def _place(mask: np.ndarray, rng: np.random.Generator, margin: int) -> np.ndarray:
    """Translate the mask's bounding box to a uniform random top-left corner that keeps it ``margin`` px inside.

    Along an axis where the box does not fit inside the margins, the box is centred on that axis instead.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = mask[r0:r1, c0:c1]
    out = np.zeros_like(mask)
    starts = []
    for size, extent in ((r1 - r0, mask.shape[0]), (c1 - c0, mask.shape[1])):
        lo, hi = margin, extent - margin - size
        starts.append(int(rng.integers(lo, hi + 1)) if hi >= lo else (extent - size) // 2)
    out[starts[0] : starts[0] + box.shape[0], starts[1] : starts[1] + box.shape[1]] = box
    return out


def augment_mask(
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: MaskAugmentConfig | None = None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """A randomly augmented copy of a binary mask (1 = anomaly), reproducible from ``rng``.

    Steps: (1) affine about the centroid + flips about the image centre + elastic warp, composed and resampled once
    (bilinear or nearest, then ``>= 0.5``); (2) open, close, dilate, erode, each with its own probability and a disc
    of radius ``r ~ U{morph_radius}``; (3) optional random placement of the bounding box. The mask is treated in
    normalised image coordinates, so a mask drawn on a 1024×1024 image lands on a 256×256 ``out_shape`` at the same
    relative place and area fraction (before scaling).

    Empty results: when a draw leaves no pixel (e.g. strong erosion of a thin scratch), the augmentation is redrawn
    from ``rng``, at most ``cfg.max_tries`` times in all; if every try is empty, the empty mask is returned (with a
    warning logged) and :class:`fast_core.masks.filters.MaskFilter` rejects it with reason ``"empty"``.

    Args:
        mask: ``(H, W)`` boolean (or 0/1) array with at least one anomaly pixel.
        rng: numpy generator; the same seed gives the same mask.
        cfg: augmentation bounds; defaults to ``MaskAugmentConfig()``.
        out_shape: ``(H', W')`` of the result; defaults to the input shape.

    Returns:
        ``(H', W')`` boolean mask.

    Raises:
        ValueError: if ``mask`` is not 2-D, is empty, or ``out_shape`` is not two positive integers.

    >>> m = np.zeros((64, 64), bool); m[20:40, 25:35] = True
    >>> a = augment_mask(m, np.random.default_rng(0))
    >>> b = augment_mask(m, np.random.default_rng(0))
    >>> a.dtype, a.shape, bool((a == b).all())
    (dtype('bool'), (64, 64), True)
    """
    cfg = cfg or MaskAugmentConfig()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"augment_mask expects a 2-D (H, W) mask, got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("augment_mask got an empty mask (no anomaly pixel); there is nothing to augment")
    if out_shape is None:
        out_shape = mask.shape
    if len(out_shape) != 2 or min(out_shape) < 1:
        raise ValueError(f"out_shape must be two positive integers (H, W), got {out_shape}")
    out_shape = (int(out_shape[0]), int(out_shape[1]))

    ops = (("open", cfg.open_prob), ("close", cfg.close_prob), ("dilate", cfg.dilate_prob), ("erode", cfg.erode_prob))
    r_min, r_max = cfg.morph_radius
    out = np.zeros(out_shape, dtype=bool)
    for _ in range(cfg.max_tries):
        out = _warp(mask, rng, cfg, out_shape)
        for op, prob in ops:
            apply = rng.random() < prob
            radius = int(rng.integers(r_min, r_max + 1))
            if apply and out.any():
                out = _morph(out, op, radius)
        if out.any():
            if cfg.random_placement:
                out = _place(out, rng, cfg.placement_margin)
            return out
    logger.warning(
        "augment_mask: all %d tries gave an empty mask; returning it for the filters to reject", cfg.max_tries
    )
    return out

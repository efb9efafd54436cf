"""Shape novelty of generated masks: how close each one comes to a real training mask, up to position and scale.

A generated mask could match the real distribution of area, aspect and component count by copying one real mask,
moved and resized. To catch that, every mask is reduced to its *shape*, and each generated shape is compared with
every real one:

    shape(M)   = the bounding box of M, padded to a square (centred, so the aspect stays) and resampled to S × S
                 (S = 32): down by "any" pooling (a cell is on when any of its pixels is, so thin defects survive),
                 up by nearest neighbour
    IoU(a, b)  = |a ∧ b| / |a ∨ b|
    nearest(g) = max over real masks r, the 8 turns and flips D of the square and the shifts T of at most one cell
                 (resampling rounds a position by up to one cell): IoU(shape(g), T(D(shape(r))))

A generated mask with nearest(g) > 0.9 is a *near-copy*. Simple real shapes (round blowholes) are near-copies of
each other, so :func:`real_near_copy_fraction` gives the same figure for the real masks against one another
(leave-one-out) as the floor to read it against. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "NEAR_COPY_IOU",
    "SHAPE_SIZE",
    "bounding_box",
    "mask_and_box",
    "nearest_real_iou",
    "normalised_shape",
    "real_near_copy_fraction",
    "stretched_shape",
]

SHAPE_SIZE = 32  # side S of a normalised shape
NEAR_COPY_IOU = 0.9  # a generated mask whose nearest real shape has IoU above this is a near-copy


def bounding_box(mask: np.ndarray) -> np.ndarray | None:
    """The crop of a 2-D bool mask to its bounding box (a view), or None when it has no True pixel.

    >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
    >>> bounding_box(m).shape, bounding_box(np.zeros((2, 2), bool))
    ((2, 3), None)
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def mask_and_box(mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The bool (H, W) mask and its bounding-box crop (None when empty); ``ValueError`` naming ``where`` when the
    mask is not 2-D."""
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"{where} expects a 2-D (H, W) mask, got shape {m.shape}")
    return m, bounding_box(m)


def _resample_rows(a: np.ndarray, size: int) -> np.ndarray:
    """(n, w) → (size, w) along axis 0: any-pooling down (row i goes to ⌊i·size/n⌋), nearest up (⌊u·n/size⌋)."""
    n = a.shape[0]
    if n >= size:
        out = np.zeros((size, a.shape[1]), dtype=bool)
        np.logical_or.at(out, np.arange(n) * size // n, a)
        return out
    return a[np.arange(size) * n // size]


def _resample(a: np.ndarray, size: int) -> np.ndarray:
    """(n, w) → (size, size), each axis on its own by :func:`_resample_rows` (so thin defects survive going down)."""
    return _resample_rows(_resample_rows(a, size).T, size).T


def normalised_shape(mask: np.ndarray, size: int = SHAPE_SIZE) -> np.ndarray:
    """The S × S shape of a binary (H, W) mask (see the module docstring); all False for an empty mask.

    >>> m = np.zeros((40, 40), bool); m[10:12, 4:36] = True  # a 2 × 32 bar
    >>> s = normalised_shape(m, 8); s.sum(axis=1).tolist()
    [0, 0, 0, 8, 8, 0, 0, 0]
    """
    _, box = mask_and_box(mask, "normalised_shape")
    if box is None:
        return np.zeros((size, size), dtype=bool)
    h, w = box.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=bool)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = box
    return _resample(square, size)


def stretched_shape(mask: np.ndarray, size: int = SHAPE_SIZE) -> np.ndarray:
    """The S × S *stretched* shape of a binary (H, W) mask: its bounding box resampled to S × S along each axis on its
    own (any-pooling down, nearest up, as :func:`normalised_shape`), so the box fills the square whatever its aspect;
    all False for an empty mask. The aspect is what a caller keeps apart (a 3 × 150 crack and a 30 × 30 blowhole
    both fill the frame).

    >>> m = np.zeros((40, 40), bool); m[10:12, 4:36] = True  # a 2 × 32 bar
    >>> bool(stretched_shape(m, 8).all())
    True
    >>> d = np.eye(6, dtype=bool).repeat(2, axis=1)           # a diagonal, 6 × 12
    >>> stretched_shape(d, 3).astype(int).tolist()
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    """
    _, box = mask_and_box(mask, "stretched_shape")
    return np.zeros((size, size), dtype=bool) if box is None else _resample(box, size)


def _variants(shape: np.ndarray) -> list[np.ndarray]:
    """The 8 turns and flips of a square array, each shifted by (dy, dx) ∈ {−1, 0, 1}² with zero fill: 72 arrays."""
    turns = [np.rot90(shape, k) for k in range(4)]
    out = []
    for d in turns + [np.fliplr(t) for t in turns]:
        padded = np.pad(d, 1)
        n = d.shape[0]
        out.extend(padded[1 + dy : 1 + dy + n, 1 + dx : 1 + dx + n] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return out


def _shape_iou(generated: Sequence[np.ndarray], real: Sequence[np.ndarray]) -> np.ndarray:
    """(n_g, n_r) IoUs of normalised shapes, each real one at its best turn, flip and shift (:func:`_variants`)."""
    g = np.stack([s.reshape(-1) for s in generated]).astype(np.float32)  # (n_g, S²)
    r = np.stack([v.reshape(-1) for s in real for v in _variants(s)]).astype(np.float32)  # (72 n_r, S²)
    inter = g @ r.T
    union = g.sum(1, keepdims=True) + r.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)
    return iou.reshape(len(generated), len(real), -1).max(axis=2).astype(np.float64)


def nearest_real_iou(generated: Sequence[np.ndarray], real: Sequence[np.ndarray]) -> np.ndarray:
    """nearest(g) for each generated mask against the real masks (see the module docstring).

    Args:
        generated: binary (H, W) masks, any sizes.
        real: binary (H, W) masks, any sizes; at least one non-empty.

    Returns:
        (len(generated),) float64 IoUs in [0, 1]; an empty generated mask gets 0.

    >>> a = np.zeros((20, 20), bool); a[2:6, 2:14] = True      # a 4 × 12 bar
    >>> b = np.zeros((50, 50), bool); b[10:40, 30:40] = True    # the same bar, 2.5× larger and turned
    >>> nearest_real_iou([b], [a]).round(3).tolist()
    [1.0]
    """
    refs = [normalised_shape(r) for r in real if np.asarray(r).any()]
    if not refs:
        raise ValueError("nearest_real_iou needs at least one non-empty real mask")
    if not generated:
        return np.zeros(0, dtype=np.float64)
    return _shape_iou([normalised_shape(m) for m in generated], refs).max(axis=1)


def real_near_copy_fraction(real: Sequence[np.ndarray], threshold: float = NEAR_COPY_IOU) -> float | None:
    """The fraction of real masks that are near-copies of another real mask (leave-one-out); None with < 2 masks.

    >>> a = np.zeros((9, 9), bool); a[1:4, 1:8] = True
    >>> b = np.zeros((9, 9), bool); b[0:9, 3:5] = True
    >>> real_near_copy_fraction([a, a.T, b])
    0.6666666666666666
    """
    shapes = [normalised_shape(m) for m in real if np.asarray(m).any()]
    if len(shapes) < 2:
        return None
    iou = _shape_iou(shapes, shapes)
    np.fill_diagonal(iou, 0.0)  # leave each one out
    return float(np.mean(iou.max(axis=1) > threshold))

"""The box frame of the mask diffusion model: a mask's size apart from its shape, and a sampled shape put back.

A box-frame mask model (``MaskDiffusionConfig.frame == "box"``) learns shapes, not sizes or positions. Each real
training mask M of size (H, W) is reduced to its shape :func:`fast_core.masks.shapes.normalised_shape` (bounding box
padded to a centred square, resampled to S × S) and to its size

    f = max(box_h, box_w) / √(H · W)                                          (:func:`side_fraction`)

and the model keeps every key's real fractions f_1..f_n with its weights. A sample (an S × S shape) is put into an
output frame of (H, W) by two functions that draw from one generator, in this order:

    side = clamp(⌊f* · eᵘ · √(H · W) + ½⌋, 2, min(H, W)),   f* ~ U{f_1..f_n},  u ~ U(−j, j)       (:func:`draw_side`)
    mask = the shape resized to side × side, trimmed to its own bounding box, at a uniformly random position where
           it fits entirely                                                                   (:func:`place_shape`)

The jitter j (≥ 0) spreads the sizes around the real ones by a factor within [e^−j, e^j].

The *stretch* frame (``frame == "stretch"``) keeps the aspect apart too: a training mask is reduced to
:func:`fast_core.masks.shapes.stretched_shape` (its bounding box resampled to S × S along each axis on its own) and to
its box record (:func:`box_record`): the box's sides over the image's own sides and the stretched shape's fill,

    a = box_h / H,  b = box_w / W,  φ = mean(stretched_shape(M, S))

so a box is where the real mask's box lies once its image is brought to the output frame, as the stage's real and
augmented masks are (nearest-resized). A sample with fill φ̂ goes back into the box of a real mask of similar fill:

    i* ~ U{the ⌈√n⌉ records nearest to φ̂ in |ln φ − ln φ̂|}   (or U{1..n} with no φ̂)
    (h, w) = (clamp(⌊a_i* · eᵘ · H + ½⌋, 1, H), clamp(⌊b_i* · eᵘ · W + ½⌋, 1, W)),  u ~ U(−j, j)   (:func:`draw_box`)
    mask = the shape resized to h × w, specks dropped, trimmed, at a uniformly random position     (:func:`place_shape`)

One u scales both sides, so the real aspects are kept. The fill match keeps shape and box together: the model draws a
shape without knowing its box, and a thin sparse crack (fill 0.01 in a 256 × 64 box) must not get the box of a solid
one, nor a solid blob the box of a long sparse crack, or the areas come out tens of times too large. A thin crack
(a 3 × 150 box) fills the whole square as a stretched shape, which a small model learns far more easily than the
one-cell line it is in a padded square.

*Specks* (:func:`drop_specks`): a sampled shape can carry stray components of a few cells that the binarisation
leaves; at the output scale they are smaller than the filters' smallest component, or too many. Placement can drop the
components below ``min_px`` pixels and keep the ``max_components`` largest, before the box is trimmed (so a stray
speck neither rejects the mask nor stretches its box). A caller that wants a row's mask to depend on that row alone
seeds the generator from the row: :func:`placement_rng`. Pure numpy (and scipy.ndimage for the components).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from fast_core.masks.shapes import bounding_box, mask_and_box, stretched_shape

__all__ = [
    "MIN_SIDE",
    "PLACEMENT_STREAM",
    "bad_box_records",
    "bad_side_fractions",
    "box_record",
    "despeckled_sample",
    "draw_box",
    "draw_side",
    "drop_specks",
    "place_shape",
    "placement_rng",
    "resize_box",
    "resize_shape",
    "side_fraction",
]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as the mask filters count components

MIN_SIDE = 2  # the smallest side draw_side returns (a one-pixel defect is left to the filters' min_component_px)
PLACEMENT_STREAM = 0x706C6163  # "plac": second word of placement_rng's seed, apart from the row's other streams


def placement_rng(seed: int) -> np.random.Generator:
    """The placement generator of one row: ``np.random.default_rng([seed, PLACEMENT_STREAM])``.

    The row's torch noise stream is ``torch.Generator().manual_seed(seed)``; the extra word keeps the two apart.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"placement_rng: seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([int(seed), PLACEMENT_STREAM])


def side_fraction(mask: np.ndarray) -> float:
    """f = max(box_h, box_w) / √(H · W) of a binary (H, W) mask (its bounding box side over the frame's scale).

    >>> m = np.zeros((100, 400), bool); m[10:14, 50:250] = True   # a 4 × 200 crack in a 100 × 400 image
    >>> side_fraction(m)
    1.0

    Raises:
        ValueError: not 2-D, or no anomaly pixel (an empty mask has no box).
    """
    m, box = _mask_and_box(mask, "side_fraction")
    return float(max(box.shape) / math.sqrt(m.shape[0] * m.shape[1]))


def _mask_and_box(mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The bool (H, W) mask and its bounding-box crop; ``ValueError`` when it is not 2-D or empty."""
    m, box = mask_and_box(mask, where)
    if box is None:
        raise ValueError(f"{where}: the mask is empty, so it has no bounding box")
    return m, box


def box_record(mask: np.ndarray, size: int) -> tuple[float, float, float]:
    """(a, b, φ) = (box_h / H, box_w / W, mean(stretched_shape(mask, size))) of a binary (H, W) mask: its bounding
    box's sides over the image's sides, and how much of its stretched S × S shape is anomaly.

    >>> m = np.zeros((100, 400), bool); m[10:14, 50:250] = True   # a 4 × 200 crack in a 100 × 400 image
    >>> box_record(m, 8)
    (0.04, 0.5, 1.0)

    Raises:
        ValueError: not 2-D, or no anomaly pixel.
    """
    m, box = _mask_and_box(mask, "box_record")
    fill = float(stretched_shape(m, size).mean())
    return float(box.shape[0] / m.shape[0]), float(box.shape[1] / m.shape[1]), fill


def bad_side_fractions(sides: Sequence[float]) -> list[object]:
    """The entries of ``sides`` that are not finite numbers > 0 (bools are not numbers here)."""
    return [f for f in sides if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f < math.inf]


def _check_frame(out_hw: tuple[int, int], where: str) -> tuple[int, int]:
    if len(out_hw) != 2:
        raise ValueError(f"{where}: out_hw must be (H, W), got {out_hw!r}")
    h, w = out_hw
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ValueError(f"{where}: out_hw must hold two integers, got {out_hw!r}")
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{where}: out_hw = {(int(h), int(w))} is smaller than {MIN_SIDE} pixels on a side")
    return int(h), int(w)


def draw_side(sides: Sequence[float], out_hw: tuple[int, int], rng: np.random.Generator, jitter: float) -> int:
    """The side in pixels of one placed shape: side = clamp(⌊f* · eᵘ · √(H · W) + ½⌋, 2, min(H, W)).

    Args:
        sides: the key's real side fractions f_1..f_n (each finite and > 0); f* is one of them, uniformly.
        out_hw: the output frame (H, W).
        rng: draws the index of f*, then u ~ U(−jitter, jitter), in that order.
        jitter: j ≥ 0; 0 gives the real sizes exactly (up to rounding and the clamp).

    >>> draw_side([0.25], (64, 256), np.random.default_rng(0), jitter=0.0)   # 0.25 · √(64 · 256) = 32
    32
    >>> draw_side([5.0], (64, 256), np.random.default_rng(0), jitter=0.0)    # clamped to min(H, W)
    64
    """
    h, w = _check_draw("draw_side", sides, bad_side_fractions(sides), out_hw, jitter)
    f = float(sides[int(rng.integers(len(sides)))])
    u = float(rng.uniform(-jitter, jitter))
    side = math.floor(f * math.exp(u) * math.sqrt(h * w) + 0.5)
    return int(min(max(side, MIN_SIDE), min(h, w)))


_DRAWN = {  # what each draw function reads per key: (name, frame that records it, rule)
    "draw_side": ("side fractions", "box", "finite numbers > 0"),
    "draw_box": ("box records", "stretch", "(a, b, fill) triples of numbers in (0, 1]"),
}


def _check_draw(
    where: str, values: Sequence[object], bad: list[object], out_hw: tuple[int, int], jitter: float
) -> tuple[int, int]:
    """The checked (H, W) of a draw; raises ``ValueError`` for a bad frame, no or bad ``values``, or a bad jitter."""
    name, frame, rule = _DRAWN[where]
    h, w = _check_frame(out_hw, where)
    if not len(values):
        raise ValueError(f"{where}: no {name} given; a {frame}-frame model records at least one per key")
    if bad:
        raise ValueError(f"{where}: {name} must be {rule}, got {bad[:3]}")
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < math.inf:
        raise ValueError(f"{where}: jitter must be a finite number >= 0, got {jitter!r}")
    return h, w


def draw_box(
    records: Sequence[Sequence[float]],
    out_hw: tuple[int, int],
    rng: np.random.Generator,
    jitter: float,
    fill: float | None = None,
) -> tuple[int, int]:
    """The (h, w) in pixels of one placed stretched shape (the module docstring's :func:`draw_box` line).

    Args:
        records: the key's real box records (a_i, b_i, φ_i) (:func:`box_record`; a, b in (0, 1], φ in (0, 1]).
        out_hw: the output frame (H, W).
        rng: draws the index among the candidates, then u ~ U(−jitter, jitter), in that order.
        jitter: j ≥ 0; one factor eᵘ scales both sides, so the aspect stays a real one (up to rounding and clamps).
        fill: the sample's stretched fill φ̂ in (0, 1]; the candidates are the ⌈√n⌉ records nearest to it in
            |ln φ − ln φ̂| (ties: the first). None: every record.

    >>> recs = [(0.125, 0.25, 1.0), (0.5, 0.5, 0.02), (0.125, 0.25, 0.9), (0.5, 0.5, 0.03)]   # ⌈√4⌉ = 2 nearest
    >>> rng = np.random.default_rng(0)
    >>> {draw_box(recs, (64, 256), rng, jitter=0.0, fill=0.8) for _ in range(20)}    # solid: an 8 × 64 box
    {(8, 64)}
    >>> {draw_box(recs, (64, 256), rng, jitter=0.0, fill=0.01) for _ in range(20)}   # sparse: a 32 × 128 box
    {(32, 128)}
    """
    h, w = _check_draw("draw_box", records, bad_box_records(records), out_hw, jitter)
    candidates = np.arange(len(records))
    if fill is not None:
        if not 0 < fill <= 1:
            raise ValueError(f"draw_box: fill must lie in (0, 1], got {fill!r}")
        gap = np.abs(np.log([float(r[2]) for r in records]) - math.log(fill))
        candidates = np.argsort(gap, kind="stable")[: math.ceil(math.sqrt(len(records)))]
    a, b, _ = (float(v) for v in records[int(candidates[int(rng.integers(len(candidates)))])])
    e = math.exp(float(rng.uniform(-jitter, jitter)))
    return min(max(math.floor(a * e * h + 0.5), 1), h), min(max(math.floor(b * e * w + 0.5), 1), w)


def bad_box_records(records: Sequence[Sequence[float]]) -> list[object]:
    """The entries of ``records`` that are not (a, b, fill) triples of finite numbers in (0, 1]."""
    return [
        r
        for r in records
        if not isinstance(r, Sequence) or len(r) != 3 or bad_side_fractions(list(r)) or any(float(v) > 1 for v in r)
    ]


def _area_overlaps(size: int, side: int) -> np.ndarray:
    """(side, size) int64 o[u, i] = |[u·S, (u+1)·S) ∩ [i·side, (i+1)·side)|: the overlap of output cell u with input
    cell i along one axis, in units of 1/side of an input cell (a row sums to S = ``size``)."""
    u = np.arange(side, dtype=np.int64)[:, None]
    i = np.arange(size, dtype=np.int64)[None, :]
    lo = np.maximum(u * size, i * side)
    hi = np.minimum((u + 1) * size, (i + 1) * side)
    return np.maximum(hi - lo, 0)


def _axis_weights(size: int, n: int) -> tuple[np.ndarray, int]:
    """(n, S) int64 weights A and their row sum N of one axis resized from S = ``size`` cells to ``n`` pixels:
    nearest up (A[u, ⌊u·S/n⌋] = 1, N = 1), area down (A = :func:`_area_overlaps`, N = S)."""
    if n >= size:
        a = np.zeros((n, size), dtype=np.int64)
        a[np.arange(n), np.arange(n) * size // n] = 1
        return a, 1
    return _area_overlaps(size, n), size


def resize_box(shape: np.ndarray, box_hw: tuple[int, int]) -> np.ndarray:
    """A square bool (S, S) shape resized to (h, w), each axis on its own.

    Per axis, up (n ≥ S) is nearest neighbour and down (n < S) an area average; a pixel is on when the shape covers at
    least half of it: out = [2 · (A_h · shape · A_wᵀ) ≥ N_h · N_w] (:func:`_axis_weights`), exact in integers. With
    both axes up this is plain nearest neighbour: every cell covers at least one pixel, nothing is lost. Going down,
    blobs keep their outline to within a pixel; a structure w cells thin across an axis that shrinks by S/n survives
    only where it covers half a pixel, so below n = S / (2w) it vanishes and just above it can break into dashes. An
    empty result is the caller's to reject; it is never filled in.

    >>> bar = np.zeros((8, 8), bool); bar[3, :] = True                  # a one-cell bar
    >>> np.flatnonzero(resize_box(bar, (20, 20)).all(axis=1)).tolist()  # up 2.5×: full rows, 2 (or 3) thick
    [8, 9]
    >>> resize_box(bar, (4, 4)).sum(axis=1).tolist()                    # down 2×: it covers half of row 1
    [0, 4, 0, 0]
    >>> bool(resize_box(bar, (3, 3)).any())                              # down 8/3×: 3/8 of a row at most
    False
    >>> band = np.zeros((8, 8), bool); band[2:6, :] = True               # half the square
    >>> resize_box(band, (2, 5)).astype(int).tolist()                    # 2 × 5: down across, up along
    [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    """
    s = np.asarray(shape).astype(bool)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        raise ValueError(f"resize_box expects a square (S, S) shape, got shape {s.shape}")
    if len(box_hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in box_hw):
        raise ValueError(f"resize_box: box_hw must be two integers >= 1, got {box_hw!r}")
    size = s.shape[0]
    (a_h, n_h), (a_w, n_w) = _axis_weights(size, int(box_hw[0])), _axis_weights(size, int(box_hw[1]))
    covered = a_h @ s.astype(np.int64) @ a_w.T  # (h, w)
    return 2 * covered >= n_h * n_w


def resize_shape(shape: np.ndarray, side: int) -> np.ndarray:
    """A square bool (S, S) shape resized to (side, side): :func:`resize_box` with both sides equal.

    * side ≥ S, nearest neighbour: out[u, v] = shape[⌊u·S/side⌋, ⌊v·S/side⌋].
    * side < S, area average then ≥ ½: out[u, v] = [Σ_ij a_ui a_vj shape[i, j] ≥ ½], with a_ui the fraction of output
      pixel u's extent (S/side cells) that cell i covers.

    >>> disc = np.add.outer((np.arange(8) - 3.5) ** 2, (np.arange(8) - 3.5) ** 2) <= 9
    >>> resize_shape(disc, 4).astype(int).tolist()
    [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
    """
    if isinstance(side, bool) or not isinstance(side, int | np.integer) or side < 1:
        raise ValueError(f"resize_shape: side must be an integer >= 1, got {side!r}")
    return resize_box(shape, (int(side), int(side)))


def drop_specks(mask: np.ndarray, min_px: float, max_components: int, px_per_cell: float = 1.0) -> np.ndarray:
    """``mask`` without its specks: the 8-connected components whose size in cells × ``px_per_cell`` is below
    ``min_px`` go, and of the rest the ``max_components`` largest stay (ties: the first in raster order).

    ``px_per_cell`` estimates how many output pixels a cell becomes (a shape about to be resized), so a sample can be
    cleaned before its box is measured.

    >>> m = np.zeros((6, 8), bool); m[1:4, 1:4] = True; m[5, 7] = True; m[0, 6:8] = True
    >>> [int(drop_specks(m, *a).sum()) for a in ((4, 5), (1, 5), (1, 1), (4, 5, 0.25))]
    [9, 12, 9, 0]
    """
    m = np.asarray(mask).astype(bool)
    if isinstance(max_components, bool) or not isinstance(max_components, int) or max_components < 1:
        raise ValueError(f"drop_specks: max_components must be an integer >= 1, got {max_components!r}")
    if not min_px >= 0 or not px_per_cell > 0:
        raise ValueError(f"drop_specks: min_px must be >= 0 and px_per_cell > 0, got {min_px!r}, {px_per_cell!r}")
    labels, n = ndimage.label(m, structure=_EIGHT)
    if n == 0:
        return m
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # (n,) cells per component
    big = np.flatnonzero(sizes * px_per_cell >= min_px)
    keep = big[np.argsort(-sizes[big], kind="stable")[:max_components]] + 1
    return np.isin(labels, keep)


def despeckled_sample(sample: np.ndarray, box: tuple[int, int], specks: tuple[float, int], square: bool) -> np.ndarray:
    """``sample`` without the components that would be specks (``specks = (min_px, max_components)``, as
    :func:`drop_specks`) once its own box is brought to ``box`` = (h, w) pixels (square:
    padded to a square first, as ``normalised_shape`` does); repeated until nothing more goes, as dropping a component
    can shrink the box and so enlarge what a cell becomes."""
    min_px, max_components = specks
    for _ in range(8):
        own = bounding_box(sample)
        if own is None:
            return sample
        bh, bw = own.shape
        if square:
            bh = bw = max(bh, bw)
        kept = drop_specks(sample, min_px, max_components, px_per_cell=box[0] / bh * box[1] / bw)
        if np.array_equal(kept, sample):
            return sample
        sample = kept
    return sample


def place_shape(
    shape: np.ndarray,
    box_hw: tuple[int, int],
    out_hw: tuple[int, int],
    rng: np.random.Generator,
    specks: tuple[float, int] | None = None,
) -> np.ndarray:
    """Put a sampled S × S shape into an empty (H, W) frame in an h × w box (the module docstring's placement step).

    The shape is resized to h × w (:func:`resize_box`: nearest up, area average ≥ ½ down, per axis), cleaned of its
    specks when ``specks = (min_px, max_components)`` is given (:func:`drop_specks`), trimmed to its own bounding box
    (h', w'), and put at top ~ U{0..H − h'}, left ~ U{0..W − w'}: always entirely inside. An empty shape, or one that
    the downscale or the cleaning empties, gives an all-False mask and draws nothing.

    Args:
        shape: bool (S, S), True = anomaly.
        box_hw: (h, w) in pixels, 1 ≤ h ≤ H, 1 ≤ w ≤ W (:func:`draw_side` twice for the box frame, :func:`draw_box`).
        out_hw: the output frame (H, W).
        rng: draws top, then left.
        specks: (min_px, max_components) to drop specks with, or None to keep every component.

    Returns:
        bool (H, W).

    >>> bar = np.zeros((8, 8), bool); bar[3, 1:7] = True
    >>> m = place_shape(bar, (16, 16), (20, 30), np.random.default_rng(0))
    >>> m.shape, int(m.sum()), int(m.any(axis=1).sum()), int(m.any(axis=0).sum())   # 12 × 2 pixels
    ((20, 30), 24, 2, 12)
    """
    h, w = _check_frame(out_hw, "place_shape")
    ok = (
        isinstance(box_hw, tuple | list)
        and len(box_hw) == 2
        and all(not isinstance(v, bool) and isinstance(v, int | np.integer) for v in box_hw)
    )
    if not ok or not (1 <= box_hw[0] <= h and 1 <= box_hw[1] <= w):
        raise ValueError(f"place_shape: box_hw must be two integers in 1..{h} and 1..{w} (H, W), got {box_hw!r}")
    resized = resize_box(shape, (int(box_hw[0]), int(box_hw[1])))
    if specks is not None:
        resized = drop_specks(resized, *specks)
    out = np.zeros((h, w), dtype=bool)
    box = bounding_box(resized)
    if box is None:
        return out
    bh, bw = box.shape
    top = int(rng.integers(0, h - bh + 1))
    left = int(rng.integers(0, w - bw + 1))
    out[top : top + bh, left : left + bw] = box
    return out

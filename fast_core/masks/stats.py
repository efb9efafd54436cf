"""Mask statistics and how far the generated masks' distribution lies from the real masks', for ``stats.json``.

Per mask: area fraction, number of 8-connected components, bounding-box aspect ratio (width / height) and
compactness 4π·area / perimeter² (:func:`fast_core.masks.filters.compactness`, the measure the filters use: about 0.9
for a digital disc, → 0 for thin shapes). Per statistic, :func:`compare_mask_sets` reports the 1-D Wasserstein
distance between the generated and real samples (:func:`wasserstein_1d`, computed from the sorted samples) and a
histogram summary of each on shared bin edges, as plain JSON-ready Python values; with the shapes' nearest-real IoU
of :mod:`fast_core.masks.shapes` (how many generated masks are near-copies of a real one, next to the same figure
among the real masks). Pure numpy + scipy.ndimage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

from fast_core.masks.filters import compactness
from fast_core.masks.shapes import NEAR_COPY_IOU, nearest_real_iou, real_near_copy_fraction

__all__ = ["STAT_NAMES", "collect_mask_stats", "compare_mask_sets", "histogram_summary", "mask_stats", "wasserstein_1d"]

STAT_NAMES: tuple[str, ...] = ("area_fraction", "num_components", "bbox_aspect", "compactness")
_EIGHT = np.ones((3, 3), dtype=bool)
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def mask_stats(mask: np.ndarray) -> dict[str, float]:
    """Statistics of one binary mask (1 = anomaly).

    Returns:
        ``area_fraction`` = |mask| / (H·W); ``num_components`` (8-connectivity); ``bbox_aspect`` = width / height of
        the bounding box of all anomaly pixels; ``compactness`` = 4πA / P² of
        :func:`fast_core.masks.filters.compactness` (both NaN for an empty mask).

    >>> m = np.zeros((10, 10), bool); m[2:4, 1:9] = True
    >>> {k: round(v, 4) for k, v in mask_stats(m).items()}
    {'area_fraction': 0.16, 'num_components': 1.0, 'bbox_aspect': 4.0, 'compactness': 0.7854}
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_stats expects a 2-D (H, W) mask, got shape {m.shape}")
    m = m.astype(bool)
    area = int(np.count_nonzero(m))
    _, n = ndimage.label(m, structure=_EIGHT)
    if area == 0:
        aspect = compact = math.nan
    else:
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        aspect = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
        compact = compactness(m)
    return {
        "area_fraction": area / m.size,
        "num_components": float(n),
        "bbox_aspect": float(aspect),
        "compactness": float(compact),
    }


def collect_mask_stats(masks: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Every statistic of :func:`mask_stats` over a set of masks, as float64 arrays keyed by :data:`STAT_NAMES`."""
    rows = [mask_stats(m) for m in masks]
    return {name: np.array([r[name] for r in rows], dtype=np.float64) for name in STAT_NAMES}


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """1-D Wasserstein-1 distance between two empirical distributions: ``W1 = ∫ |F_u(x) − F_v(x)| dx``.

    Computed exactly from the sorted pooled samples: between consecutive pooled values ``x_i < x_{i+1}`` both
    empirical CDFs are constant, so ``W1 = Σ_i |F_u(x_i) − F_v(x_i)| (x_{i+1} − x_i)``. For equal sample sizes this is
    ``mean |sort(u) − sort(v)|``. NaNs are dropped first.

    Raises:
        ValueError: if either sample has no finite value.

    >>> wasserstein_1d(np.array([0.0, 1.0, 3.0]), np.array([0.5, 1.5, 3.5]))
    0.5
    """
    a = np.asarray(u, dtype=np.float64).ravel()
    b = np.asarray(v, dtype=np.float64).ravel()
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        raise ValueError(f"wasserstein_1d needs non-empty samples, got sizes {a.size} and {b.size}")
    a.sort()
    b.sort()
    pooled = np.sort(np.concatenate([a, b]))
    deltas = np.diff(pooled)
    cdf_a = np.searchsorted(a, pooled[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, pooled[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * deltas))


def _py(x: float) -> float | None:
    """A JSON-safe float (NaN/inf become None)."""
    return float(x) if math.isfinite(x) else None


def histogram_summary(values: np.ndarray, edges: np.ndarray | None = None, bins: int = 10) -> dict[str, Any]:
    """Summary of a sample: size, mean, std, min, max, 5/25/50/75/95 % quantiles and a histogram.

    Args:
        values: 1-D sample; NaNs are dropped (and counted in ``n_nan``).
        edges: histogram bin edges; defaults to ``bins`` equal bins over the sample's range.
        bins: number of bins when ``edges`` is not given.

    Returns:
        A JSON-ready dict; statistics of an empty sample are None.

    >>> histogram_summary(np.array([1.0, 2.0, 3.0]), bins=2)["counts"]
    [1, 2]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = v[~np.isnan(v)]
    out: dict[str, Any] = {"n": int(finite.size), "n_nan": int(v.size - finite.size)}
    if finite.size == 0:
        out.update({k: None for k in ("mean", "std", "min", "max")})
        out["quantiles"] = {f"p{round(q * 100):02d}": None for q in _QUANTILES}
        out["edges"] = [] if edges is None else [float(e) for e in edges]
        out["counts"] = [] if edges is None else [0] * (len(edges) - 1)
        return out
    if edges is None:
        edges = np.histogram_bin_edges(finite, bins=bins)
    counts, edges = np.histogram(finite, bins=edges)
    out.update(
        {
            "mean": _py(finite.mean()),
            "std": _py(finite.std()),
            "min": _py(finite.min()),
            "max": _py(finite.max()),
            "quantiles": {
                f"p{round(q * 100):02d}": _py(x)
                for q, x in zip(_QUANTILES, np.quantile(finite, _QUANTILES), strict=True)
            },
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        }
    )
    return out


def compare_mask_sets(generated: Iterable[np.ndarray], real: Iterable[np.ndarray], bins: int = 10) -> dict[str, Any]:
    """Distribution distance between generated and real masks, per statistic, as a dict for ``stats.json``.

    For each name in :data:`STAT_NAMES`: ``wasserstein`` (:func:`wasserstein_1d`, None when either side has no
    finite value) and ``generated`` / ``real`` histogram summaries on shared edges spanning both samples.

    And ``shape``: each generated mask's nearest-real IoU (:func:`fast_core.masks.shapes.nearest_real_iou`) as a
    histogram summary on [0, 1], the fraction of near-copies (IoU > :data:`~fast_core.masks.shapes.NEAR_COPY_IOU`),
    and the same fraction among the real masks (leave-one-out) to read it against; None where undefined.

    Returns:
        ``{"n_generated": int, "n_real": int, "stats": {name: {"wasserstein", "generated", "real"}},
        "shape": {"nearest_real_iou", "near_copy_fraction", "real_near_copy_fraction"}}``.

    >>> m = np.zeros((8, 8), bool); m[2:5, 2:4] = True
    >>> compare_mask_sets([m, m], [m])["stats"]["area_fraction"]["wasserstein"]
    0.0
    """
    generated, real = list(generated), list(real)
    gen = collect_mask_stats(generated)
    ref = collect_mask_stats(real)
    out: dict[str, Any] = {"n_generated": int(gen[STAT_NAMES[0]].size), "n_real": int(ref[STAT_NAMES[0]].size)}
    stats: dict[str, Any] = {}
    for name in STAT_NAMES:
        g, r = gen[name], ref[name]
        pooled = np.concatenate([g, r])
        pooled = pooled[~np.isnan(pooled)]
        edges = np.histogram_bin_edges(pooled, bins=bins) if pooled.size else None
        has_both = bool((~np.isnan(g)).any() and (~np.isnan(r)).any())
        stats[name] = {
            "wasserstein": wasserstein_1d(g, r) if has_both else None,
            "generated": histogram_summary(g, edges=edges, bins=bins),
            "real": histogram_summary(r, edges=edges, bins=bins),
        }
    out["stats"] = stats
    out["shape"] = _shape_novelty(generated, real)
    return out


def _shape_novelty(generated: list[np.ndarray], real: list[np.ndarray]) -> dict[str, Any]:
    """The ``shape`` entry of :func:`compare_mask_sets`."""
    has_real = any(np.asarray(r).any() for r in real)
    iou = nearest_real_iou(generated, real) if has_real else np.zeros(0)
    return {
        "nearest_real_iou": histogram_summary(iou, edges=np.linspace(0.0, 1.0, 11)),
        "near_copy_fraction": float(np.mean(iou > NEAR_COPY_IOU)) if iou.size else None,
        "real_near_copy_fraction": real_near_copy_fraction(real),
    }

"""Context leak: how much of a defect reaches the latent cells beside its mask, where the clean background is read.

An inpaint UNet (and a context FARM) reads the clean background (1 − m) ⊙ z_0 around the latent mask m = down(M). In
training z_0 = E(x) encodes the real defect image, and the first stage's receptive field spreads each defect into the
cells around m; at synthesis the background is a normal image's, with no such trace. A model that learns to read the
defect from those cells paints it fainter where they are missing. This measures the trace on the training-third
windows (cut as :mod:`benchmarks.generator_probe` cuts them, as the model was trained):

    x'    = x with the pixels of M (dilated by ``--dilate`` px) replaced by a harmonic fill from the pixels around them
            (Jacobi iterations of the 4-neighbour mean, started from the mean of the band around the region)
    d     = Σ_c (E(x) − E(x'))²                       per latent cell: the defect's own latent signature
    ring r = dilate_r(m) − dilate_{r−1}(m)            cells at Chebyshev distance r from m (ring 0 = m itself)

and reports, per ring, the mean of d, its share of Σ d, and per defect type ring 1 / ring 0; the per-cell latent
variance Σ_c var(z) over the windows gives the scale of normal variation.

    python -m benchmarks.context_leak DATASET_ROOT MODEL_URI [--images 64] [--dilate 0] [--json F]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.generator_probe import load_probe_batch
from pipelines.model_store import load_model

RINGS = 4  # rings 1..RINGS around m are reported one by one; the cells beyond them as "rest"


def harmonic_fill(x: torch.Tensor, region: torch.Tensor, iters: int = 500) -> torch.Tensor:
    """``x`` (B, C, H, W) with ``region`` (B, 1, H, W, 1 = replace) filled from the pixels around it.

    x'_0 = x outside the region, the mean of the 1-px band around it inside; then ``iters`` Jacobi steps of
    x' ← (1 − r) x + r · mean₄(x'), mean₄ the 4-neighbour mean (edges replicated). Outside the region x' = x exactly.
    """
    region = region.to(x.dtype)
    band = F.max_pool2d(region, 3, 1, 1) - region  # (B, 1, H, W)
    mean = (x * band).sum((2, 3), keepdim=True) / band.sum((2, 3), keepdim=True).clamp(min=1.0)
    known = x * (1 - region)
    out = known + region * mean
    kernel = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]], dtype=x.dtype)
    kernel = kernel.view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    for _ in range(iters):
        out = known + region * F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    return out


def rings(m: torch.Tensor, n: int = RINGS) -> list[torch.Tensor]:
    """[m, ring 1, …, ring n, rest]: (B, 1, h, w) masks that partition the latent grid by Chebyshev distance to m."""
    out, cur = [m], m
    for _ in range(n):
        grown = F.max_pool2d(cur, 3, 1, 1)
        out.append(grown - cur)
        cur = grown
    return [*out, 1 - cur]


def _cell_mean(d: torch.Tensor, cells: torch.Tensor) -> float:
    """Mean of d over the cells where ``cells`` is 1 (0 when there are none)."""
    return float((d * cells).sum() / cells.sum().clamp(min=1))


@torch.no_grad()
def measure(model: Any, x: torch.Tensor, M: torch.Tensor, keys: list[str], dilate: int = 0) -> dict[str, Any]:
    """The figures of the module docstring for one model and batch of windows."""
    region = F.max_pool2d(M, 2 * dilate + 1, 1, dilate) if dilate else M
    z = model.encode(x).float()
    d = (z - model.encode(harmonic_fill(x, region)).float()).pow(2).sum(1, keepdim=True)  # (B, 1, h, w)
    parts = rings(model.latent_mask(M).float())
    names = ["mask", *[f"ring{r}" for r in range(1, len(parts) - 1)], "rest"]
    total = float(d.sum())
    out: dict[str, Any] = {
        "images": len(keys),
        "dilate_px": dilate,
        "latent_cell_variance": float(z.var(dim=(0, 2, 3)).sum()),
        "rings": {
            name: {
                "cells": int(p.sum()),
                "mean": _cell_mean(d, p),
                "share": float((d * p).sum()) / total,
            }
            for name, p in zip(names, parts, strict=True)
        },
        "per_defect_type": {},
    }
    for key in sorted(set(keys)):
        idx = [i for i, k in enumerate(keys) if k == key]
        fg, r1 = _cell_mean(d[idx], parts[0][idx]), _cell_mean(d[idx], parts[1][idx])
        out["per_defect_type"][key] = {
            "images": len(idx),
            "mask": fg,
            "ring1": r1,
            "ring1_over_mask": r1 / fg if fg else None,
        }
    return out


def markdown(row: dict[str, Any]) -> str:
    """Two tables: per ring, and per defect type."""
    lines = [
        f"per-cell latent variance Σ_c var(z) {row['latent_cell_variance']:.3f}; fill dilated {row['dilate_px']} px",
        "",
        "| cells | n | mean Σ_c (Δz)² | share of Σ |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['cells']} | {v['mean']:.4f} | {v['share']:.3f} |" for k, v in row["rings"].items()]
    lines += ["", "| defect type | images | mask | ring 1 | ring 1 / mask |", "|---|---:|---:|---:|---:|"]
    for k, v in row["per_defect_type"].items():
        ratio = "–" if v["ring1_over_mask"] is None else f"{v['ring1_over_mask']:.2f}"
        lines.append(f"| {k} | {v['images']} | {v['mask']:.4f} | {v['ring1']:.4f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure the context leak of MODEL_URI's first stage on DATASET_ROOT's training-third windows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset_root")
    ap.add_argument("model_uri", help="a published model folder (its first stage, windows and mask rule are used)")
    ap.add_argument("--images", type=int, default=64, help="training-third images (default 64)")
    ap.add_argument("--dilate", type=int, default=0, help="also fill this many pixels around M (default 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.images < 1 or args.dilate < 0:
        ap.error("--images must be >= 1 and --dilate >= 0")
    torch.set_num_threads(args.threads)
    model, info = load_model(args.model_uri)
    x, M, keys = load_probe_batch(
        args.dataset_root, info.image_size, info.image_channels, args.images, info.frame, info.window_margin,
        info.window_zoom, info.window_level,
    )  # fmt: skip
    row = measure(model, x, M, keys, args.dilate)
    print(markdown(row))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sample grids written at checkpoints so a person can look at what a stage has learnt (PNG, one file per grid).

    vae    row 1: inputs x            row 2: reconstructions decode(encode(x))
    base   one row per key: samples z_T ~ N(0, I) → DDIM (η = 0, ``nfe`` steps) on the base UNet ε_θ(z, t, c(key))
           (no FARM, no Adaptor) → decode; an inpaint UNet fills the preview masks on the preview normal images
           (its input z ‖ m ‖ (1 − m) z_bg) with the noised background re-injected after each step as synthesis
           does, z ← m z + (1 − m)(√ᾱ_prev z_bg + √(1 − ᾱ_prev) ξ), so the row shows what it paints in the mask
    fast   one row per sample: normal image | mask | fast_core.synthesis.synthesize (AIAS, FARM, ``nfe``)
    mask   one row per key: sampled masks

Cells are separated by 2-pixel white lines; a grayscale model gives a grayscale PNG. Every random draw comes from
generators seeded by the caller, so the same weights give the same grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fast_core.data.transforms import encode_png
from fast_core.models.ldm import FastLDM
from fast_core.samplers import alpha_bar, reinject_background, target_timestep
from fast_core.synthesis import SynthesisConfig, make_scheduler, synthesize, to_uint8

GAP = 2  # pixels between cells


def compose(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Tile uint8 cells (H, W) or (H, W, 3) of equal size into one image; rows may differ in length (padded white)."""
    cells = [c for row in rows for c in row]
    if not cells:
        raise ValueError("compose: no cells")
    rgb = any(c.ndim == 3 for c in cells)
    h, w = cells[0].shape[:2]
    ncols = max(len(row) for row in rows)
    shape = (len(rows) * (h + GAP) - GAP, ncols * (w + GAP) - GAP) + ((3,) if rgb else ())
    out = np.full(shape, 255, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if cell.shape[:2] != (h, w):
                raise ValueError(f"compose: cell ({i}, {j}) is {cell.shape[:2]}, expected {(h, w)}")
            if rgb and cell.ndim == 2:
                cell = np.repeat(cell[..., None], 3, axis=2)
            out[i * (h + GAP) : i * (h + GAP) + h, j * (w + GAP) : j * (w + GAP) + w] = cell
    return out


def _cells(images: torch.Tensor) -> list[np.ndarray]:
    """(B, C, H, W) in [−1, 1] → B uint8 cells (H, W) for C = 1, (H, W, 3) for C = 3."""
    arr = to_uint8(images)
    return [a[..., 0] if a.shape[-1] == 1 else a for a in arr]


def _from_uint8(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=torch.float32) / 127.5 - 1.0


@torch.no_grad()
def vae_grid(model: FastLDM, images: np.ndarray, device: torch.device) -> bytes:
    """PNG: inputs (row 1) and their reconstructions (row 2); ``images`` (N, C, S, S) uint8."""
    x = _from_uint8(images, device)
    rec = model.decode(model.encode(x)).float()
    return encode_png(compose([_cells(x), _cells(rec)]))


@torch.no_grad()
def base_grid(
    model: FastLDM,
    keys: Sequence[str],
    n: int,
    nfe: int,
    seed: int,
    device: torch.device,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> bytes:
    """PNG: ``n`` base-model samples per key (one row per key), DDIM with ``nfe`` steps from seeded noise.

    ``context`` (normal (N, C, S, S) uint8, masks (N, 1, S, S) uint8 {0, 1}) is required by an inpaint UNet: its
    samples fill the masks (cycled to ``n``) on those images.
    """
    rows = []
    h = model.config.unet.sample_size
    m = z_bg = mask = None
    if model.inpaint:
        if context is None or not len(context[0]) or not len(context[1]):
            raise ValueError("base_grid: an inpaint UNet needs normal images and masks to fill")
        pick = np.arange(n)
        x = _from_uint8(context[0][pick % len(context[0])], device)
        mask = torch.from_numpy(np.ascontiguousarray(context[1][pick % len(context[1])])).to(device).float()
        z_bg, m = model.encode(x).float(), model.latent_mask(mask)
    for i, key in enumerate(keys):
        gen = torch.Generator().manual_seed(seed + i)
        z = torch.randn((n, model.latent_channels, h, h), generator=gen).to(device)
        scheduler = make_scheduler(SynthesisConfig(sampler="ddim", nfe=nfe), device=device)
        for t in scheduler.timesteps:
            eps = model.unet_eps(z, t.to(device), [key] * n, m, z_bg, mask).float()
            t_e = target_timestep("ddim", scheduler, int(t))
            z = scheduler.step(eps, t, z).prev_sample
            if m is not None:  # background re-injection (the UNet paints only the mask)
                xi = torch.randn(z.shape, generator=gen).to(device)
                z = reinject_background(z, m, z_bg, alpha_bar(scheduler, t_e), xi)
        rows.append(_cells(model.decode(z).float()))
    return encode_png(compose(rows))


@torch.no_grad()
def fast_grid(
    model: FastLDM,
    normal: np.ndarray,
    masks: np.ndarray,
    keys: Sequence[str],
    nfe: int,
    seed: int,
    device: torch.device,
) -> bytes:
    """PNG: one row per sample: normal image | mask | synthesized (AIAS with FARM, ``nfe`` UNet calls).

    Args:
        normal: (N, C, S, S) uint8 normal images.
        masks: (N, 1, S, S) uint8 {0, 1} masks.
        keys: N defect keys.
    """
    x = _from_uint8(normal, device)
    m = torch.from_numpy(np.ascontiguousarray(masks)).to(device=device, dtype=torch.float32)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(keys))]
    out = synthesize(model, x, m, list(keys), SynthesisConfig(nfe=nfe, batch_size=len(keys)), gens, device)
    mask_cells = [(mk[0] * 255).astype(np.uint8) for mk in masks]
    if model.image_channels == 3:
        mask_cells = [np.repeat(c[..., None], 3, axis=2) for c in mask_cells]
    rows = [[a, b, c] for a, b, c in zip(_cells(x), mask_cells, _cells(out.images), strict=True)]
    return encode_png(compose(rows))


def mask_grid(masks_by_key: Sequence[np.ndarray]) -> bytes:
    """PNG: one row per key of sampled masks, each (n, H, W) bool or uint8 (0/1 or 0/255)."""
    rows = [[((np.asarray(m) > 0).astype(np.uint8) * 255) for m in masks] for masks in masks_by_key]
    return encode_png(compose(rows))

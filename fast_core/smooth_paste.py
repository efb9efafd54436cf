"""The smooth paste [ours]: carry only the decoded change that is coarser than the defect itself.

The residual paste (FAST_SPEC §3, ``paste = "residual"``) writes x_n + Δ inside M, with Δ = decode(z) − decode(z_bg).
Δ holds two things: the defect's shading (its level and shape, which the latent holds) and a high-frequency part
that replaces the surface's own striations by whatever the decoder draws from a sampled latent. On two CPU cores
that part is a flat fill with the decoder's fine grid, a texture no real surface has and an easy cue for a segmenter
(FAST_SPEC §8: FAST pairs fit to a loss of 0.27–0.32 on Magnetic Tile, Perlin's to 0.47–0.50, and transfer at
chance). The smooth paste keeps the surface's texture and carries the change only at the defect's own scale:

    r  = half-thickness of M in pixels: the number of 3 × 3 erosions that empty it (chessboard distance; the
         image border does not erode, so a mask cut by the frame keeps its thickness)
    σ  = min(k · r, σ_max)                                 k = ``SynthesisConfig.smooth_scale`` (0.5),
                                                           σ_max = ``SynthesisConfig.smooth_max_sigma`` (∞)
    x̂ = x_n + G_σ ∗ (M ⊙ Δ)                                G_σ: a normalised Gaussian, zero outside the image

A thin crack (r = 1, σ = 0.5 px) keeps nearly all of Δ; a wide, uneven patch (r = 30, σ = 15 px) moves the surface's
brightness under its own grain. A floor r_min (``SynthesisConfig.smooth_min_radius``, 0 by default) routes by mask
size: a mask with r < r_min keeps Δ itself (the residual paste), so thin defects, whose fine structure is the whole
of the defect, are not blurred, while area defects are:

    x̂ = x_n + M ⊙ Δ                 r < r_min
    x̂ = x_n + G_σ ∗ (M ⊙ Δ)         r ≥ r_min

Blurring M ⊙ Δ rather than Δ also fades the change inside M towards its edge, so nothing outside M leaks in and the
background stays bit-exact after the paste. At k = 0.5 the centre of a disc of radius r keeps 1 − e^(−2) = 86 % of
its change. One σ per sample: a mask of several parts is smoothed at the scale of its thickest one.

The cap σ_max [ours, off by default] cuts at the decoder's own scale instead of the defect's: a Gaussian keeps
exp(−2π²σ²/P²) of a pattern of period P, so at σ = 3 px the fill's 8-px cell pattern (TAEF2, f = 8) keeps 6 % and
what the latent paints across two cells or more keeps half or more (50 % at P = 16, 84 % at P = 32), where
σ = k · r = 10 px of a wide patch keeps 0.05 % at P = 16: the patch's painted structure, not only its mean shading.

Measured (benchmarks/RESULTS.md): smoothing every mask costs KolektorSDD's thin cracks 9.5 mIoU; with r_min = 8 in
the 128² window their pairs are byte for byte the residual paste's, and Magnetic Tile's anomaly IoU rises from 6.0 to
14.0 % without FARM (fray and uneven patches, r 14–21), beyond 2σ, but its segmenters also mark the tile's own shaded
border (1–5 % of the background far from any defect, against 0.2–0.6 % for CutPaste). With σ_max = 3 px that falls
1.4–9× without FARM, and FAST with FARM segments +3.9 mIoU above the residual paste (51.9 ± 0.2), beyond 2σ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["half_thickness", "smooth_change"]


def half_thickness(mask: torch.Tensor) -> torch.Tensor:
    """r per sample: how many 3 × 3 erosions empty ``mask`` (B, 1, H, W) (nonzero = inside); 0 for an empty mask,
    max(H, W) for one that fills the frame (it never erodes).

    >>> m = torch.zeros(1, 1, 9, 9); m[..., 2:7, 2:7] = 1  # a 5 × 5 square: erosions leave 3², 1², nothing
    >>> half_thickness(m).tolist()
    [3]
    """
    inside = (mask > 0.5).float()
    r = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    for _ in range(max(mask.shape[-2:])):
        if not bool(inside.flatten(1).any()):
            break
        r += inside.flatten(1).amax(dim=1).long()
        inside = -F.max_pool2d(-inside, 3, stride=1, padding=1)  # erosion (the image border is not an edge)
    return r


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable normalised Gaussian blur of (1, C, H, W) with zero padding (the kernel is cut at 3σ)."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)


def smooth_change(
    delta: torch.Tensor, mask: torch.Tensor, scale: float, min_radius: int = 0, max_sigma: float | None = None
) -> torch.Tensor:
    """G_σ ∗ (M ⊙ Δ) per sample, σ = min(``scale`` · r(M), ``max_sigma``), or M ⊙ Δ unsmoothed where
    r(M) < ``min_radius``; samples with an empty mask get zeros.

    Args:
        delta: Δ = decode(z) − decode(z_bg), (B, C, H, W).
        mask: M, (B, 1, H, W), 1 = anomaly.
        scale: k > 0.
        min_radius: r_min >= 0: thinner masks keep their change as it is (0: every mask is smoothed).
        max_sigma: σ_max > 0, the largest blur in pixels (None: σ = k · r for every mask).

    Returns:
        (B, C, H, W): the change to add to x_n inside M.

    >>> d = torch.ones(2, 1, 12, 12); m = torch.zeros(2, 1, 12, 12); m[0, :, 5, 2:10] = 1; m[1, :, 2:10, 2:10] = 1
    >>> out = smooth_change(d, m, 0.5, min_radius=2)  # a line (r = 1) kept as it is, a square (r = 4) smoothed
    >>> out[0].sum().item() == m[0].sum().item(), 0 < out[1, 0, 2, 2].item() < 1
    (True, True)
    """
    masked = delta * (mask > 0.5).to(delta.dtype)
    out = torch.zeros_like(delta)
    for i, r in enumerate(half_thickness(mask).tolist()):
        if r >= max(1, min_radius):
            sigma = scale * r if max_sigma is None else min(scale * r, max_sigma)
            out[i : i + 1] = _gaussian_blur(masked[i : i + 1], sigma)
        elif r > 0:
            out[i : i + 1] = masked[i : i + 1]
    return out

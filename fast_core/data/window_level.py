"""A window's grey level, brought to the model's level and back [ours] (``dataset.window_level``).

A generator trained on windows cut from defect images paints what it learned at the grey levels it learned them,
but synthesis paints on normal images, whose illumination can differ: on Magnetic Tile the normal images' backgrounds
are about 1.5× brighter than the training third's, so a dark fray patch painted at its trained level comes out
brighter than its surroundings there. With a window level L, every window the model sees is scaled by one gain so
that its background has mean L, in training and in synthesis alike:

    b  = mean of the window's pixels outside the mask M (every pixel when fewer than MIN_BACKGROUND_PX lie outside)
    g  = L / max(b, 1)                                  pixels p ∈ [0, 255]
    p' = clip(g · p, 0, 255)                            what the model sees
    out = p + (p'_out − p') / g                         synthesis: the model's change, brought back to the window

so a defect is learned and painted relative to the background it lies on (a multiplicative illumination model:
a pit that is half as bright as its surroundings stays so under any gain). Outside M the model's output equals its
input, so the output equals the window there bit for bit. L is the median of b over the training windows, measured
when they are cut and stored with the model (``ModelInfo.window_level``).
"""

from __future__ import annotations

import numpy as np
import torch

MIN_BACKGROUND_PX = 64  # fewer background pixels than this: the window's whole mean stands for its background


def background_mean(window: np.ndarray, mask: np.ndarray | None = None) -> float:
    """b: the mean grey level of ``window`` (C, S, S) uint8 over the pixels where ``mask`` (S, S) is 0, every
    channel pooled; over every pixel when ``mask`` is None or leaves fewer than MIN_BACKGROUND_PX outside it."""
    x = window.astype(np.float64)
    if mask is not None:
        outside = np.asarray(mask) == 0
        if int(outside.sum()) >= MIN_BACKGROUND_PX:
            return float(x[:, outside].mean())
    return float(x.mean())


def level_gain(level: float, background: float) -> float:
    """g = L / max(b, 1): the gain that brings a background mean b to the level L."""
    return float(level) / max(float(background), 1.0)


def scale_uint8(window: np.ndarray, gain: float) -> np.ndarray:
    """p' = clip(rint(g · p), 0, 255) of a uint8 window (training windows are stored as uint8)."""
    return np.clip(np.rint(window.astype(np.float32) * np.float32(gain)), 0, 255).astype(np.uint8)


def to_level(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """p' = clip(g · p) on model images x ∈ [−1, 1] (p = 127.5 (x + 1)): x' = clamp(g (x + 1) − 1, −1, 1).
    ``gain``: (B,), one per image of x (B, C, S, S)."""
    g = gain.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (g * (x + 1.0) - 1.0).clamp(-1.0, 1.0)


def from_level(x: torch.Tensor, x_level: torch.Tensor, out_level: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """out = x + (out' − x') / g, clamped to [−1, 1]: the model's change in the level frame, brought back to the
    window x it was cut from. Where out' = x' (outside the mask) the change is exactly 0 and, x lying in [−1, 1],
    this returns x bit for bit."""
    g = gain.to(out_level.dtype).view(-1, *([1] * (out_level.dim() - 1)))
    change = (out_level - x_level.to(out_level.dtype)) / g
    return (x.to(out_level.dtype) + change).clamp(-1.0, 1.0)

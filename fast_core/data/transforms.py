"""Images and masks between their stored form (uint8 arrays, PNG bytes) and the model's tensors.

    x = to_model_image(img, S, C)   uint8 (H, W) | (H, W, 3)  →  float32 (C, S, S),  x = 2 · resize(img) / 255 − 1
    M = to_model_mask(mask, S)      bool | 0/255 (H, W)       →  float32 (1, S, S) ∈ {0, 1}  (nearest-neighbour resize)

Images are resized with bicubic interpolation (a model sees every image at its training size S × S); masks with
nearest neighbour, so a resized mask stays exactly binary and is the label of the pair at that size.
The stored form alone (uint8 arrays, PNG bytes, no torch) is :mod:`fast_core.data.png`; its helpers are re-exported
here for callers that convert both ways.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fast_core.data.png import PNG_COMPRESS_LEVEL, decode_png, encode_png, pil_image, to_uint8_chw


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def to_model_image(img: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 image → (channels, size, size) float32 in [−1, 1], bicubic-resized; grey ↔ RGB converted as needed.

    >>> to_model_image(np.full((5, 7), 255, np.uint8), 4, 3).shape
    torch.Size([3, 4, 4])
    >>> float(to_model_image(np.zeros((4, 4, 3), np.uint8), 4, 1).min())
    -1.0
    """
    _check_size(size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    im = pil_image(img).convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr / 127.5 - 1.0)


def resize_pair(image: np.ndarray, mask: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a uint8 image (H, W[, 3]) bicubic and its mask (H, W) nearest-neighbour to ``width × height``.

    >>> img, m = resize_pair(np.zeros((4, 4), np.uint8), np.eye(4, dtype=np.uint8) * 255, 8, 2)
    >>> img.shape, m.shape, m.dtype
    ((2, 8), (2, 8), dtype('bool'))
    """
    _check_size(width)
    _check_size(height)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape} sizes differ")
    im = pil_image(image)
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.BICUBIC)
    m = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
    if m.size != (width, height):
        m = m.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(im, dtype=np.uint8).copy(), np.asarray(m) > 127


def to_model_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """bool or 0/255 (H, W) mask → (1, size, size) float32 in {0, 1}, nearest-neighbour resized (a pixel is anomalous
    when its value is > 0).

    >>> to_model_mask(np.eye(4, dtype=bool), 8).sum().item()
    16.0
    """
    _check_size(size)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    binary = (np.asarray(mask) > 0).astype(np.uint8) * 255
    im = Image.fromarray(binary, mode="L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(im) > 127).astype(np.float32))[None]


__all__ = [
    "PNG_COMPRESS_LEVEL",
    "decode_png",
    "encode_png",
    "resize_pair",
    "to_model_image",
    "to_model_mask",
    "to_uint8_chw",
]

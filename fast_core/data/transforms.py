"""Images and masks between their stored form (uint8 arrays, PNG bytes) and the model's tensors.

    x = to_model_image(img, S, C)   uint8 (H, W) | (H, W, 3)  →  float32 (C, S, S),  x = 2 · resize(img) / 255 − 1
    M = to_model_mask(mask, S)      bool | 0/255 (H, W)       →  float32 (1, S, S) ∈ {0, 1}  (nearest-neighbour resize)

Images are resized with bicubic interpolation (a model sees every image at its training size S × S); masks with
nearest neighbour, so a resized mask stays exactly binary and is the label of the pair at that size.
PNG encoding is deterministic (fixed compression level, no metadata chunks), so the same array gives the same bytes.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fast_core.data.layout import WIDE_MODES

PNG_COMPRESS_LEVEL = 6  # zlib level: fixed, so equal arrays give equal bytes


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def _pil_image(img: np.ndarray) -> Image.Image:
    """A PIL image (L or RGB) from a uint8 (H, W) or (H, W, 3) array."""
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        return Image.fromarray(img, mode="L")
    if img.ndim == 3 and img.shape[2] == 3:
        return Image.fromarray(img, mode="RGB")
    if img.ndim == 3 and img.shape[2] == 1:
        return Image.fromarray(img[..., 0], mode="L")
    raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {img.shape}")


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
    im = _pil_image(img).convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr / 127.5 - 1.0)


def to_uint8_chw(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 image (H, W) | (H, W, 3) → uint8 (channels, H, W) at its own size; grey ↔ RGB converted as needed
    (grey → RGB repeats the channel, RGB → grey is Pillow's BT.601 luma).

    >>> to_uint8_chw(np.zeros((5, 7), np.uint8), 3).shape
    (3, 5, 7)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    arr = np.asarray(_pil_image(img).convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


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
    im = _pil_image(image)
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


def encode_png(arr: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) array (or a bool mask, written 0/255) → PNG bytes, deterministically.

    >>> decode_png(encode_png(np.array([[0, 255]], np.uint8))).tolist()
    [[0, 255]]
    """
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    buf = io.BytesIO()
    _pil_image(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def decode_png(data: bytes, mode: Literal["L", "RGB"] | None = None) -> np.ndarray:
    """PNG (or any Pillow-readable) bytes → uint8 (H, W) for L / (H, W, 3) for RGB; ``mode`` None keeps L or RGB.

    Raises:
        ValueError: the bytes are not a complete image, their header claims more pixels than Pillow's decompression
            bomb limit (refused before decoding), the image is 16-bit or float (8-bit conversion would clip it), or
            (mode None) the image is neither L, 1 nor RGB.
    """
    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode = {mode!r} is not one of: None, 'L', 'RGB'")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in WIDE_MODES:
                raise ValueError(f"image mode {im.mode} is not 8-bit; convert it to 8-bit L or RGB")
            im.load()
            if mode is None:
                if im.mode == "1":
                    im = im.convert("L")
                elif im.mode not in ("L", "RGB"):
                    raise ValueError(f"image mode {im.mode} needs an explicit mode='L' or mode='RGB'")
                return np.asarray(im, dtype=np.uint8).copy()
            return np.asarray(im.convert(mode), dtype=np.uint8).copy()
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image refused before decoding ({len(data)} bytes): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ValueError(f"not a readable image ({len(data)} bytes): no image format Pillow can identify") from exc
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({len(data)} bytes): {exc}") from exc

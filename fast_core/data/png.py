"""Images and masks in their stored form: uint8 arrays and PNG bytes, with no torch.

PNG encoding is deterministic (fixed compression level, no metadata chunks), so the same array gives the same bytes.
This module imports only numpy and Pillow, so a CPU task that encodes or decodes pairs (the synthesis pipeline's
:mod:`pipelines.synthesize.encode` stage) does not pay torch's import in a fresh worker process.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from fast_core.data.layout import WIDE_MODES

PNG_COMPRESS_LEVEL = 6  # zlib level: fixed, so equal arrays give equal bytes


def pil_image(img: np.ndarray) -> Image.Image:
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


def to_uint8_chw(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 image (H, W) | (H, W, 3) → uint8 (channels, H, W) at its own size; grey ↔ RGB converted as needed
    (grey → RGB repeats the channel, RGB → grey is Pillow's BT.601 luma).

    >>> to_uint8_chw(np.zeros((5, 7), np.uint8), 3).shape
    (3, 5, 7)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    arr = np.asarray(pil_image(img).convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def encode_png(arr: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) array (or a bool mask, written 0/255) → PNG bytes, deterministically.

    >>> decode_png(encode_png(np.array([[0, 255]], np.uint8))).tolist()
    [[0, 255]]
    """
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    buf = io.BytesIO()
    pil_image(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
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

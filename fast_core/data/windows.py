"""Native-resolution windows (FAST_SPEC §9): where a window goes, how it is cut, and how its output goes back.

A model in the *window* frame never sees a whole image resized to S × S. It sees S × S windows cut at the image's own
pixel size, so a blowhole of a few pixels stays a few pixels instead of vanishing in the resize, and a defect fills a
larger share of the latent. For an image I (C, H, W) and a mask M (H, W) with bounding box of side
b = max(box height, box width), and a zoom z ≥ 1:

    side  = max(⌈S / z⌉, ⌈b · (1 + margin)⌉)               # the window's side in image pixels
    y0    ∈ {max(0, y_hi − side + 1) … min(y_lo, H − side)}  # the box lies inside [y0, y0 + side); likewise x0
    w     = resize_S(pad(I)[:, y0 : y0 + side, x0 : x0 + side])   # identity when side = S
    m     = [box_S(M[y0 : y0 + side, x0 : x0 + side]) > 0]  # any coverage: no defect pixel is lost

A box wider than S/(1 + margin) gives a larger window, resized down to S: large defects are painted at a coarser
scale with their context. A zoom z > 1 [ours] makes the smallest window ⌈S/z⌉ pixels, resized *up* to S: a defect
narrower than S/(z·(1 + margin)) then spans z times more latent cells (a 13-pixel blowhole: 1.6 cells of a 1/8 latent
at z = 1, 3.3 at z = 2), with z times less context around it. Normal windows are then cut at ⌈S/z⌉ too
(:func:`random_window`), so that the model sees one scale of texture.

Training draws y0, x0 uniformly from the valid range (random offset); synthesis centres the window on the box. Where
``side`` exceeds the image, the image is reflect-padded at the bottom/right (edge when it is too small to reflect),
like the segmenter's crops. The generated window goes back with

    x_out = I;  x_out[:, m_native] = resize_side(ŵ)[:, m_native]    # m_native = M inside the window, at native size

so the label is M itself and every pixel outside M is bit-exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fast_core.data.png import to_uint8_chw


@dataclass(frozen=True)
class Window:
    """A square region of an image: rows ``y0 … y0 + side − 1``, columns ``x0 … x0 + side − 1`` (may pass the
    bottom/right edge, which is then padded)."""

    y0: int
    x0: int
    side: int


def mask_at(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask (nonzero = anomaly) as bool (height, width): nearest-neighbour when its size differs (a manifest mask
    may come from another image)."""
    if mask.shape == (height, width):
        return mask > 0
    resized = Image.fromarray((mask > 0).astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y_lo, y_hi, x_lo, x_hi), inclusive, of the nonzero pixels of an (H, W) mask; ``ValueError`` when empty.

    >>> m = np.zeros((5, 6), bool); m[1:3, 2] = True
    >>> mask_box(m)
    (1, 2, 2, 2)
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("the mask is empty: no window can be placed around it")
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def min_side(size: int, zoom: float = 1.0) -> int:
    """⌈S / z⌉: the smallest window side, in image pixels, of a model of side S at zoom z.

    >>> min_side(128), min_side(128, 2.0), min_side(128, 3.0)
    (128, 64, 43)
    """
    return math.ceil(size / zoom - 1e-9)


def window_side(box: tuple[int, int, int, int], size: int, margin: float, zoom: float = 1.0) -> int:
    """side = max(⌈S / z⌉, ⌈b · (1 + margin)⌉), b the box's longer side.

    >>> window_side((0, 9, 0, 3), 16, 0.25), window_side((0, 99, 0, 3), 16, 0.25)
    (16, 125)
    >>> window_side((0, 9, 0, 3), 128, 0.25, zoom=2.0), window_side((0, 99, 0, 3), 128, 0.25, zoom=2.0)
    (64, 125)
    """
    b = max(box[1] - box[0] + 1, box[3] - box[2] + 1)
    return max(min_side(size, zoom), math.ceil(b * (1.0 + margin) - 1e-9))  # the tolerance keeps 100 · 1.1 at 110


def _place(lo: int, hi: int, side: int, n: int, rng: np.random.Generator | None) -> int:
    """Start of a ``side`` span containing [lo, hi] inside [0, n) when side ≤ n (else 0): uniform, or centred."""
    if side >= n:
        return 0
    first, last = max(0, hi - side + 1), min(lo, n - side)
    if rng is not None:
        return int(rng.integers(first, last + 1))
    return int(min(max(round((lo + hi + 1) / 2 - side / 2), first), last))


def window_around(
    mask: np.ndarray, size: int, margin: float, rng: np.random.Generator | None = None, zoom: float = 1.0
) -> Window:
    """The window of a mask (module docstring): random offset from ``rng`` (training), centred when None.

    >>> m = np.zeros((200, 300), bool); m[50:60, 280:290] = True
    >>> w = window_around(m, 64, 0.25); (w.side, w.y0 <= 50 and 59 < w.y0 + w.side, w.x0 + w.side <= 300)
    (64, True, True)
    """
    box = mask_box(mask)
    side = window_side(box, size, margin, zoom)
    h, w = mask.shape
    return Window(_place(box[0], box[1], side, h, rng), _place(box[2], box[3], side, w, rng), side)


def random_window(height: int, width: int, size: int, rng: np.random.Generator) -> Window:
    """A ``size`` × ``size`` window at a uniform position of an H × W image (at 0 along a shorter side); ``size`` is
    S, or :func:`min_side` at a zoom."""
    y0 = int(rng.integers(0, height - size + 1)) if height > size else 0
    x0 = int(rng.integers(0, width - size + 1)) if width > size else 0
    return Window(y0, x0, size)


def pad_bottom_right(array: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Pad the last two axes at the bottom/right up to height × width with ``np.pad``'s ``mode``; ``"reflect"``
    falls back to ``"edge"`` when a side is too small to reflect the padding.

    >>> pad_bottom_right(np.arange(6, dtype=np.uint8).reshape(2, 3), 2, 5, "reflect").tolist()
    [[0, 1, 2, 1, 0], [3, 4, 5, 4, 3]]
    >>> pad_bottom_right(np.arange(3, dtype=np.uint8).reshape(1, 3), 2, 3, "reflect").tolist()  # too small: edge
    [[0, 1, 2], [0, 1, 2]]
    """
    h, w = array.shape[-2:]
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return array
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "edge"
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(array, pad, mode=mode)  # type: ignore[call-overload]


def _resize_channels(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (C, h, w) → (C, size, size), bicubic per channel (Pillow, antialiased when shrinking)."""
    return np.stack([np.asarray(Image.fromarray(ch).resize((size, size), Image.Resampling.BICUBIC)) for ch in image])


def cut_image(image: np.ndarray, window: Window, size: int) -> np.ndarray:
    """uint8 (C, H, W) → the window as uint8 (C, S, S): padded where it passes the edge, resized when side ≠ S."""
    y0, x0, side = window.y0, window.x0, window.side
    crop = pad_bottom_right(image, y0 + side, x0 + side, "reflect")[:, y0 : y0 + side, x0 : x0 + side]
    return np.ascontiguousarray(crop) if side == size else _resize_channels(crop, size)


def cut_mask(mask: np.ndarray, window: Window, size: int) -> np.ndarray:
    """(H, W) mask (nonzero = anomaly) → uint8 (S, S) in {0, 1}: zero-padded, box-filtered, any coverage counts."""
    y0, x0, side = window.y0, window.x0, window.side
    padded = pad_bottom_right(mask > 0, y0 + side, x0 + side, "constant")
    crop = padded[y0 : y0 + side, x0 : x0 + side].astype(np.uint8)
    if side == size:
        return crop
    box = Image.fromarray(crop * 255).resize((size, size), Image.Resampling.BOX)
    return (np.asarray(box) > 0).astype(np.uint8)


@dataclass(frozen=True)
class WindowCut:
    """One image and mask in the window frame: what the model sees and what the paste-back needs."""

    image: np.ndarray  # (C, S, S) uint8: the window, resized to S when side ≠ S
    mask: np.ndarray  # (S, S) uint8 in {0, 1}: the mask in the window (any coverage)
    window: Window  # where it was cut
    native: np.ndarray  # (C, H, W) uint8: the image at its own size, C channels
    label: np.ndarray  # (H, W) bool: the mask at the image's size


def cut_around(
    image: np.ndarray, mask: np.ndarray, size: int, channels: int, margin: float, zoom: float = 1.0
) -> WindowCut:
    """The centred window around ``mask`` in ``image`` (uint8 (H, W) or (H, W, 3); the mask nonzero = anomaly, of
    any size: resized to the image first, nearest), cut at S = ``size`` with ``channels`` channels, at zoom z."""
    native = to_uint8_chw(image, channels)
    label = mask_at(mask, *native.shape[1:])
    window = window_around(label, size, margin, zoom=zoom)
    return WindowCut(cut_image(native, window, size), cut_mask(label, window, size), window, native, label)


def paste_window(
    image: np.ndarray,
    generated: np.ndarray,
    mask: np.ndarray,
    window: Window,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Put a generated window back: uint8 (C, H, W) with the window's pixels inside ``mask`` only.

    Without ``reference`` the window's pixels replace the native ones (resized, bicubic, when side ≠ S). With it,
    only the change is carried: native + resize(generated − reference), rounded and clamped to [0, 255]. At side = S
    the two agree (the reference is then the native crop itself); at side > S the residual form keeps the native
    image's own grain inside the mask instead of an upsampled, softer copy of it.

    Args:
        image: the native image (C, H, W) uint8 the window was cut from.
        generated: the model's window (C, S, S) uint8; resized (bicubic) to ``side`` when side ≠ S.
        mask: the native label (H, W), nonzero = anomaly; every one of its pixels must lie inside the window.
        window: where the window was cut.
        reference: the window the generation started from (C, S, S) uint8, as :func:`cut_image` made it, or None.

    Raises:
        ValueError: shapes disagree, or the mask has pixels outside the window.
    """
    c, h, w = image.shape
    if mask.shape != (h, w) or generated.ndim != 3 or generated.shape[0] != c:
        raise ValueError(f"paste_window: image {image.shape}, mask {mask.shape}, generated {generated.shape}")
    if reference is not None and reference.shape != generated.shape:
        raise ValueError(f"paste_window: reference {reference.shape} and generated {generated.shape} differ")
    y0, x0, side = window.y0, window.x0, window.side
    y1, x1 = min(y0 + side, h), min(x0 + side, w)
    inside = mask[y0:y1, x0:x1] > 0
    if int(inside.sum()) != int((mask > 0).sum()):
        raise ValueError(f"paste_window: the mask has pixels outside the window {window}")
    out = image.copy()
    region = out[:, y0:y1, x0:x1]
    if reference is None:
        g = generated if generated.shape[-1] == side else _resize_channels(generated, side)
        region[:, inside] = g[:, : y1 - y0, : x1 - x0][:, inside]
        return out
    delta = generated.astype(np.float32) - reference.astype(np.float32)
    if delta.shape[-1] != side:
        delta = np.stack(
            [np.asarray(Image.fromarray(ch, mode="F").resize((side, side), Image.Resampling.BICUBIC)) for ch in delta]
        )
    moved = region.astype(np.float32) + delta[:, : y1 - y0, : x1 - x0]
    region[:, inside] = np.clip(np.rint(moved), 0, 255).astype(np.uint8)[:, inside]
    return out

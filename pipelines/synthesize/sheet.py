"""The contact sheet of a dataset version (``preview.png``): per defect type, its first pairs as readable tiles.

Layout (pixels, RGB on a dark background)::

    title band         the version's title and the legend
    per defect key, in sorted key order:
        header band    "<category> / <defect>: first k of N pairs"
        rows of at most ``columns`` triples   [normal | synthesized | mask outline over synthesized]
                                              with the pair's sample_id under each triple

Rules:

* Every tile is a ``tile`` × ``tile`` box (``tile`` ≥ :data:`MIN_TILE`). An image is scaled so that its longer side
  is ``tile``, aspect kept, centred on black. Upscaling by 2 or more uses nearest (the stored pixels stay visible
  as they are), by less than 2 bicubic; downscaling uses Lanczos; masks are always scaled with nearest.
* The outline is the mask's inner boundary at tile scale, :data:`OUTLINE_PX` thick: the mask pixels within
  ``OUTLINE_PX`` 4-neighbour steps of a non-mask pixel or of the image border, painted :data:`OUTLINE_RGB`.
* A normal image that could not be read is a grey tile with the note "normal image unreadable".
* The pixels are a pure function of the groups, the title and the settings (Pillow's resampling and its bundled
  font), so one version always gives the same PNG bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 192  # default tile side
MIN_TILE = 128  # the smallest tile side a sheet accepts
COLUMNS = 2  # default triples per row
OUTLINE_PX = 2  # outline thickness at tile scale
OUTLINE_RGB = (255, 0, 0)
BACKGROUND = (30, 30, 30)  # sheet
HEADER_BG = (56, 56, 56)  # a defect key's header band
PLACEHOLDER = (128, 128, 128)  # the tile of an unreadable normal image
TEXT = (235, 235, 235)
MARGIN = 8  # around the sheet
INNER = 4  # between the tiles of one triple
GAP = 24  # between triples
TITLE_H = 52
HEADER_H = 30
CAPTION_H = 20
FONT_TITLE, FONT_HEADER, FONT_CAPTION = 18, 16, 12
LEGEND = "normal image | synthesized image | mask outline (red) over the synthesized image"

TileKind = Literal["normal", "synthesized", "outline"]
KINDS: tuple[TileKind, ...] = ("normal", "synthesized", "outline")


@dataclass(frozen=True)
class SheetPair:
    """One pair on the sheet.

    Args:
        sample_id: the row's id (the caption).
        image: the synthesized image, uint8 (H, W) or (H, W, 3).
        mask: its mask (H, W), > 0 = anomaly.
        normal: the row's source normal image, uint8 (h, w) or (h, w, 3) at any size; None when it was unreadable.
    """

    sample_id: str
    image: np.ndarray
    mask: np.ndarray
    normal: np.ndarray | None


@dataclass(frozen=True)
class SheetGroup:
    """The pairs shown for one defect key ``<category>/<defect>``, of ``total`` pairs the version holds."""

    key: str
    total: int
    pairs: tuple[SheetPair, ...]


@dataclass(frozen=True)
class TileBox:
    """Where one tile lies on the sheet: its top-left corner and side (pixels)."""

    key: str
    sample_id: str
    kind: TileKind
    x: int
    y: int
    size: int


@dataclass(frozen=True)
class Sheet:
    """A rendered sheet: RGB uint8 pixels and the box of every tile."""

    pixels: np.ndarray
    tiles: tuple[TileBox, ...]


@functools.lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font at ``size`` px (its bitmap font when Pillow lacks FreeType)."""
    return ImageFont.load_default(size=size)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) → (H, W, 3)."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")


def fitted_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """(h, w) of an image scaled so that its longer side is ``tile``, aspect kept.

    >>> fitted_size(32, 40, 192), fitted_size(1024, 512, 192)
    ((154, 192), (192, 96))
    """
    scale = tile / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit(image: np.ndarray, tile: int, *, nearest: bool = False) -> np.ndarray:
    """``image`` (uint8, 2-D or RGB) scaled to :func:`fitted_size` with the module's resampling rule."""
    h, w = image.shape[:2]
    size = fitted_size(h, w, tile)
    if size == (h, w):
        return image.copy()
    scale = size[0] / h if h >= w else size[1] / w
    if nearest or scale >= 2:
        resample = Image.Resampling.NEAREST
    elif scale > 1:
        resample = Image.Resampling.BICUBIC
    else:
        resample = Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample))


def inner_outline(mask: np.ndarray, thickness: int = OUTLINE_PX) -> np.ndarray:
    """The mask pixels within ``thickness`` 4-neighbour steps of a non-mask pixel or the border (bool).

    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> int(inner_outline(m, 1).sum()), bool(inner_outline(m, 1)[2, 2])
    (8, False)
    """
    inside = mask.astype(bool)
    core = inside
    for _ in range(thickness):
        p = np.pad(core, 1, constant_values=False)
        core = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return inside & ~core


def _place(canvas: np.ndarray, tile_rgb: np.ndarray, x: int, y: int, tile: int) -> None:
    """Paste ``tile_rgb`` centred in the ``tile`` box at (x, y) of ``canvas`` (the box itself becomes black)."""
    canvas[y : y + tile, x : x + tile] = 0
    h, w = tile_rgb.shape[:2]
    oy, ox = y + (tile - h) // 2, x + (tile - w) // 2
    canvas[oy : oy + h, ox : ox + w] = tile_rgb


def _tiles(pair: SheetPair, tile: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(normal, synthesized, outline) tiles of one pair at tile scale; normal None when unreadable."""
    image = to_rgb(pair.image)
    if pair.mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"{pair.sample_id}: mask {pair.mask.shape[:2]} and image {image.shape[:2]} differ in size")
    synth = fit(image, tile)
    mask = fit(np.where(pair.mask.reshape(image.shape[:2]) > 0, 255, 0).astype(np.uint8), tile, nearest=True) > 0
    outlined = synth.copy()
    outlined[inner_outline(mask)] = OUTLINE_RGB
    normal = None if pair.normal is None else fit(to_rgb(pair.normal), tile)
    return normal, synth, outlined


def _clip_text(text: str, size: int, width: int) -> str:
    """``text`` cut (ending in "...") to fit ``width`` pixels at font ``size``."""
    f = font(size)
    if f.getlength(text) <= width:
        return text
    while text and f.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def render_sheet(groups: Sequence[SheetGroup], title: str, *, tile: int = TILE, columns: int = COLUMNS) -> Sheet:
    """Draw the contact sheet of ``groups`` (see the module docstring for the layout and rules).

    >>> pair = SheetPair("a", np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8), None)
    >>> sheet = render_sheet([SheetGroup("c/d", 3, (pair,))], "t", tile=128)
    >>> sheet.pixels.shape, [(t.kind, t.size) for t in sheet.tiles]
    ((238, 408, 3), [('normal', 128), ('synthesized', 128), ('outline', 128)])
    """
    if tile < MIN_TILE:
        raise ValueError(f"tile = {tile} is below the minimum tile side {MIN_TILE}")
    if columns < 1:
        raise ValueError(f"columns = {columns} must be >= 1")
    if not any(g.pairs for g in groups):
        raise ValueError("render_sheet needs at least one pair")
    cols = min(columns, max(len(g.pairs) for g in groups))
    triple_w = 3 * tile + 2 * INNER
    width = 2 * MARGIN + cols * triple_w + (cols - 1) * GAP
    row_h = tile + CAPTION_H
    shown = [g for g in groups if g.pairs]
    height = TITLE_H + sum(HEADER_H + -(-len(g.pairs) // cols) * row_h + MARGIN for g in shown)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    texts: list[tuple[int, int, str, int, tuple[int, int, int]]] = [
        (MARGIN, MARGIN, _clip_text(title, FONT_TITLE, width - 2 * MARGIN), FONT_TITLE, TEXT),
        (MARGIN, MARGIN + 24, _clip_text(LEGEND, FONT_CAPTION, width - 2 * MARGIN), FONT_CAPTION, TEXT),
    ]
    boxes: list[TileBox] = []
    y = TITLE_H
    for group in shown:
        canvas[y : y + HEADER_H - 4] = HEADER_BG
        category, _, defect = group.key.partition("/")
        header = f"{category} / {defect}: first {len(group.pairs)} of {group.total} pairs"
        texts.append((MARGIN, y + 6, _clip_text(header, FONT_HEADER, width - 2 * MARGIN), FONT_HEADER, TEXT))
        y += HEADER_H
        for i, pair in enumerate(group.pairs):
            row, col = divmod(i, cols)
            ty = y + row * row_h
            tx = MARGIN + col * (triple_w + GAP)
            for j, (kind, pixels) in enumerate(zip(KINDS, _tiles(pair, tile), strict=True)):
                x = tx + j * (tile + INNER)
                if pixels is None:
                    canvas[ty : ty + tile, x : x + tile] = PLACEHOLDER
                    texts.append((x + 8, ty + tile // 2 - 18, "normal image", FONT_CAPTION, (20, 20, 20)))
                    texts.append((x + 8, ty + tile // 2, "unreadable", FONT_CAPTION, (20, 20, 20)))
                else:
                    _place(canvas, pixels, x, ty, tile)
                boxes.append(TileBox(group.key, pair.sample_id, kind, x, ty, tile))
            texts.append((tx, ty + tile + 3, _clip_text(pair.sample_id, FONT_CAPTION, triple_w), FONT_CAPTION, TEXT))
        y += -(-len(group.pairs) // cols) * row_h + MARGIN
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for x, ty, text, size, fill in texts:
        draw.text((x, ty), text, fill=fill, font=font(size))
    return Sheet(pixels=np.asarray(image).copy(), tiles=tuple(boxes))

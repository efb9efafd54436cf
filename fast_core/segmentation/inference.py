"""Segmenter inference: anomaly probabilities ``p = σ(logits)`` for whole images or by sliding windows; weight I/O.

Whole-image prediction pads each batch on the bottom/right by reflection to a multiple of 32 (the encoder's stride),
runs the model in eval mode under ``torch.inference_mode`` and crops back; inputs take the memory format of the
model's weights (NHWC for a channels-last model). Sliding-window prediction runs
``tile × tile`` windows at ``stride`` and averages the probabilities of overlapping windows per pixel (for images
larger than the training size). Weights are stored as ``model.safetensors`` plus ``config.json``
(``{"arch", "in_channels", "encoder"}``; a file without ``encoder`` is a ResNet-18 one); nothing is ever unpickled.
:func:`predict_images` runs whole images of different sizes at their own size, grouping equal shapes into batches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fast_core.segmentation.models import OUTPUT_STRIDE, Segmenter

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of :data:`OUTPUT_STRIDE` (reflect, or replicate if tiny)."""
    h, w = x.shape[-2:]
    ph, pw = -h % OUTPUT_STRIDE, -w % OUTPUT_STRIDE
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """``torch.channels_last`` when the model's 4-D weights are stored NHWC, else ``torch.contiguous_format``.

    The first weight whose two layouts differ decides (a (C_out, 1, k, k) weight is both at once).

    >>> from fast_core.segmentation.models import build_segmenter
    >>> model_memory_format(build_segmenter("unet", 1, seed=0).to(memory_format=torch.channels_last))
    torch.channels_last
    """
    for p in (p for p in model.parameters() if p.ndim == 4):
        nhwc, nchw = p.is_contiguous(memory_format=torch.channels_last), p.is_contiguous()
        if nhwc != nchw:
            return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Anomaly probabilities of (N, C, H, W) images in [−1, 1]: (N, 1, H, W) float32 on the CPU.

    >>> from fast_core.segmentation.models import build_segmenter
    >>> p = predict_proba(build_segmenter("unet", 1, seed=0), torch.zeros(3, 1, 40, 50), batch_size=2)
    >>> p.shape, bool(((p >= 0) & (p <= 1)).all())
    (torch.Size([3, 1, 40, 50]), True)
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size} must be >= 1")
    model.eval()
    memory_format = model_memory_format(model)
    h, w = images.shape[-2:]
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device, dtype or torch.float32)
        logits = model(_pad_to_stride(x).contiguous(memory_format=memory_format))[..., :h, :w]
        out.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(out) if out else torch.empty(0, 1, h, w)


def predict_images(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """Probabilities of (C, H, W) images of any sizes at their own size: a list of (1, H, W) float32 tensors.

    Images of equal shape are batched together (in order of first appearance); the output keeps the input order.

    >>> from fast_core.segmentation.models import build_segmenter
    >>> out = predict_images(build_segmenter("unet", 1, seed=0), [torch.zeros(1, 40, 50), torch.zeros(1, 33, 20)])
    >>> [tuple(p.shape) for p in out]
    [(1, 40, 50), (1, 33, 20)]
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        if image.ndim != 3:
            raise ValueError(f"image {i} must be (C, H, W), got {tuple(image.shape)}")
        groups.setdefault(tuple(image.shape), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for indices in groups.values():
        probs = predict_proba(model, torch.stack([images[i] for i in indices]), batch_size, device)
        for i, p in zip(indices, probs, strict=True):
            out[i] = p
    return [p for p in out if p is not None]


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Window offsets covering ``0 … size−1``: every ``stride`` plus one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


@torch.inference_mode()
def sliding_window_proba(
    model: nn.Module,
    image: torch.Tensor,
    tile: int,
    stride: int | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Probabilities of one (C, H, W) image from ``tile × tile`` windows, overlaps averaged: (1, H, W) float32.

    ``stride`` defaults to ``tile // 2``; windows at the right/bottom edge are shifted to end flush with the image.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got {tuple(image.shape)}")
    stride = stride or max(1, tile // 2)
    if tile < 1 or stride < 1 or stride > tile:
        raise ValueError(f"need 1 <= stride <= tile, got tile={tile}, stride={stride}")
    _, h, w = image.shape
    boxes = [(y, x) for y in _starts(h, tile, stride) for x in _starts(w, tile, stride)]
    crops = torch.stack([image[:, y : y + tile, x : x + tile] for y, x in boxes])
    probs = predict_proba(model, crops, batch_size, device)  # (n, 1, th, tw)
    total = torch.zeros(1, h, w)
    weight = torch.zeros(1, h, w)
    for (y, x), p in zip(boxes, probs, strict=True):
        total[:, y : y + p.shape[-2], x : x + p.shape[-1]] += p
        weight[:, y : y + p.shape[-2], x : x + p.shape[-1]] += 1
    return total / weight


def save_segmenter(model: Segmenter, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    config = {"arch": model.arch, "in_channels": model.in_channels, "encoder": model.encoder_name}
    (folder / CONFIG_NAME).write_text(json.dumps(config) + "\n")
    return folder


def load_segmenter(folder: str | Path, device: torch.device | str = "cpu") -> Segmenter:
    """Rebuild a segmenter saved by :func:`save_segmenter` (strict: every weight must match)."""
    folder = Path(folder)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; not a saved segmenter")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    model = Segmenter(cfg["arch"], int(cfg["in_channels"]), cfg.get("encoder", "resnet18"))
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    return model.to(device).eval()

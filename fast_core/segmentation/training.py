"""Training the downstream segmenter: loss, augmentation, a deterministic batch schedule, one step and the loop.

Loss (per batch, logits ℓ, target mask M ∈ {0, 1}, p = σ(ℓ))::

    L = w_bce · BCEWithLogits(ℓ, M) + w_dice · (1 − (2 Σ p·M + s) / (Σ p + Σ M + s)),   s = 1 (soft Dice, pooled
    over every pixel of the batch, so batches of normal images with empty masks still have a defined Dice term)

Inputs: either images already at one size S × S (the whole image is the training sample), or, with
``crop_size = c``, images of any sizes from which each step cuts one c × c crop per sample at native resolution,
half of the crops of defect images forced onto the defect (:mod:`fast_core.segmentation.crops`).

Memory format: with ``channels_last`` the model's weights and every batch are NHWC (the caller converts the model
before wrapping it for data parallelism; :func:`train_segmenter` converts an unwrapped one itself).

Optimiser: AdamW (trainable parameters only) with a constant or cosine-decayed learning rate. Augmentation
(identical for every training set so methods are compared fairly): random horizontal/vertical flips, a small random
affine warp (rotation, isotropic scale, translation; images bilinear, masks nearest, reflection padding for both so
they stay aligned) and a brightness/contrast jitter of the image only. Every random draw comes from generators seeded
by ``(seed, step, rank)``, so the same config gives the same weights on CPU, and a step's batch does not depend on
what ran before it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fast_core.configbase import check_choices
from fast_core.segmentation.crops import sample_crops

logger = logging.getLogger(__name__)

LrSchedule = Literal["constant", "cosine"]


@dataclass(kw_only=True)
class AugmentConfig:
    """Training augmentation of the segmenter; all zeros/false disables it."""

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    rotate_deg: float = 10.0  # rotation angle ~ U(−r, r) degrees
    scale: float = 0.1  # isotropic zoom ~ U(1 − s, 1 + s)
    translate: float = 0.05  # shift ~ U(−t, t) of the image side, per axis
    brightness: float = 0.1  # additive shift ~ U(−b, b) of the full intensity range (image only)
    contrast: float = 0.1  # contrast factor ~ U(1 − c, 1 + c) around the image mean (image only)

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} = {getattr(self, name)} must be a probability in [0, 1]")
        for name in ("rotate_deg", "scale", "translate", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} = {getattr(self, name)} must be >= 0")
        if self.scale >= 1 or self.contrast >= 1:
            raise ValueError("AugmentConfig.scale and AugmentConfig.contrast must be < 1")


@dataclass(kw_only=True)
class SegTrainConfig:
    """Optimisation settings of one segmenter training run."""

    steps: int = 2000  # optimiser steps
    batch_size: int = 16  # global batch (split evenly across data-parallel workers)
    lr: float = 1e-3  # AdamW learning rate (peak, for "cosine")
    weight_decay: float = 1e-4  # AdamW weight decay
    lr_schedule: LrSchedule = "cosine"  # "constant" or cosine decay to 0 over `steps`
    bce_weight: float = 1.0  # w_bce
    dice_weight: float = 1.0  # w_dice
    seed: int = 0  # batch order and augmentation draws
    crop_size: int | None = None  # c: train on c × c crops at native size; None: whole images (all one size)
    defect_crop_fraction: float = 0.5  # with crops: probability a defect image's crop is forced onto the defect
    log_every: int = 50  # log (and report) the running loss every this many steps
    # NHWC memory format for the model and its batches: the same maths in another summation order, and on CPU about
    # 1.45× faster per step for the EfficientNet-Lite0 U-Net (its depthwise convolutions)
    channels_last: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"SegTrainConfig.{name} = {getattr(self, name)} must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.bce_weight < 0 or self.dice_weight < 0:
            raise ValueError("SegTrainConfig: lr must be > 0; weight_decay, bce_weight, dice_weight >= 0")
        if self.bce_weight + self.dice_weight == 0:
            raise ValueError("SegTrainConfig: bce_weight and dice_weight cannot both be 0")
        if self.seed < 0:
            raise ValueError(f"SegTrainConfig.seed = {self.seed} must be >= 0")
        if self.crop_size is not None and (self.crop_size < 32 or self.crop_size % 32):
            raise ValueError(f"SegTrainConfig.crop_size = {self.crop_size} must be a multiple of 32 (or null)")
        if not 0.0 <= self.defect_crop_fraction <= 1.0:
            raise ValueError(f"SegTrainConfig.defect_crop_fraction = {self.defect_crop_fraction} must be in [0, 1]")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (``numpy.random.SeedSequence``), e.g. ``(seed, step, rank)``.

    >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
    True
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """``w_bce · BCE + w_dice · soft Dice`` of (B, 1, H, W) logits against a {0, 1} target (see the module docstring).

    >>> t = torch.zeros(1, 1, 4, 4); t[..., :2, :2] = 1
    >>> good, _ = segmentation_loss(20 * (2 * t - 1), t)
    >>> bad, _ = segmentation_loss(-20 * (2 * t - 1), t)
    >>> bool(good < 0.1 < bad)
    True
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)
    loss = bce_weight * bce + dice_weight * dice
    return loss, {"loss": float(loss.detach()), "bce": float(bce.detach()), "dice": float(dice.detach())}


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (B, C, H, W) images in [−1, 1] and their (B, 1, H, W) {0, 1} masks identically (geometry) per sample.

    Draws, in this order, one (B, 7) uniform tensor from ``generator``: hflip, vflip, angle, scale, tx, ty, and
    brightness/contrast from a second (B, 2) draw. Masks stay exactly binary (nearest sampling).
    """
    b = images.shape[0]
    u = torch.rand(b, 6, generator=generator).to(images.device)
    bc = torch.rand(b, 2, generator=generator).to(images.device)
    # 1. flips (per sample)
    hflip = (u[:, 0] < cfg.hflip).view(b, 1, 1, 1)
    vflip = (u[:, 1] < cfg.vflip).view(b, 1, 1, 1)
    images = torch.where(hflip, images.flip(-1), images)
    masks = torch.where(hflip, masks.flip(-1), masks)
    images = torch.where(vflip, images.flip(-2), images)
    masks = torch.where(vflip, masks.flip(-2), masks)
    # 2. affine warp: output pixel at normalised position q samples the input at A·q + t
    if cfg.rotate_deg > 0 or cfg.scale > 0 or cfg.translate > 0:
        angle = (2 * u[:, 2] - 1) * math.radians(cfg.rotate_deg)
        zoom = 1 + (2 * u[:, 3] - 1) * cfg.scale
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        tx, ty = (2 * u[:, 4] - 1) * 2 * cfg.translate, (2 * u[:, 5] - 1) * 2 * cfg.translate
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        masks = F.grid_sample(
            masks, grid.to(masks.dtype), mode="nearest", padding_mode="reflection", align_corners=False
        )
    # 3. brightness / contrast (intensity range [−1, 1] has width 2)
    if cfg.brightness > 0 or cfg.contrast > 0:
        shift = ((2 * bc[:, 0] - 1) * 2 * cfg.brightness).view(b, 1, 1, 1).to(images.dtype)
        factor = (1 + (2 * bc[:, 1] - 1) * cfg.contrast).view(b, 1, 1, 1).to(images.dtype)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * factor + mean + shift).clamp(-1.0, 1.0)
    return images, masks


class BatchSchedule:
    """Which samples each step trains on: an endless stream of seeded permutations of ``0 … n−1``.

    Step k's global batch is stream positions ``[k·B, (k+1)·B)``; permutation e is ``randperm(n)`` under seed
    ``derive_seed(seed, e)``. Worker ``rank`` of ``world_size`` takes every ``world_size``-th index of it. A step's
    indices depend only on (n, B, seed, k), so a resumed or retried run sees the same batches.

    >>> BatchSchedule(5, 4, seed=0).indices(0).shape
    torch.Size([4])
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError("BatchSchedule needs at least one training sample")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must split evenly over world_size {world_size} (rank {rank})")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """This worker's sample indices (``batch_size // world_size`` of them) for ``step``."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        out = torch.empty_like(pos)
        for epoch in pos.div(self.n, rounding_mode="floor").unique().tolist():
            sel = pos.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perm(epoch)[pos[sel] % self.n]
        return out[self.rank :: self.world_size]


def images_from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 in [−1, 1] (``x / 127.5 − 1``, the inverse of the stored form)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {t.dtype} {tuple(t.shape)}")
    return t.to(torch.float32) / 127.5 - 1.0


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> dict[str, float]:
    """One optimiser step on (B, C, H, W) images and (B, 1, H, W) masks; returns ``{"loss", "bce", "dice"}``."""
    model.train()
    loss, parts = segmentation_loss(model(images), masks, bce_weight, dice_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return parts


def make_optimizer(
    model: nn.Module, cfg: SegTrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and its schedule: ``lr_k = lr`` (constant) or ``lr · (1 + cos(π k / steps)) / 2`` (cosine)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "constant":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, cfg.steps) / cfg.steps))
    )


def train_segmenter(
    model: nn.Module,
    images: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    cfg: SegTrainConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` (already on ``device``, possibly DDP-wrapped) for ``cfg.steps`` steps.

    Args:
        model: the segmenter.
        images: uint8 (N, C, S, S) training images (the stored form of ``to_model_image``'s output), or with
            ``cfg.crop_size`` a sequence of uint8 (C, H_i, W_i) images of any sizes.
        masks: bool or uint8 {0, 1} (N, S, S) masks, or a sequence of (H_i, W_i) masks.
        cfg: optimisation settings.
        device: where batches go.
        rank, world_size: this worker's share of each global batch (data parallel).
        callback: called as ``callback(step, metrics)`` every ``cfg.log_every`` steps and after the last one, with
            the mean loss terms since the previous call and ``seconds_per_step``.

    Returns:
        The list of metrics passed to ``callback``.
    """
    if cfg.crop_size is None:
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"images (N, C, S, S) {images.shape} and masks (N, S, S) {masks.shape} do not match")
    elif len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    device = torch.device(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        model.to(memory_format=memory_format)  # a no-op when it already is
    schedule = BatchSchedule(len(images), cfg.batch_size, cfg.seed, rank, world_size)
    optimizer, lr_sched = make_optimizer(model, cfg)
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    count, start = 0, time.perf_counter()
    for step in range(cfg.steps):
        idx = schedule.indices(step)
        rows = idx.numpy()
        if cfg.crop_size is None:  # numpy fancy indexing copies, so read-only inputs (Ray's object store) are fine
            batch_images, batch_masks = images[rows], masks[rows] > 0  # type: ignore[index]
        else:
            crop_rng = np.random.default_rng(derive_seed(cfg.seed, step, rank, 2))
            batch_images, batch_masks = sample_crops(
                images, masks, rows.tolist(), cfg.crop_size, cfg.defect_crop_fraction, crop_rng
            )
        x = images_from_uint8(np.ascontiguousarray(batch_images)).to(device)  # (b, C, S, S)
        m = torch.from_numpy(np.ascontiguousarray(batch_masks))[:, None].to(device, torch.float32)  # (b, 1, S, S)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, rank, 1))
        x, m = augment_batch(x, m, cfg.augment, gen)
        x = x.contiguous(memory_format=memory_format)
        parts = train_step(model, optimizer, x, m, cfg.bce_weight, cfg.dice_weight)
        lr_sched.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            now = time.perf_counter()
            metrics = {k: v / count for k, v in sums.items()}
            metrics.update(step=step + 1, seconds_per_step=(now - start) / count, lr=optimizer.param_groups[0]["lr"])
            logger.info(
                "segmenter step %d/%d: loss %.4f (bce %.4f, dice %.4f), %.3f s/step",
                step + 1, cfg.steps, metrics["loss"], metrics["bce"], metrics["dice"], metrics["seconds_per_step"],
            )  # fmt: skip
            history.append(metrics)
            if callback is not None:
                callback(step + 1, metrics)
            sums, count, start = {}, 0, now
    return history

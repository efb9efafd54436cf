"""One training step's pieces, per stage: the objective DDP wraps, trainable parameters, batch preparation, seeds.

    g      = Generator(seed = H(seed, stage, rank, step))   # step_seed: every random draw of the step, resume-exact
    batch  = prepare_batch(batch, g)                        # uint8 → [−1, 1]; flips (image and mask together);
                                                            # mask stage: rot90, and (image frame) resize to the
                                                            # mask model (box-frame shapes are already S × S);
                                                            # a latent cache: the rows' z_0 instead of x, no flips
    loss   = StageObjective(model)(x, M, key_ids, g, z0)    # fast_core.training.*_training_step / mask_training_step

Trainable tensors per stage: vae the whole VAE; base the UNet + prompt encoder; fast the prompt vectors + FARM +
Adaptor (``FastLDM.configure_stage``); mask the whole mask diffusion model.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fast_core.data.layout import GOOD
from fast_core.masks.diffusion import MaskDiffusionModel, mask_training_step
from fast_core.models.base import check_state
from fast_core.models.ldm import FastLDM
from fast_core.training import fast_training_step, unet_training_step, vae_training_step
from pipelines.train.checkpoint import RunStore
from pipelines.train.config import TrainConfig, mask_model_config
from pipelines.train.data import IMAGE, LATENT, MASK
from pipelines.train.models import build_model, load_stage_weights


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


class FaultInjected(RuntimeError):
    """``fault.stop_after_steps`` interrupted the run (tests of resume-after-kill)."""


def step_seed(seed: int, stage: str, rank: int, step: int) -> int:
    """The 63-bit seed of one worker's step: first 8 bytes of sha256(f"{seed}/{stage}/{rank}/{step}")."""
    digest = hashlib.sha256(f"{seed}/{stage}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def flip_batch(tensors: list[torch.Tensor], g: torch.Generator, hflip: bool, vflip: bool) -> list[torch.Tensor]:
    """Flip each sample left-right / upside down with probability 1/2 each; all tensors of a sample flip together."""
    b = tensors[0].shape[0]
    draws = torch.rand((b, 2), generator=g)  # (B, 2): always drawn, so the stream does not depend on the flags
    out = tensors
    for flag, col, dim in ((hflip, 0, -1), (vflip, 1, -2)):
        if not flag:
            continue
        sel = (draws[:, col] < 0.5).to(out[0].device).view(-1, 1, 1, 1)
        out = [torch.where(sel, t.flip(dim), t) for t in out]
    return out


def rotate_batch(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Rotate each (square) sample of ``t`` (B, C, S, S) by k·90°, k ~ U{0..3} drawn from ``g``."""
    ks = torch.randint(0, 4, (t.shape[0],), generator=g).tolist()
    return torch.stack([torch.rot90(sample, k, dims=(-2, -1)) for sample, k in zip(t, ks, strict=True)])


class StageObjective(nn.Module):
    """The stage's loss as a module, so DDP sees a ``forward`` (gradients are all-reduced inside its backward)."""

    def __init__(
        self,
        model: FastLDM | MaskDiffusionModel,
        stage: str,
        keys: list[str],
        autocast: torch.dtype | None,
        fg_weight: float = 0.0,
        snr_gamma: float | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.stage = stage
        self.keys = keys
        self.autocast = autocast
        self.fg_weight = fg_weight  # λ_fg of the base and FAST ε-losses (TrainConfig.loss)
        self.snr_gamma = snr_gamma  # γ of their min-SNR weighting, or None

    def forward(
        self,
        x: torch.Tensor | None,
        mask: torch.Tensor | None,
        key_ids: torch.Tensor,
        generator: torch.Generator,
        z0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, metrics) of one batch: x (B, C, S, S) in [−1, 1] (None for mask, or when the base and FAST stages
        get their latents z0 (B, C, h, w) from a latent cache), mask (B, 1, S, S) {0, 1} or None, key_ids (B,)
        indices into ``keys``."""
        keys = [self.keys[int(i)] for i in key_ids.tolist()]
        if self.stage == "mask":
            with _autocast(x if x is not None else mask, self.autocast):
                return mask_training_step(self.model, mask, keys, generator)
        if self.stage == "vae":
            return vae_training_step(self.model.vae, x, generator, autocast_dtype=self.autocast)
        if self.stage == "base":
            return unet_training_step(
                self.model,
                x,
                keys,
                generator,
                autocast_dtype=self.autocast,
                M=mask,
                fg_weight=self.fg_weight,
                z0=z0,
                snr_gamma=self.snr_gamma,
            )
        if self.stage == "fast":
            return fast_training_step(
                self.model,
                x,
                mask,
                keys,
                generator,
                autocast_dtype=self.autocast,
                fg_weight=self.fg_weight,
                z0=z0,
                snr_gamma=self.snr_gamma,
            )
        raise ValueError(f"StageObjective: unknown stage {self.stage!r}")


def _autocast(like: torch.Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast on ``like``'s device for a reduced-precision ``dtype``; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=like.device.type, dtype=dtype)


def configure_trainable(model: FastLDM, stage: str) -> list[nn.Parameter]:
    """Set requires_grad for ``stage`` and return the trainable parameters (vae: the whole VAE)."""
    if stage == "vae":
        model.configure_stage("frozen")
        model.vae.requires_grad_(True)
        return [p for p in model.vae.parameters()]
    return model.configure_stage("base" if stage == "base" else "fast")


def _encode_uint8(
    encode: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, device: torch.device, batch: int
) -> torch.Tensor:
    """encode(u / 127.5 − 1) of uint8 images (N, C, S, S) in batches of ``batch``, concatenated as float32 on the CPU
    (the caller holds torch.no_grad)."""
    out = []
    for lo in range(0, len(images), batch):
        x = torch.from_numpy(images[lo : lo + batch]).to(device=device, dtype=torch.float32) / 127.5 - 1.0
        out.append(encode(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def measure_scaling_factor(model: FastLDM, images: np.ndarray, device: torch.device, batch: int) -> float:
    """s = 1 / std of the unscaled latents E(x) (VAE: posterior means) of ``images`` (N, C, S, S) uint8 (LDM rule)."""
    return measure_latent_stats(model, images, device, batch, shift=False)[0]


@torch.no_grad()
def measure_latent_stats(
    model: FastLDM, images: np.ndarray, device: torch.device, batch: int, *, shift: bool
) -> tuple[float, list[float] | None]:
    """(s, μ) of the unscaled latents E(x) of ``images`` (N, C, S, S) uint8, for z = s · (E(x) − μ).

    μ_c = mean of channel c over the images and latent cells (``shift``; else None, μ = 0), and
    s = 1 / std(E(x) − μ) over every value, so z has zero mean per channel and unit variance overall.
    """
    e = _encode_uint8(model.encode_unscaled, images, device, batch)  # (N, C, h, w)
    mu = e.mean(dim=(0, 2, 3)) if shift else None
    std = float((e if mu is None else e - mu.view(1, -1, 1, 1)).std())
    if not std > 0 or not math.isfinite(std) or (mu is not None and not bool(torch.isfinite(mu).all())):
        raise NonFiniteLossError(f"stage 'vae': latent std is {std}; cannot set the scaling factor")
    return 1.0 / std, None if mu is None else [float(v) for v in mu]


@torch.no_grad()
def encode_rows(model: FastLDM, images: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    """The latent cache of a stage (TrainConfig.latent_cache): z_0 = encode(u / 127.5 − 1) of every uint8 image
    (N, C, S, S), in batches of ``batch``, as (N, C', S/f, S/f) float32 on the CPU. The first stage is frozen in the
    base and FAST stages, so these are the latents every step would compute."""
    was_training = model.training
    model.eval()
    try:
        return _encode_uint8(model.encode, images, device, batch).numpy()
    finally:
        model.train(was_training)


def mask_model(cfg: TrainConfig, keys: list[str], box_sizes: dict[str, list[Any]] | None) -> MaskDiffusionModel:
    """The mask diffusion model of stage "mask" at its seed-initialised weights: every defect key of ``keys`` (not
    ``"good"``), and for the box and stretch frames the real sizes ``box_sizes`` it carries to the masks stage."""
    return MaskDiffusionModel(mask_model_config(cfg, [k for k in keys if k != GOOD], box_sizes), seed=cfg.seed)


def stage_model(
    cfg: TrainConfig, keys: list[str], store: RunStore, stage: str, box_sizes: dict[str, list[Any]] | None = None
) -> tuple[FastLDM | MaskDiffusionModel, list[nn.Parameter]]:
    """The model stage ``stage`` trains (from its starting weights) and its trainable parameters (``box_sizes``: the
    mask stage's real sizes in the box and stretch frames, :func:`mask_model`)."""
    if stage == "mask":
        model = mask_model(cfg, keys, box_sizes)
        return model, list(model.parameters())
    model = build_model(cfg, keys, store, stage)
    return model, configure_trainable(model, stage)


def load_weights(model: FastLDM | MaskDiffusionModel, stage: str, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load a checkpoint's tensors; missing, unexpected or mis-shaped tensors are a ValueError naming ``where``."""
    if stage == "mask":
        check_state(model.state_dict(), weights, where)
        model.load_state_dict(weights)
    else:
        load_stage_weights(model, stage, weights, where)


def prepare_batch(
    batch: dict[str, torch.Tensor], g: torch.Generator, cfg: TrainConfig, stage: str, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Images to [−1, 1] float, masks to {0, 1} float, augmented. Mask stage: image-frame masks are nearest-resized to
    the mask model's S × S; box- and stretch-frame shapes must already be S × S (they are never resized here).

    A batch of a latent cache (a ``latent`` column, no ``image``) gives x = None and its masks unflipped: the config
    allows the cache only without per-step flips (the latents were encoded from the unflipped images)."""
    x = batch[IMAGE].to(device=device, dtype=torch.float32) / 127.5 - 1.0 if IMAGE in batch else None
    mask = batch[MASK].to(device=device, dtype=torch.float32) if MASK in batch else None
    if LATENT in batch:
        if cfg.dataset.hflip or cfg.dataset.vflip:
            raise ValueError("prepare_batch: a latent cache cannot be flipped per step (TrainConfig.latent_cache)")
        return None, mask
    if stage == "mask":
        size = cfg.mask_model.image_size
        if tuple(mask.shape[-2:]) != (size, size):
            if cfg.mask_model.frame != "image":
                raise ValueError(
                    f"prepare_batch: {cfg.mask_model.frame}-frame mask shapes must be {size} × {size} "
                    f"(mask_model.image_size), got {tuple(mask.shape[-2:])}"
                )
            mask = torch.nn.functional.interpolate(mask, size=(size, size), mode="nearest")
        mask = flip_batch([mask], g, cfg.dataset.hflip, cfg.dataset.vflip)[0]
        return None, rotate_batch(mask, g) if cfg.mask_model.turns else mask
    flipped = flip_batch([x] if mask is None else [x, mask], g, cfg.dataset.hflip, cfg.dataset.vflip)
    return flipped[0], (flipped[1] if mask is not None else None)

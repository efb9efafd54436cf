"""A small class-conditioned diffusion model over binary masks, its training step and its AIAS sampler.

The mask stage trains one model on the real training-third masks of every defect type (the defect key picks the class
embedding) and samples new masks from it. The network is a diffusers ``UNet2DModel`` (1 channel in and out, a class
embedding per defect key, attention only at the lowest resolution) over masks scaled to [−1, 1]:

    x_0 = 2 M − 1,  M ∈ {0, 1}^{1×S×S}  (1 = anomaly)

What an S × S training mask M is depends on the model's *frame* (:attr:`MaskDiffusionConfig.frame`):

* ``"box"`` (the default of new train configs): M = shape(M_real), the real mask at its own resolution reduced to
  its bounding box, padded to a centred square and resampled to S × S (:func:`fast_core.masks.shapes.normalised_shape`:
  any-pooling down, nearest up), so a blowhole of a few pixels and a crack across the image both fill the frame. The
  size goes apart, as every real mask's side fraction f = max(box_h, box_w) / √(H · W), kept per key in
  ``box_sides``; a sample is placed back at a drawn real size (:mod:`fast_core.masks.placement`).
* ``"stretch"``: M = the real mask's bounding box resampled to S × S along each axis on its own
  (:func:`fast_core.masks.shapes.stretched_shape`), so the box fills the frame whatever its aspect and a thin crack
  is a band across the square, not a one-cell line. Size *and* aspect go apart, as every real mask's box record
  (box_h / H, box_w / W, fill of its stretched shape), kept per key in ``box_records``; a sample goes back into the box
  of a real mask of similar fill (:func:`fast_core.masks.placement.draw_box`). Flips keep a box's sides, 90° turns
  would swap them, so a stretch-frame model trains without turns.
* ``"image"`` (models saved before frames existed): M = the whole real mask nearest-resized to S × S; a sample is
  the whole mask, resized to the output size. Small defects vanish at S = 64.

Training (ε-prediction on the FAST schedule, FAST_SPEC §1: T = 1000, β_t = linspace(√0.00085, √0.012, T)²):

    t ~ U{0..T−1},  ε ~ N(0, I),  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,  loss = mean((ε_θ(x_t, t, k) − ε)²)

Sampling: :class:`fast_core.schedulers.AIASScheduler` (no FARM, no Adaptor: there is no background to keep) from
x_T ~ N(0, I) over its NFE grid, then M̂ = [x̂_0 > threshold] (threshold 0 is the midpoint of the two levels). Every
random draw of a sample (its start noise and each step's ξ) comes from that sample's own generator, so a sample does
not depend on the rest of its batch. Random flips and 90° rotations of the training masks are the caller's job.

Saved as ``<dir>/config.json`` (:class:`MaskDiffusionConfig`, with the frame and the side or box fractions) +
``<dir>/model.safetensors``; never pickled. A config.json without ``frame`` is an ``"image"`` model.

Notation: M mask, x_0 = 2M − 1, x_t noisy mask, ε noise, ε̂ = ε_θ(x_t, t, k) prediction, k defect-key index, ᾱ_t
``alphas_cumprod``, S ``image_size``, f side fraction, (a, b, φ) box record.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from fast_core.configbase import check_choices, from_dict, to_dict
from fast_core.masks.placement import bad_box_records, bad_side_fractions
from fast_core.models.base import check_safetensors, check_state, read_json
from fast_core.schedulers.scheduling_aias import AIASScheduler
from fast_core.training import sample_timesteps

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

MaskFrame = Literal["image", "box", "stretch"]


@dataclass(kw_only=True)
class MaskDiffusionConfig:
    """Architecture of the mask diffusion UNet, the defect keys it is conditioned on, and its frame.

    ``frame``, ``box_sides`` and ``box_records`` do not change the network: they say what a sample means (module
    docstring). The dataclass default ``"image"`` is what a config.json written before frames existed describes.
    """

    keys: tuple[str, ...] = ()  # defect keys "<category>/<defect>", one class embedding each (order = class index)
    image_size: int = 64  # S: masks are S × S; divisible by 2^(len(block_out_channels) − 1)
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # channels per resolution level, highest resolution first
    layers_per_block: int = 1  # ResNet blocks per level
    norm_num_groups: int = 8  # GroupNorm groups; divides every entry of block_out_channels
    attention_head_dim: int = 8  # channels per attention head (attention at the lowest resolution only)
    # "image": a sample is the whole mask; "box": a shape in its square-padded box, placed at a real size;
    # "stretch": a shape stretched over its box, placed at a real size and aspect
    frame: MaskFrame = "image"
    # box frame: per key, the real training masks' side fractions f = max(box_h, box_w) / √(H · W); else empty
    box_sides: dict[str, list[float]] = field(default_factory=dict)
    # stretch frame: per key, the real training masks' box records [box_h / H, box_w / W, stretched fill]; else empty
    box_records: dict[str, list[list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)
        self.keys = tuple(self.keys)
        self.block_out_channels = tuple(self.block_out_channels)
        if not self.keys:
            raise ValueError("MaskDiffusionConfig.keys is empty; give the defect keys to condition on")
        dupes = sorted({k for k in self.keys if self.keys.count(k) > 1})
        if dupes:
            raise ValueError(f"MaskDiffusionConfig.keys has duplicates: {', '.join(dupes)}")
        if not self.block_out_channels or any(c < 1 for c in self.block_out_channels):
            raise ValueError(f"MaskDiffusionConfig.block_out_channels = {self.block_out_channels} must be positive")
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.image_size < 8 or self.image_size % factor:
            raise ValueError(
                f"MaskDiffusionConfig.image_size = {self.image_size} must be >= 8 and divisible by {factor} "
                f"(2^(levels − 1) for {len(self.block_out_channels)} levels)"
            )
        if self.layers_per_block < 1:
            raise ValueError(f"MaskDiffusionConfig.layers_per_block = {self.layers_per_block} must be >= 1")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"MaskDiffusionConfig.norm_num_groups = {self.norm_num_groups} must divide every block_out_channels "
                f"entry {self.block_out_channels}"
            )
        if self.attention_head_dim < 1 or self.block_out_channels[-1] % self.attention_head_dim:
            raise ValueError(
                f"MaskDiffusionConfig.attention_head_dim = {self.attention_head_dim} must divide the lowest level's "
                f"channels {self.block_out_channels[-1]}"
            )
        self._check_box_sides()

    def _check_box_sides(self) -> None:
        """The sizes of the frame: ``box_sides`` (box) or ``box_records`` (stretch), one non-empty list of valid
        fractions for every key and no other key; the other field, and both for the image frame, empty."""
        own = {"box": "box_sides", "stretch": "box_records"}.get(self.frame)
        for name in ("box_sides", "box_records"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ValueError(f"MaskDiffusionConfig.{name} must map defect keys to lists, got {value!r}")
            if name != own and value:
                owner = "box" if name == "box_sides" else "stretch"
                raise ValueError(
                    f"MaskDiffusionConfig.{name} is given but frame = {self.frame!r} ({name} goes with frame "
                    f"{owner}); leave {name} empty or change the frame"
                )
        if own is None:
            return
        sizes = getattr(self, own)
        unknown = sorted(set(sizes) - set(self.keys))
        if unknown:
            raise ValueError(f"MaskDiffusionConfig.{own} has key(s) not in keys: {', '.join(map(str, unknown))}")
        missing = [k for k in self.keys if not sizes.get(k)]
        if missing:
            what = "side fractions" if own == "box_sides" else "box records"
            raise ValueError(
                f"MaskDiffusionConfig.frame = {self.frame!r} needs the real {what} ({own}) of every key; none for "
                f"{', '.join(missing)}"
            )
        for key, values in sizes.items():
            if own == "box_sides":
                bad = bad_side_fractions(values)
                if bad:
                    raise ValueError(
                        f"MaskDiffusionConfig.box_sides[{key!r}] must hold finite numbers > 0, got {bad[:3]}"
                    )
            else:
                bad = bad_box_records(values)
                if bad:
                    raise ValueError(
                        f"MaskDiffusionConfig.box_records[{key!r}] must hold [a, b, fill] triples of numbers in "
                        f"(0, 1], got {bad[:3]}"
                    )
        if own == "box_sides":
            self.box_sides = {k: [float(f) for f in self.box_sides[k]] for k in self.keys}
        else:
            self.box_records = {k: [[float(v) for v in r] for r in self.box_records[k]] for k in self.keys}


def build_mask_unet(cfg: MaskDiffusionConfig) -> UNet2DModel:
    """The ``UNet2DModel`` of ``cfg``: plain down/up blocks, attention blocks at the lowest level and in the middle."""
    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=1,
        out_channels=1,
        down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        num_class_embeds=len(cfg.keys),
    )


class MaskDiffusionModel(nn.Module):
    """ε_θ(x_t, t, k): a class-conditioned ``UNet2DModel`` over 1-channel masks in [−1, 1].

    >>> m = MaskDiffusionModel(MaskDiffusionConfig(keys=("tile/crack",), image_size=8, block_out_channels=(8, 8)))
    >>> m(torch.zeros(2, 1, 8, 8), torch.tensor([0, 999]), ["tile/crack"] * 2).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, config: MaskDiffusionConfig, seed: int = 0) -> None:
        """Build the UNet with weights initialised from ``seed`` (torch's global RNG is left untouched)."""
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = build_mask_unet(config)
        self._index = {k: i for i, k in enumerate(config.keys)}

    @property
    def keys(self) -> list[str]:
        """The defect keys, in class-index order."""
        return list(self.config.keys)

    def key_indices(self, keys: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """Class indices of ``keys``, (B,) long; an unknown key is a ``ValueError`` listing the known ones."""
        unknown = sorted({k for k in keys if k not in self._index})
        if unknown:
            raise ValueError(
                f"mask diffusion model: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(self.keys)}"
            )
        return torch.tensor([self._index[k] for k in keys], dtype=torch.long, device=device)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        """ε̂ = ε_θ(x_t, t, k): x_t (B, 1, S, S), t (B,) long in [0, T−1], B keys → (B, 1, S, S)."""
        s = self.config.image_size
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != (1, s, s):
            raise ValueError(f"mask diffusion model: x_t must be (B, 1, {s}, {s}), got {tuple(x_t.shape)}")
        if len(keys) != x_t.shape[0]:
            raise ValueError(f"mask diffusion model: {len(keys)} keys for a batch of {x_t.shape[0]}")
        labels = self.key_indices(keys, x_t.device)
        return self.unet(x_t, t, class_labels=labels).sample

    def save(self, path: str | Path) -> Path:
        """Write ``path/config.json`` and ``path/model.safetensors`` (weights as float32 on CPU); returns ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(to_dict(self.config), indent=2) + "\n")
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.unet.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder

    @classmethod
    def load(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> MaskDiffusionModel:
        """Load a model written by :meth:`save` (safetensors only), on ``device`` in ``dtype`` (default float32)."""
        folder = Path(path)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"mask diffusion model: {weights} is missing")
        owner = "mask diffusion model"
        cfg = from_dict(MaskDiffusionConfig, read_json(folder / CONFIG_NAME, owner), f"{folder / CONFIG_NAME}")
        check_safetensors(weights, owner)
        model = cls(cfg)
        state = load_file(str(weights))
        check_state(model.unet.state_dict(), state, f"{owner}: {weights}")
        model.unet.load_state_dict(state)
        return model.to(device=device, dtype=dtype or torch.float32).eval()


@functools.lru_cache(maxsize=1)
def _training_schedule() -> AIASScheduler:
    """The FAST training schedule (T = 1000, scaled-linear β) for ``add_noise``; never given a grid (shared)."""
    return AIASScheduler()


def _check_masks(M: torch.Tensor, size: int) -> None:
    if M.ndim != 4 or tuple(M.shape[1:]) != (1, size, size):
        raise ValueError(f"mask_training_step: M must be (B, 1, {size}, {size}), got {tuple(M.shape)}")
    if not torch.all((M == 0) | (M == 1)):
        raise ValueError("mask_training_step: M must hold only 0 and 1")


def mask_training_step(
    model: MaskDiffusionModel,
    M: torch.Tensor,
    keys: Sequence[str],
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ε-prediction loss of one batch: x_0 = 2M − 1, x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, loss = mean((ε̂ − ε)²).

    Args:
        model: the model to train (the caller owns the optimizer and ``backward``).
        M: (B, 1, S, S) float masks in {0, 1} (already augmented by the caller).
        keys: B defect keys, each one of ``model.keys``.
        generator: source of t and ε (drawn on its device); the same generator state gives the same loss.

    Returns:
        The scalar loss and ``{"loss": …}``.
    """
    _check_masks(M, model.config.image_size)
    if len(keys) != M.shape[0]:
        raise ValueError(f"mask_training_step: {len(keys)} keys for a batch of {M.shape[0]} masks")
    model.key_indices(keys)  # unknown keys fail before any random draw
    x0 = M.float() * 2.0 - 1.0  # (B, 1, S, S) in {−1, 1}
    t = sample_timesteps(x0.shape[0], generator, x0.device)  # (B,)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32).to(x0.device)
    x_t = _training_schedule().add_noise(x0, eps, t)
    eps_pred = model(x_t.to(next(model.parameters()).dtype), t, keys).float()  # (B, 1, S, S)
    loss = F.mse_loss(eps_pred, eps)
    return loss, {"loss": float(loss.detach())}


def _randn_rows(shape: tuple[int, ...], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    """N(0, I) of (B, *shape), row i drawn from ``generators[i]`` on that generator's device, float32."""
    rows = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


@torch.no_grad()
def sample_masks(
    model: MaskDiffusionModel,
    keys: Sequence[str],
    generators: Sequence[torch.Generator],
    nfe: int = 10,
    device: torch.device | str = "cpu",
    threshold: float = 0.0,
) -> np.ndarray:
    """Sample one mask per key with the AIAS sampler from pure noise; returns bool (B, S, S), True = anomaly.

        x ← ξ_T ~ N(0, I);  for t in grid(nfe): ε̂ = ε_θ(x, t, k);  x ← Π_t x + Σ_t x̂_0 + √V_t ξ_t;  M̂ = [x > threshold]

    Args:
        model: a trained model on ``device``.
        keys: B defect keys, each one of ``model.keys``.
        generators: B generators; sample i draws its start noise and every ξ from ``generators[i]`` only.
        nfe: network evaluations (>= 3), the AIAS grid of :class:`AIASScheduler`.
        device: where the network runs (the model's device).
        threshold: binarisation level on the [−1, 1] scale.

    >>> m = MaskDiffusionModel(MaskDiffusionConfig(keys=("a/b",), image_size=8, block_out_channels=(8, 8)))
    >>> sample_masks(m, ["a/b"], [torch.Generator().manual_seed(0)], nfe=3).shape
    (1, 8, 8)
    """
    if len(keys) != len(generators):
        raise ValueError(f"sample_masks: {len(keys)} keys but {len(generators)} generators (one per sample)")
    if not keys:
        raise ValueError("sample_masks: no keys given")
    model.key_indices(keys)
    device = torch.device(device)
    param = next(model.parameters())
    if param.device.type != device.type or (device.index is not None and param.device != device):
        raise ValueError(f"sample_masks: the model is on {param.device}, not on {device}; move it first")
    s = model.config.image_size
    scheduler = AIASScheduler()  # the training schedule, with its own NFE grid
    scheduler.set_timesteps(nfe)
    was_training = model.training
    model.eval()
    try:
        x = _randn_rows((1, s, s), generators, device)  # (B, 1, S, S) x_T
        for t in scheduler.timesteps.tolist():
            t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=device)  # (B,)
            # 1. noise prediction ε̂ = ε_θ(x_t, t, k)
            eps = model(x.to(param.dtype), t_vec, keys).float()
            # 2. AIAS segment t → t_e with per-sample ξ
            xi = _randn_rows((1, s, s), generators, device)
            x = scheduler.step(eps, t, x, variance_noise=xi).prev_sample
    finally:
        model.train(was_training)
    return (x[:, 0] > threshold).cpu().numpy()

"""TAEF2: a small pretrained, frozen first stage (image ↔ 32-channel latent at 1/8), in plain torch.

The "tiny autoencoder for FLUX.2" (MIT licence) is a distilled stand-in for a large diffusion VAE: 2 × 1.34 M
parameters, deterministic (no posterior), 35–37 dB PSNR on Magnetic Tile where a KL VAE trained from scratch on two
CPU cores gives blurred grey fields. FAST uses it frozen, with a latent scale (and optionally a per-channel shift)
measured on the training data:

    z = s · (E(u) − μ),  u = (x + 1) / 2 ∈ [0, 1]^(B, 3, H, W)    (grey: the channel replicated to RGB)
    x = 2 · clamp(D(z / s + μ), 0, 1) − 1                          (grey: the mean of the three channels)

μ (``latent_shift``, one value per channel, 0 when unset) is for a denoiser: TAEF2's channel means on Magnetic Tile
are far from 0 (RMS 0.56 in scaled units, against per-channel stds of 0.45–1.08), and D(0) is a flat grey 36 levels
brighter than the data's mean image, where an ε-model's uncertain clean estimate ẑ0 → 0 at large t lands. With μ
subtracted, ẑ0 = 0 decodes as the mean image. Measured (benchmarks/RESULTS.md): the same segmentation on Magnetic
Tile, fainter defects and 7.9 mIoU less on KolektorSDD, so the training configs leave it off.

Layers (every conv 3×3, padding 1, 64 wide unless noted; the indices are the state-dict prefixes):

    Block(pooled):  x' = x + pool(x) if pooled else x;   out = ReLU(conv(x') + x')
                    conv = conv, ReLU, conv, ReLU, conv;  pool = 1×1 64→256, GroupNorm(4), ReLU, 1×1 256→64
    encoder:  0 conv 3→64 · 1 Block · 2 conv/2 · 3–5 Block · 6 conv/2 · 7–9 Block · 10 conv/2 · 11–13 pooled Block
              · 14 conv 64→32
    decoder:  0 3·tanh(z/3) · 1 conv 32→64 · 2 ReLU · 3–5 pooled Block · 6 ×2 · 7 conv · 8–10 Block · 11 ×2 · 12 conv
              · 13–15 Block · 16 ×2 · 17 conv · 18 Block · 19 conv 64→3

Weights are read from a local folder (never downloaded): ``taef2_encoder.pth`` / ``taef2_decoder.pth`` as published
(loaded with ``torch.load(weights_only=True)``: plain tensors, a pickle that carries code is refused) or the
safetensors files :meth:`TAEF2.save` writes. Loading is strict, and the folder's ``LICENSE`` travels with every copy.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fast_core.configbase import from_dict, to_dict

WIDTH = 64
LATENT_CHANNELS = 32
DOWNSAMPLE_FACTOR = 8
LICENSE_NAME = "LICENSE"
CONFIG_NAME = "config.json"
PTH_NAMES = {"encoder": "taef2_encoder.pth", "decoder": "taef2_decoder.pth"}
SAFETENSORS_NAMES = {"encoder": "encoder.safetensors", "decoder": "decoder.safetensors"}


@dataclass(kw_only=True)
class TAEF2Config:
    """The frozen first stage's settings; the layer shapes are fixed by the published weights."""

    image_channels: int = 3  # 1 (grey: replicated to RGB in, averaged out) or 3 (RGB)
    scaling_factor: float = 1.0  # s in z = s · (E(u) − μ): 1 / std of E(u) − μ on the training images (measured)
    # μ in z = s · (E(u) − μ): each latent channel's mean on the training images (measured), or None (μ = 0)
    latent_shift: tuple[float, ...] | None = None
    latent_channels: int = LATENT_CHANNELS  # C of the latent (fixed by the weights)

    def __post_init__(self) -> None:
        if self.image_channels not in (1, 3):
            raise ValueError(f"TAEF2Config.image_channels must be 1 or 3, got {self.image_channels}")
        if self.latent_channels != LATENT_CHANNELS:
            raise ValueError(f"TAEF2Config.latent_channels is fixed at {LATENT_CHANNELS}, got {self.latent_channels}")
        if not self.scaling_factor > 0:
            raise ValueError(f"TAEF2Config.scaling_factor must be > 0, got {self.scaling_factor}")
        if self.latent_shift is not None:
            shift = tuple(float(v) for v in self.latent_shift)
            if len(shift) != self.latent_channels or not all(math.isfinite(v) for v in shift):
                raise ValueError(
                    f"TAEF2Config.latent_shift must be {self.latent_channels} finite numbers (one per latent channel), "
                    f"got {self.latent_shift!r}"
                )
            self.latent_shift = shift

    @property
    def downsample_factor(self) -> int:
        """f = H / h = 8."""
        return DOWNSAMPLE_FACTOR


def _conv(c_in: int, c_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """out = ReLU(conv(x') + x') with x' = x + pool(x) (pooled) or x; see the module docstring."""

    def __init__(self, pooled: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH))
        self.pool = (
            nn.Sequential(
                nn.Conv2d(WIDTH, 4 * WIDTH, 1, bias=False),
                nn.GroupNorm(4, 4 * WIDTH),
                nn.ReLU(),
                nn.Conv2d(4 * WIDTH, WIDTH, 1, bias=False),
            )
            if pooled
            else None
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.relu(self.conv(x) + x)


class Clamp(nn.Module):
    """z ↦ 3 · tanh(z / 3): a soft clamp of the latent before decoding."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3) * 3


def build_encoder() -> nn.Sequential:
    """(B, 3, H, W) in [0, 1] → (B, 32, H/8, W/8)."""
    return nn.Sequential(
        _conv(3, WIDTH), Block(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), Block(), Block(), Block(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), Block(), Block(), Block(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), Block(True), Block(True), Block(True),
        _conv(WIDTH, LATENT_CHANNELS),
    )  # fmt: skip


def build_decoder() -> nn.Sequential:
    """(B, 32, h, w) → (B, 3, 8h, 8w), unclamped (≈ [0, 1])."""

    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2, mode="nearest"), _conv(WIDTH, WIDTH, bias=False)]

    return nn.Sequential(
        Clamp(), _conv(LATENT_CHANNELS, WIDTH), nn.ReLU(), Block(True), Block(True), Block(True),
        *up(), Block(), Block(), Block(),
        *up(), Block(), Block(), Block(),
        *up(), Block(),
        _conv(WIDTH, 3),
    )  # fmt: skip


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A published ``.pth`` state dict, unpickled with ``weights_only=True`` (code in the pickle is refused)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"TAEF2: {path} is not a plain tensor file (refused by torch.load(weights_only=True): {first}); "
            f"it was not executed"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"TAEF2: {path} is not a readable PyTorch state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"TAEF2: {path} does not hold a state dict of tensors")
    return state


def _read_part(folder: Path, part: str) -> dict[str, torch.Tensor]:
    safetensors, pth = folder / SAFETENSORS_NAMES[part], folder / PTH_NAMES[part]
    if safetensors.is_file():
        try:
            return load_file(str(safetensors))
        except Exception as exc:  # a corrupt header or truncated file
            raise ValueError(f"TAEF2: {safetensors} is not a valid safetensors file ({exc})") from exc
    if pth.is_file():
        return _read_pth(pth)
    raise FileNotFoundError(f"TAEF2: {folder} holds neither {safetensors.name} nor {pth.name} (the {part} weights)")


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"TAEF2: {where} does not match the TAEF2 layers; missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}"
        )
    module.load_state_dict(state, strict=True)


class TAEF2(nn.Module):
    """The frozen first stage: images in [−1, 1] ↔ unscaled latents (s and μ are in ``config``, applied by FastLDM).

    Attributes:
        encoder, decoder: the two ``nn.Sequential`` stacks (state-dict names as published).
        config: :class:`TAEF2Config` (image channels, scaling factor s, channel shift μ).
        license_text: the weights' licence, written beside every saved copy.
    """

    def __init__(self, config: TAEF2Config | None = None, license_text: str = "") -> None:
        super().__init__()
        self.config = config or TAEF2Config()
        self.encoder = build_encoder()
        self.decoder = build_decoder()
        self.license_text = license_text
        self.requires_grad_(False)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype."""
        return next(self.parameters()).dtype

    @property
    def image_channels(self) -> int:
        """1 (grey) or 3 (RGB)."""
        return self.config.image_channels

    def encode_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """E(u), u = (x + 1) / 2, for images x in [−1, 1] of ``image_channels`` channels: (B, 32, H/8, W/8).

        The shift μ and scale s (``config``) are applied by the caller: z = s · (E(u) − μ).
        """
        u = (x.to(self.dtype) + 1) / 2
        if u.shape[1] == 1:
            u = u.expand(-1, 3, -1, -1)
        return self.encoder(u)

    def decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        """x = 2 · clamp(D(z), 0, 1) − 1 for an unscaled latent z (z / s + μ); grey: the mean of the 3 channels."""
        u = self.decoder(z.to(self.dtype)).clamp(0, 1)
        if self.image_channels == 1:
            u = u.mean(dim=1, keepdim=True)
        return u * 2 - 1

    def train(self, mode: bool = True) -> TAEF2:
        """Always frozen: stays in eval mode."""
        return super().train(False)

    @classmethod
    def from_folder(cls, folder: str | Path, config: TAEF2Config | None = None) -> TAEF2:
        """Load the weights from a local folder (published ``.pth`` or saved safetensors) with every key matched.

        Raises:
            FileNotFoundError: the folder, a weights file or the ``LICENSE`` is missing.
            ValueError: a file is corrupt, carries pickled code, or does not fit the layers.
        """
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"TAEF2: {root} is not a folder")
        license_path = root / LICENSE_NAME
        if not license_path.is_file():
            raise FileNotFoundError(
                f"TAEF2: {license_path} is missing; the weights' licence must travel with them (copy the LICENSE "
                f"that came with taef2_encoder.pth / taef2_decoder.pth into {root})"
            )
        if config is None and (root / CONFIG_NAME).is_file():
            config = from_dict(TAEF2Config, json.loads((root / CONFIG_NAME).read_text()), str(root / CONFIG_NAME))
        model = cls(config, license_text=license_path.read_text())
        for part in ("encoder", "decoder"):
            _load_strict(getattr(model, part), _read_part(root, part), f"{root} ({part})")
        return model

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json``, ``encoder.safetensors``, ``decoder.safetensors`` and ``LICENSE`` to ``folder``."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        for part in ("encoder", "decoder"):
            state = {k: v.detach().to("cpu").contiguous() for k, v in getattr(self, part).state_dict().items()}
            save_file(state, str(root / SAFETENSORS_NAMES[part]), metadata={"format": "pt"})
        (root / CONFIG_NAME).write_text(json.dumps(to_dict(self.config), indent=2) + "\n")
        (root / LICENSE_NAME).write_text(self.license_text)
        return root

"""The FAST latent diffusion model: a frozen base LDM (VAE, UNet, conditioner) plus FARM and the Adaptor.

:class:`FastLDM` wraps the diffusers components behind the few operations FAST needs (FAST_SPEC §3, §6):

    z_0 = encode(x) = s · (E(x).mean − μ)      # x ∈ [−1, 1]^(B, 3|1, H, W), s = scaling_factor, z_0: (B, C, H/f, W/f)
    x   = decode(z) = clamp(D(z / s + μ), −1, 1)
                                               # μ: TAEF2's per-channel latent_shift (measured), else 0
                                               # first stage: a KL VAE trained from scratch ("kl", f = 2^(n−1), C = 4)
                                               # or the pretrained, frozen TAEF2 ("taef2", f = 8, C = 32)
    ε̂   = predict_eps(z, t, keys, m, z_bg) = Adaptor(UNet(u, t, c(keys)), m)
          u = z                                # unet.conditioning "none" (the LDM's UNet)
          u = z ‖ m ‖ (1 − m) ⊙ z_bg           # "inpaint" [ours]: the mask and the clean background beside it
          u = … ‖ unshuffle_f(M)               # "inpaint_px" [ours]: also the pixel mask, f² channels per cell
          UNet(u, t, c) = √(1−ᾱ_t) z + √ᾱ_t v̂  # unet.prediction "v_prediction" [ours]: the network outputs
                                               # v̂ ≈ √ᾱ_t ε − √(1−ᾱ_t) z_0, given back as the ε̂ it implies
    m   = latent_mask(M)                       # "bilinear": resize then ≥ 0.5 [release];  "any": max-pool [ours]

It also owns the model configs (:class:`FastModelConfig` and the presets ``tiny``, ``cpu_small``, ``full``) and the
FAST checkpoint (``fast.safetensors`` with the conditioner's learned tensors, FARM and the Adaptor, plus
``fast_config.json``). The base model itself is loaded and saved by :mod:`fast_core.models.base`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file
from torch import nn

from fast_core.configbase import check_choices, from_dict, to_dict
from fast_core.models.adaptor import Adaptor, AdaptorConfig
from fast_core.models.base import (
    DEFAULT_SCHEDULER_CONFIG,
    BaseComponents,
    UNetConfig,
    VAEConfig,
    build_base_components,
    check_safetensors,
    check_state,
    first_stage_factor,
    load_base_model,
    read_json,
    unet_in_channels,
)
from fast_core.models.conditioning import (
    LearnedPromptEncoder,
    PromptEncoderConfig,
    TextualInversionConditioner,
    TextualInversionConfig,
)
from fast_core.models.farm import FARM, FARMConfig, inpaint_input
from fast_core.models.taef2 import TAEF2, TAEF2Config

logger = logging.getLogger(__name__)

FAST_WEIGHTS = "fast.safetensors"
FAST_CONFIG = "fast_config.json"
MaskDownsample = Literal["bilinear", "any"]
Stage = Literal["fast", "base", "frozen"]
FirstStage = Literal["kl", "taef2"]


@dataclass(kw_only=True)
class FastModelConfig:
    """Every shape of a FAST model. The defaults are the ``full`` preset (CompVis ldm-text2im-large-256, 256² images).

    ``vae``, ``unet`` and ``prompt_encoder`` shape a base built from scratch; when a base is loaded they are replaced
    by the loaded model's values. ``textual_inversion`` applies to a base with a pretrained text encoder (bert).
    ``first_stage`` picks the autoencoder: ``kl`` (``vae``, trained) or ``taef2`` (``taef2``, pretrained, frozen;
    see :func:`with_taef2`).
    """

    first_stage: FirstStage = "kl"  # "kl": AutoencoderKL of shape ``vae``; "taef2": the pretrained TAEF2
    vae: VAEConfig = field(default_factory=VAEConfig)  # first stage (AutoencoderKL kwargs) when first_stage = "kl"
    taef2: TAEF2Config = field(default_factory=TAEF2Config)  # first stage when first_stage = "taef2"
    unet: UNetConfig = field(default_factory=UNetConfig)  # ε-prediction UNet (UNet2DConditionModel kwargs)
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)  # from-scratch conditioner
    textual_inversion: TextualInversionConfig = field(default_factory=TextualInversionConfig)  # pretrained text
    farm: FARMConfig = field(default_factory=FARMConfig)  # foreground-aware reconstruction module (§4)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)  # ε correction (§5)
    mask_downsample: MaskDownsample = "bilinear"  # pixel mask → latent mask: resize + ≥ 0.5 [release], or max-pool

    def __post_init__(self) -> None:
        check_choices(self)
        c = self.latent_channels
        if self.farm.latent_channels != c or self.adaptor.latent_channels != c:
            raise ValueError(
                f"FastModelConfig: farm.latent_channels ({self.farm.latent_channels}) and adaptor.latent_channels "
                f"({self.adaptor.latent_channels}) must equal the {self.first_stage} first stage's latent channels "
                f"({c})"
            )

    @property
    def latent_channels(self) -> int:
        """C of the latent z (the first stage's)."""
        return self.taef2.latent_channels if self.first_stage == "taef2" else self.vae.latent_channels

    @property
    def downsample_factor(self) -> int:
        """f = H / h of the first stage."""
        return self.taef2.downsample_factor if self.first_stage == "taef2" else self.vae.downsample_factor


def with_taef2(cfg: FastModelConfig, image_size: int) -> FastModelConfig:
    """``cfg`` on the pretrained TAEF2 first stage at ``image_size``² images: 32 latent channels at 1/8 size.

    The UNet, FARM and Adaptor keep their widths; the latent size h = image_size / 8 and C = 32 change, so a 128²
    window gives a 32 × 16 × 16 latent (the ``kl`` presets' f = 4 gives 4 × 32 × 32).
    """
    f = TAEF2Config().downsample_factor
    if image_size % (4 * f):
        raise ValueError(f"with_taef2: image_size must be a multiple of {4 * f} (FARM needs h % 4), got {image_size}")
    h, c = image_size // f, TAEF2Config().latent_channels
    return dataclasses.replace(
        cfg,
        first_stage="taef2",
        taef2=TAEF2Config(image_channels=cfg.vae.image_channels),
        unet=dataclasses.replace(cfg.unet, sample_size=h),
        farm=dataclasses.replace(cfg.farm, latent_channels=c, latent_size=h),
        adaptor=dataclasses.replace(cfg.adaptor, latent_channels=c),
    )


def _with_keys(cfg: FastModelConfig, keys: Sequence[str]) -> FastModelConfig:
    cfg.prompt_encoder.keys = list(keys)
    cfg.textual_inversion.keys = list(keys)
    return cfg


def tiny_config(keys: Sequence[str] = ("good", "tiny/defect"), image_channels: int = 3) -> FastModelConfig:
    """Tests: 32² images → 4×8×8 latents (f = 4); every module a few thousand parameters."""
    return _with_keys(
        FastModelConfig(
            vae=VAEConfig(
                image_channels=image_channels,
                block_out_channels=(8, 16, 16),
                layers_per_block=1,
                norm_num_groups=4,
                sample_size=32,
            ),
            unet=UNetConfig(
                sample_size=8,
                block_out_channels=(16, 32),
                layers_per_block=1,
                cross_attention_dim=16,
                attention_head_dim=2,
                norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            ),
            prompt_encoder=PromptEncoderConfig(seq_len=4, dim=16, num_heads=2),
            farm=FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8),
            adaptor=AdaptorConfig(widths=(8, 16, 16, 16, 8)),
        ),
        keys,
    )


def cpu_small_config(keys: Sequence[str] = ("good",), image_channels: int = 3) -> FastModelConfig:
    """From-scratch training on a 2-core CPU: 128² images → 4×32×32 latents (f = 4).

    A small VAE (0.68 M parameters) and UNet (6.7 M, attention only at 16² and 8²); FARM and the Adaptor keep the
    paper's sizes for 4×32×32 latents (1.86 M and 1.11 M). Measured on 2 CPU threads at batch 8 (float32): about
    0.9 s per VAE step, 1.1 s per base-UNet step and 1.0 s per FAST step, so a few hundred steps of each stage fit in
    about 40 minutes.
    """
    return _with_keys(
        FastModelConfig(
            vae=VAEConfig(
                image_channels=image_channels,
                block_out_channels=(16, 32, 64),
                layers_per_block=1,
                norm_num_groups=8,
                sample_size=128,
            ),
            unet=UNetConfig(
                sample_size=32,
                block_out_channels=(64, 128, 128),
                layers_per_block=1,
                cross_attention_dim=128,
                attention_head_dim=4,
                norm_num_groups=32,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            ),
            prompt_encoder=PromptEncoderConfig(seq_len=8, dim=128, num_heads=4),
            farm=FARMConfig(latent_size=32),
            adaptor=AdaptorConfig(),
        ),
        keys,
    )


def full_config(keys: Sequence[str] = ("good",), image_channels: int = 3) -> FastModelConfig:
    """The CompVis ``ldm-text2im-large-256`` shapes (txt2img-f8-large, FAST's released base), 256² → 4×32×32.

    vqvae: AutoencoderKL kl-f8, block_out_channels (128, 256, 512, 512), 2 layers per block, 4 latent channels,
    scaling_factor 0.18215. unet: UNet2DConditionModel, block_out_channels (320, 640, 1280, 1280), 2 layers per block,
    3 CrossAttn down blocks + DownBlock2D, cross_attention_dim 1280 (LDMBert: 32 layers, d_model 1280), 8 heads
    (diffusers ``attention_head_dim`` 8), sample_size 32. FARM/Adaptor at the paper's sizes.
    """
    return _with_keys(
        FastModelConfig(
            vae=VAEConfig(image_channels=image_channels),
            unet=UNetConfig(),
            prompt_encoder=PromptEncoderConfig(seq_len=77, dim=1280, num_heads=8),
        ),
        keys,
    )


PRESETS = {"tiny": tiny_config, "cpu_small": cpu_small_config, "full": full_config}


def model_preset(
    name: Literal["tiny", "cpu_small", "full"], keys: Sequence[str] = ("good",), image_channels: int = 3
) -> FastModelConfig:
    """The named preset (``tiny``, ``cpu_small`` or ``full``) with the given defect keys and image channels.

    >>> model_preset("tiny", keys=["good", "tile/crack"]).unet.sample_size
    8
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name](keys, image_channels)


def _conditioner_dim(conditioner: nn.Module) -> int | None:
    """The width D of the conditioner's tokens, where it can be read without a forward pass."""
    if isinstance(conditioner, LearnedPromptEncoder):
        return conditioner.config.dim
    encoder_cfg = getattr(getattr(conditioner, "text_encoder", None), "config", None)
    dim = getattr(encoder_cfg, "hidden_size", None) or getattr(encoder_cfg, "d_model", None)
    return int(dim) if dim is not None else None


class FastLDM(nn.Module):
    """VAE + UNet + conditioner (frozen base) and FARM + Adaptor (trained in the FAST stage).

    Attributes:
        vae: the first stage: a diffusers ``AutoencoderKL`` or the pretrained :class:`TAEF2` (frozen).
        unet: diffusers ``UNet2DConditionModel``.
        conditioner: ``keys -> (B, L, D)`` context (textual inversion over a text encoder, or a learned encoder).
        farm: :class:`FARM`.
        adaptor: :class:`Adaptor`.
        scaling_factor: s in z = s · (E(x) − μ).
        config: the :class:`FastModelConfig` (vae/unet/prompt_encoder reflect the actual base).
        scheduler_config: the base's noise schedule (DDIMScheduler kwargs).
    """

    def __init__(
        self,
        *,
        vae: nn.Module,
        unet: nn.Module,
        conditioner: nn.Module,
        farm: FARM,
        adaptor: Adaptor,
        config: FastModelConfig,
        scheduler_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        c = int(vae.config.latent_channels)
        if isinstance(vae, TAEF2) != (config.first_stage == "taef2"):
            raise ValueError(
                f"FastLDM: config.first_stage is {config.first_stage!r} but the first stage is a {type(vae).__name__}"
            )
        channels = {
            "unet out_channels": int(unet.config.out_channels),
            "farm": farm.config.latent_channels,
            "adaptor": adaptor.config.latent_channels,
        }
        bad = {k: v for k, v in channels.items() if v != c}
        if bad:
            raise ValueError(f"FastLDM: latent channels {bad} differ from the first stage's latent_channels ({c})")
        f = first_stage_factor(vae)
        if int(unet.config.in_channels) != unet_in_channels(config.unet, c, f):
            raise ValueError(
                f"FastLDM: unet in_channels is {unet.config.in_channels}; with conditioning="
                f"{config.unet.conditioning!r} on {c}-channel latents at 1/{f} it must be "
                f"{unet_in_channels(config.unet, c, f)}"
            )
        if farm.config.mask_detail not in (0, f * f):
            raise ValueError(
                f"FastLDM: FARM reads {farm.config.mask_detail} folded pixel-mask channels; at 1/{f} it must be 0 or "
                f"{f * f}"
            )
        classes = unet.config.get("num_class_embeds")
        if config.unet.key_embedding != (classes is not None):
            raise ValueError(
                f"FastLDM: config.unet.key_embedding is {config.unet.key_embedding} but the UNet has "
                f"num_class_embeds={classes}"
            )
        if classes is not None and (
            not isinstance(conditioner, LearnedPromptEncoder) or len(conditioner.keys) != classes
        ):
            raise ValueError(
                f"FastLDM: a UNet with {classes} key embeddings needs a learned prompt encoder with as many keys "
                f"(its key order indexes them); got {type(conditioner).__name__} with "
                f"{len(getattr(conditioner, 'keys', []))} keys"
            )
        dim = _conditioner_dim(conditioner)
        if dim is not None and dim != int(unet.config.cross_attention_dim):
            raise ValueError(
                f"FastLDM: the conditioner's width ({dim}) differs from unet cross_attention_dim "
                f"({unet.config.cross_attention_dim})"
            )
        self.vae = vae
        self.unet = unet
        self.conditioner = conditioner
        self.farm = farm
        self.adaptor = adaptor
        self.config = config
        self.scheduler_config = dict(scheduler_config or DEFAULT_SCHEDULER_CONFIG)
        if self.scheduler_config.get("prediction_type", "epsilon") != config.unet.prediction:
            raise ValueError(
                f"FastLDM: config.unet.prediction is {config.unet.prediction!r} but the scheduler config says "
                f"{self.scheduler_config.get('prediction_type', 'epsilon')!r}"
            )
        # ᾱ_t of the base's schedule (float64, CPU, t = 0 … T−1), read by a v-prediction UNet. A plain tensor, not a
        # buffer: model.to(dtype) must not round it to bf16
        self._alphas_cumprod = DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod.to(torch.float64)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.stage: Stage = "fast"
        self.configure_stage("fast")

    # ---- shapes

    @property
    def image_channels(self) -> int:
        """Channels of the images the first stage takes: 3 (RGB) or 1 (grayscale)."""
        if isinstance(self.vae, TAEF2):
            return self.vae.image_channels
        return int(self.vae.config.in_channels)

    @property
    def latent_channels(self) -> int:
        """C of the latent z."""
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        """f = H / h."""
        return first_stage_factor(self.vae)

    @property
    def keys(self) -> list[str]:
        """The defect keys the conditioner knows."""
        return list(self.conditioner.keys)

    # ---- the four operations

    def _check_image(self, x: torch.Tensor, name: str, channels: int) -> None:
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"FastLDM: {name} must have shape (B, {channels}, H, W) for this model "
                f"(image_channels={self.image_channels}), got {tuple(x.shape)}"
            )
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"FastLDM: {name} height and width must be multiples of {f}, got {tuple(x.shape[2:])}")

    def encode_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): the VAE posterior mean, or TAEF2's latent, before the scale s (deterministic)."""
        self._check_image(x, "x", self.image_channels)
        if isinstance(self.vae, TAEF2):
            return self.vae.encode_unscaled(x)
        return self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean

    def _latent_shift(self, like: torch.Tensor) -> torch.Tensor | None:
        """μ as a (1, C, 1, 1) tensor on ``like``'s device and dtype, or None when the first stage has no shift."""
        shift = getattr(self.vae.config, "latent_shift", None) if isinstance(self.vae, TAEF2) else None
        if shift is None:
            return None
        return torch.tensor(shift, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_0 = s · (E(x) − μ) (deterministic; μ = 0 unless the TAEF2 first stage has a ``latent_shift``).

        Args:
            x: (B, image_channels, H, W) images in [−1, 1]; H and W multiples of ``downsample_factor``.

        Returns:
            (B, C, H/f, W/f) scaled latent.
        """
        e = self.encode_unscaled(x)
        mu = self._latent_shift(e)
        return (e if mu is None else e - mu) * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = clamp(D(z / s + μ), −1, 1): (B, C, h, w) latent → (B, image_channels, f·h, f·w) image in [−1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"FastLDM.decode: z must have shape (B, {self.latent_channels}, h, w), got {tuple(z.shape)}"
            )
        if isinstance(self.vae, TAEF2):
            mu = self._latent_shift(z)
            return self.vae.decode_unscaled(z / self.scaling_factor + (0.0 if mu is None else mu))
        x = self.vae.decode(z.to(self.vae.dtype) / self.scaling_factor).sample
        return x.clamp(-1.0, 1.0)

    @property
    def inpaint(self) -> bool:
        """True when the UNet also takes the latent mask and the background beside it (``unet.conditioning``
        "inpaint" or "inpaint_px")."""
        return self.config.unet.conditioning != "none"

    @property
    def pixel_mask_input(self) -> bool:
        """True when the UNet also takes the pixel mask M, folded into the latent grid (``inpaint_px``): its callers
        must pass M."""
        return self.config.unet.conditioning == "inpaint_px"

    def unet_eps(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        keys: list[str],
        m: torch.Tensor | None = None,
        z_bg: torch.Tensor | None = None,
        M: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The base UNet's ε̂ = ε_θ(u, t, c(keys)), without the Adaptor (u: see the module docstring); a v-prediction
        UNet's output v̂ comes back as the ε̂ it implies, √(1−ᾱ_t) z + √ᾱ_t v̂ (float32).

        Args:
            z: (B, C, h, w) noisy latent.
            t: (B,) long timesteps in [0, T−1] (a 0-d tensor or int is broadcast to the batch).
            keys: B defect keys.
            m: (B, 1, h, w) latent mask (1 = anomaly); an ``inpaint`` UNet needs it, a plain one ignores it.
            z_bg: (B, C, h, w) clean latent of the background; likewise.
            M: (B, 1, f·h, f·w) pixel mask whose latent mask is m; an ``inpaint_px`` UNet needs it, others ignore it.
        """
        b = z.shape[0]
        if len(keys) != b:
            raise ValueError(f"FastLDM: got {len(keys)} keys for a batch of {b} latents")
        t = torch.as_tensor(t, device=z.device)
        if t.ndim == 0:
            t = t.expand(b)
        z_t = z
        if self.inpaint:
            if m is None or z_bg is None or z_bg.shape != z.shape or m.shape != (b, 1, *z.shape[2:]):
                raise ValueError(
                    f"FastLDM: an inpaint UNet needs the latent mask m (B, 1, h, w) and the background z_bg of z's "
                    f"shape {tuple(z.shape)}; got m {None if m is None else tuple(m.shape)}, z_bg "
                    f"{None if z_bg is None else tuple(z_bg.shape)}"
                )
            z = inpaint_input(z, m, z_bg)  # (B, 2C + 1, h, w)
            if self.pixel_mask_input:
                z = torch.cat([z, self._folded_mask(M, z_t)], dim=1)  # (B, 2C + 1 + f², h, w)
        context = self.conditioner(list(keys)).to(device=z.device, dtype=z.dtype)  # (B, L, D)
        labels = None
        if self.config.unet.key_embedding:  # the key's row in the prompt encoder, added to the timestep embedding
            labels = torch.tensor(self.conditioner.key_indices(list(keys)), device=z.device)
        out = self.unet(z, t, encoder_hidden_states=context, class_labels=labels).sample
        if self.config.unet.prediction == "epsilon":
            return out
        # v̂ → ε̂ = √(1−ᾱ_t) z_t + √ᾱ_t v̂, in float32 (at large t ε̂ ≈ z_t, and ẑ0 = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
        # multiplies its rounding by up to 1/√ᾱ_t ≈ 15: a bf16 ε̂ would cost the clean estimate ~5 %)
        ab = self._alphas_cumprod[t.cpu()].to(device=z_t.device, dtype=torch.float32).view(-1, 1, 1, 1)
        return (1.0 - ab).sqrt() * z_t.float() + ab.sqrt() * out.float()

    def _folded_mask(self, M: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """unshuffle_f(M): (B, f², h, w), channel a·f + b of cell (i, j) = M[f·i + a, f·j + b]."""
        f = self.downsample_factor
        b, _, h, w = z.shape
        if M is None or M.shape != (b, 1, f * h, f * w):
            raise ValueError(
                f"FastLDM: a model that reads the pixel mask (an inpaint_px UNet, a FARM with mask_detail) needs M "
                f"(B, 1, f·h, f·w) = {(b, 1, f * h, f * w)}; got "
                f"{None if M is None else tuple(M.shape)}"
            )
        return F.pixel_unshuffle(M.to(device=z.device, dtype=z.dtype), f)

    def predict_eps(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        keys: list[str],
        m: torch.Tensor,
        z_bg: torch.Tensor | None = None,
        M: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ε̂ = Adaptor(UNet(u, t, c(keys)), m): (B, C, h, w); m is the (B, 1, h, w) latent mask (1 = anomaly), z_bg
        the clean background latent (used by an ``inpaint`` UNet), M the pixel mask (used by an ``inpaint_px`` one)."""
        return self.adaptor(self.unet_eps(z, t, keys, m, z_bg, M), m.to(z.dtype))

    def farm_estimate(
        self,
        z: torch.Tensor,
        m: torch.Tensor,
        t: torch.Tensor,
        keys: list[str],
        z_bg: torch.Tensor | None = None,
        M: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ẑ0_fg = FARM(z, m, t) (FAST_SPEC §4); a keyed FARM also gets each sample's index in ``keys``, a context FARM
        the clean background latent ``z_bg``, a pixel-mask FARM (``mask_detail``) the pixel mask M folded."""
        ids = None
        if self.farm.key_embed is not None:
            ids = torch.tensor(self.conditioner.key_indices(keys), device=z.device, dtype=torch.long)
        detail = self._folded_mask(M, z) if self.farm.config.mask_detail else None
        return self.farm(z, m, t, ids, z_bg, detail)  # a FARM without context ignores z_bg

    def latent_mask(self, M: torch.Tensor, mode: MaskDownsample | None = None) -> torch.Tensor:
        """Pixel mask M (B, 1, H, W) in {0, 1} → latent mask m (B, 1, H/f, W/f) in {0., 1.}.

        "bilinear" [release]: m = [bilinear_resize(M) ≥ 0.5] (align_corners=False, no antialiasing); defects thinner
        than a latent cell can vanish. "any" [ours]: m = [maxpool_f(M) ≥ 0.5], a cell is anomalous when any of its
        pixels is.

        >>> model = FastLDM.from_scratch(tiny_config())  # doctest: +SKIP
        >>> M = torch.zeros(1, 1, 32, 32); M[..., 8] = 1  # a one-pixel vertical line
        >>> model.latent_mask(M, "bilinear").sum(), model.latent_mask(M, "any").sum()  # doctest: +SKIP
        (tensor(0.), tensor(8.))
        """
        mode = self.config.mask_downsample if mode is None else mode
        if mode not in ("bilinear", "any"):
            raise ValueError(f"latent_mask mode {mode!r} is not one of: 'bilinear', 'any'")
        self._check_image(M, "the mask M", 1)
        f = self.downsample_factor
        size = (M.shape[2] // f, M.shape[3] // f)
        M = M.float()
        if mode == "bilinear":
            soft = F.interpolate(M, size=size, mode="bilinear", align_corners=False)
        else:
            soft = F.max_pool2d(M, kernel_size=f)
        return (soft >= 0.5).float()

    # ---- training stages

    def configure_stage(self, stage: Stage) -> list[nn.Parameter]:
        """Set ``requires_grad`` for a training stage and return the trainable parameters.

        "fast": the conditioner's learned tensors + FARM + Adaptor (VAE, UNet, text encoder frozen) [release].
        "base": UNet + the conditioner's learned tensors (from-scratch base training; FARM/Adaptor unused).
        "frozen": nothing (synthesis).
        """
        if stage not in ("fast", "base", "frozen"):
            raise ValueError(f"stage {stage!r} is not one of: 'fast', 'base', 'frozen'")
        self.requires_grad_(False)
        groups: list[nn.Module | list[nn.Parameter]] = []
        if stage == "fast":
            groups = [self.conditioner.trainable_parameters(), self.farm, self.adaptor]
        elif stage == "base":
            groups = [self.conditioner.trainable_parameters(), self.unet]
        for group in groups:
            for p in group.parameters() if isinstance(group, nn.Module) else group:
                p.requires_grad_(True)
        self.stage = stage
        self.train(self.training)
        return self.trainable_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters of the current stage (those with ``requires_grad``), each once."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> FastLDM:
        """Set train/eval mode; frozen base modules (VAE always, UNet outside the base stage) stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        if self.stage != "base":
            self.unet.eval()
        return self

    # ---- construction

    @classmethod
    def from_base(
        cls,
        base: str | Path | BaseComponents,
        config: FastModelConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> FastLDM:
        """Wrap a base model (a directory or loaded components) with a new conditioner, FARM and Adaptor.

        A base with ``bert`` + ``tokenizer`` gets a :class:`TextualInversionConditioner` from
        ``config.textual_inversion``; a from-scratch base brings its own :class:`LearnedPromptEncoder`. FARM,
        the Adaptor and the learned token vectors are initialised from ``seed`` (the global RNG is left untouched).
        """
        components = base if isinstance(base, BaseComponents) else load_base_model(base)
        if components.prompt_encoder is not None:
            conditioner: nn.Module = components.prompt_encoder
            prompt_cfg = components.prompt_encoder.config
        else:
            generator = torch.Generator().manual_seed(seed)
            conditioner = TextualInversionConditioner.from_config(
                components.text_encoder, components.tokenizer, config.textual_inversion, generator=generator
            )
            prompt_cfg = config.prompt_encoder
        first: dict[str, Any] = (
            {"first_stage": "taef2", "taef2": dataclasses.replace(components.vae.config)}
            if isinstance(components.vae, TAEF2)
            else {"first_stage": "kl", "vae": VAEConfig.from_model(components.vae)}
        )
        prediction = components.scheduler_config.get("prediction_type", "epsilon")
        unet_cfg = dataclasses.replace(UNetConfig.from_model(components.unet), prediction=prediction)
        config = dataclasses.replace(config, **first, unet=unet_cfg, prompt_encoder=prompt_cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            farm = FARM(config.farm)
            adaptor = Adaptor(config.adaptor)
        model = cls(
            vae=components.vae,
            unet=components.unet,
            conditioner=conditioner,
            farm=farm,
            adaptor=adaptor,
            config=config,
            scheduler_config=components.scheduler_config,
        )
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model

    @classmethod
    def from_scratch(
        cls,
        config: FastModelConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        first_stage: TAEF2 | None = None,
    ) -> FastLDM:
        """A randomly initialised model (from-scratch base + FAST modules) of shape ``config``, from ``seed``.

        A ``taef2`` config needs the loaded pretrained ``first_stage`` (:meth:`TAEF2.from_folder`); its scaling
        factor and channel shift are taken from ``config.taef2``.
        """
        if (config.first_stage == "taef2") != (first_stage is not None):
            raise ValueError(
                f"FastLDM.from_scratch: a {config.first_stage!r} config "
                + ("needs the loaded TAEF2 weights (first_stage=TAEF2.from_folder(...))" if first_stage is None
                   else "takes no pretrained first_stage")
            )  # fmt: skip
        if first_stage is not None:
            first_stage.config = dataclasses.replace(config.taef2)
        components = build_base_components(
            config.vae, config.unet, config.prompt_encoder, seed=seed, first_stage=first_stage
        )
        return cls.from_base(components, config, device=device, dtype=dtype, seed=seed)

    def base_components(self) -> BaseComponents:
        """The base parts (for :func:`~fast_core.models.base.save_base_model` after from-scratch training)."""
        if isinstance(self.conditioner, LearnedPromptEncoder):
            return BaseComponents(
                vae=self.vae, unet=self.unet, scheduler_config=self.scheduler_config, prompt_encoder=self.conditioner
            )
        return BaseComponents(
            vae=self.vae,
            unet=self.unet,
            scheduler_config=self.scheduler_config,
            text_encoder=self.conditioner.text_encoder,
            tokenizer=self.conditioner.tokenizer,
        )

    # ---- the FAST checkpoint

    def fast_state_dict(self) -> dict[str, torch.Tensor]:
        """The FAST-stage tensors: the conditioner's learned parameters, FARM and the Adaptor (incl. BN buffers)."""
        learned = {id(p) for p in self.conditioner.trainable_parameters()}
        names = {f"conditioner.{n}" for n, p in self.conditioner.named_parameters() if id(p) in learned}
        return {k: v for k, v in self.state_dict().items() if k.startswith(("farm.", "adaptor.")) or k in names}

    def save_fast(self, path: str | Path) -> Path:
        """Write ``path/fast.safetensors`` (see :meth:`fast_state_dict`) and ``path/fast_config.json``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.fast_state_dict().items()}
        save_file(state, str(folder / FAST_WEIGHTS), metadata={"format": "pt"})
        (folder / FAST_CONFIG).write_text(json.dumps(to_dict(self.config), indent=2) + "\n")
        logger.info("saved FAST checkpoint (%d tensors) to %s", len(state), folder)
        return folder

    def load_fast_state(self, path: str | Path) -> None:
        """Load ``fast.safetensors`` from the folder ``path``; missing, unexpected or mis-shaped tensors are named."""
        weights = Path(path) / FAST_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"FAST checkpoint: {weights} is missing")
        check_safetensors(weights, "FAST checkpoint")
        state = load_file(str(weights))
        check_state(self.fast_state_dict(), state, f"FAST checkpoint {weights}")
        self.load_state_dict(state, strict=False)

    @classmethod
    def load_fast(
        cls,
        path: str | Path,
        base: str | Path | BaseComponents,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> FastLDM:
        """Rebuild a model saved by :meth:`save_fast` on top of ``base`` (a base directory or components)."""
        config = from_dict(FastModelConfig, read_json(Path(path) / FAST_CONFIG, "FAST checkpoint"), FAST_CONFIG)
        model = cls.from_base(base, config, device=device, dtype=dtype)
        for part in ("first_stage", "vae", "taef2", "unet", "prompt_encoder"):  # the checkpoint's own base
            if getattr(model.config, part) != getattr(config, part):
                raise ValueError(
                    f"FAST checkpoint {path}: trained on a base with {part} = {getattr(config, part)}, but the given "
                    f"base has {part} = {getattr(model.config, part)}"
                )
        model.load_fast_state(path)
        return model

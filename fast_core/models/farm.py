"""FARM, the foreground-aware reconstruction module of FAST (FAST_SPEC §4): predicts the clean anomaly latent ẑ0_fg.

FARM maps a noisy latent z_t, the latent-resolution anomaly mask m (1 = anomaly) and the timestep t (with ``context``
[ours], also the clean background (1 − m) ⊙ z_bg beside the mask) to an estimate of the clean foreground latent
m ⊙ z_0. A skip-free convolutional encoder brings its input to a (h/4)×(w/4) bottleneck, where a time-dependent
*background-adaptive soft mask* g_t ∈ (0, 1) damps responses outside the mask:

    u = h₃ ⊙ (m₄ + (1 − m₄) g_t) + b_t

and a decoder that re-reads the mask at every resolution (h/2, h, h) brings u back to the latent shape. With C = 4
latent channels, 32×32 latents and the default widths (64, 128, 256) the module holds 1,863,144 parameters (the
spec's "~1.86 M"): the natural reading of §4, with the 1000×128 time table counted as parameters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fast_core.configbase import check_choices
from fast_core.schedulers.scheduling_aias import AIASScheduler

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FARMConfig:
    """Shape and layout of :class:`FARM`; the defaults are the paper's module for 4×32×32 latents."""

    latent_channels: int = 4  # C: channels of the VAE latent
    widths: tuple[int, int, int] = (64, 128, 256)  # (w0, w1, w2): encoder widths at h, h/2 and h/4
    time_dim: int = 128  # width of the (trainable, sinusoid-initialised) timestep embedding table; even
    latent_size: int = 32  # h = w of the latent; fixes the soft-mask MLP output, (h/4)·(w/4); multiple of 4
    num_train_timesteps: int = 1000  # rows of the timestep table: t ∈ {0, …, T−1}
    # How the mask reaches h/2 and h/4: "max" = max-pool (a coarse cell is anomalous when any finer cell is, so thin
    # defects keep their bottleneck gate open), "bilinear" = bilinear resize with soft values (the gate sees coverage).
    mask_pool: Literal["max", "bilinear"] = "max"
    # Defect-aware FARM [ours]: K > 0 adds a learned, zero-initialised embedding per defect key to e_t, so the bias b
    # and the soft mask g know the defect type; 0 = the spec's key-blind module.
    num_keys: int = 0
    # U-Net skips [ours]: the decoder also reads the encoder's features at h/2 and h (h₂ and h₁). The spec's FARM has
    # none, so all it knows of z_t passes a (h/4)² bottleneck: at 16² latents (128² windows on TAEF2) that is 4×4,
    # too coarse to copy even a clean latent (measured: relative error 0.68 at t = 5, the same as at t = 500).
    skips: bool = False
    # Residual output [ours]: ẑ0_fg = m ⊙ (√ᾱ_t z_t + √(1−ᾱ_t) F(z_t, m, t)), F the network above. √ᾱ_t z_t is the
    # linear least-squares estimate of z_0 for unit-variance latents, so F only learns what it misses: at small t FARM
    # starts as (almost) the identity instead of having to learn to copy z_t (EDM's skip preconditioning).
    residual: bool = False
    # Background context [ours]: the encoder also reads m and the clean background beside it, z_t ‖ m ‖ (1 − m) ⊙ z_bg,
    # as an inpaint UNet does. The spec's FARM sees z_t alone, so at large t it cannot know the brightness and texture
    # around the mask and its MSE estimate falls back to a mean over all backgrounds; the background is known at
    # synthesis (the normal image's latent) and in training ((1 − m) ⊙ z_0).
    context: bool = False
    # Pixel mask [ours]: k > 0 channels of the pixel mask folded into the latent grid (unshuffle_f(M), k = f²) join m
    # wherever the module reads the mask at full latent resolution (the encoder's input and the decoder's last two
    # layers), so its estimate can put a thin or small defect where it lies inside a masked cell; 0 = the spec's
    # latent mask alone.
    mask_detail: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        self.widths = tuple(self.widths)
        if self.latent_channels < 1:
            raise ValueError(f"FARMConfig.latent_channels must be >= 1, got {self.latent_channels}")
        if len(self.widths) != 3 or any(w < 1 for w in self.widths):
            raise ValueError(f"FARMConfig.widths must be three positive ints (w0, w1, w2), got {self.widths}")
        if self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"FARMConfig.time_dim must be a positive even int, got {self.time_dim}")
        if self.latent_size < 4 or self.latent_size % 4:
            raise ValueError(f"FARMConfig.latent_size must be a positive multiple of 4, got {self.latent_size}")
        for name in ("skips", "residual", "context"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FARMConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.mask_detail, bool) or not isinstance(self.mask_detail, int) or self.mask_detail < 0:
            raise ValueError(f"FARMConfig.mask_detail must be an integer >= 0, got {self.mask_detail!r}")
        if isinstance(self.num_keys, bool) or not isinstance(self.num_keys, int) or self.num_keys < 0:
            raise ValueError(f"FARMConfig.num_keys must be an integer >= 0, got {self.num_keys!r}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"FARMConfig.num_train_timesteps must be >= 1, got {self.num_train_timesteps}")


def inpaint_input(z: torch.Tensor, m: torch.Tensor, z_bg: torch.Tensor) -> torch.Tensor:
    """z ‖ m ‖ (1 − m) ⊙ z_bg: (B, 2C + 1, h, w), the input layout of an inpaint UNet and of a context FARM (the mask
    and the clean background beside it; nothing of z_bg inside the mask is read). Shapes are checked by the callers.
    """
    m = m.to(z.dtype)
    return torch.cat([z, m, (1.0 - m) * z_bg.to(z.dtype)], dim=1)


def sinusoidal_table(num_timesteps: int, dim: int) -> torch.Tensor:
    """The sinusoidal timestep table used to initialise FARM's embedding.

    Row t is [sin(t f_0), …, sin(t f_{d/2−1}), cos(t f_0), …, cos(t f_{d/2−1})] with f_i = 10000^(−i/(d/2)),
    computed in float64 and returned as float32.

    Args:
        num_timesteps: number of rows T.
        dim: embedding width d (even).

    Returns:
        A (T, d) float32 tensor.

    >>> sinusoidal_table(1000, 4)[0].tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_table needs an even dim, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)  # (d/2,)
    angles = torch.arange(num_timesteps, dtype=torch.float64)[:, None] * freqs[None, :]  # (T, d/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).to(torch.float32)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """3×3 conv (padding 1) + BatchNorm + ReLU, as a list of layers."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """The encoder Block: two (3×3 conv + BN + ReLU)."""
    return nn.Sequential(*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out))


class FARM(nn.Module):
    """Foreground-aware reconstruction: ẑ0_fg = FARM(z_t, m, t) (FAST_SPEC §4).

    Notation: C latent channels, h×w latent size, (w0, w1, w2) the widths, m the anomaly mask (1 = anomaly),
    m₂/m₄ the mask at h/2 and h/4 (``config.mask_pool``), e_t the timestep embedding.

        h₁ = Block(z_t)                          # (B, w0, h, w);  context: Block(z_t ‖ m ‖ (1 − m) z_bg)
        h₂ = Block(maxpool(h₁))                  # (B, w1, h/2, w/2)
        h₃ = Conv1×1(Block(maxpool(h₂)))          # (B, w2, h/4, w/4)
        e = e_t (+ e_k, keyed)                   # (B, time_dim); e_k: the defect key's embedding [ours]
        b_t = Linear(e);  g_t = σ(MLP(e))        # (B, w2, 1, 1), (B, 1, h/4, w/4)
        u  = h₃ ⊙ (m₄ + (1 − m₄) g_t) + b_t
        d₂ = ConvBNReLU([up(Conv1×1(u)), m₂])    # (B, w1, h/2, w/2);  skips: [up(Conv1×1(u)), m₂, h₂]
        d₁ = ConvBNReLU([up(d₂), m])             # (B, w0, h, w);      skips: [up(d₂), m, h₁]
        ẑ0_fg = Conv3×3([d₁, m])                 # (B, C, h, w)
        (mask_detail k > 0: m ‖ unshuffle_f(M) wherever m is read at h × w, in the first block and the last two)

    With ``config.skips`` [ours] the decoder also reads h₂ and h₁, so fine detail of z_t need not pass the (h/4)²
    bottleneck; the gate g_t still acts on the bottleneck alone. With ``config.context`` [ours] the first block also
    reads the mask and the clean background latent outside it (2C + 1 input channels). With ``config.residual``
    [ours] the network's output F is a correction to the linear estimate: ẑ0_fg = m ⊙ (√ᾱ_t z_t + √(1−ᾱ_t) F), with
    FAST's schedule ᾱ.

    >>> farm = FARM(FARMConfig(latent_size=16))
    >>> farm(torch.zeros(2, 4, 16, 16), torch.zeros(2, 1, 16, 16), torch.tensor([999, 0])).shape
    torch.Size([2, 4, 16, 16])
    """

    def __init__(self, config: FARMConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else FARMConfig()
        cfg = self.config
        c, (w0, w1, w2) = cfg.latent_channels, cfg.widths
        self.bottleneck_size = cfg.latent_size // 4
        # encoder (no skip connections)
        k = cfg.mask_detail
        self.enc1 = _block((2 * c + 1 if cfg.context else c) + k, w0)
        self.enc2 = _block(w0, w1)
        self.enc3 = _block(w1, w2)
        self.enc_proj = nn.Conv2d(w2, w2, 1)
        # time: trainable table initialised with sinusoids; a per-channel bias and the soft-mask MLP
        self.time_embed = nn.Embedding(cfg.num_train_timesteps, cfg.time_dim)
        with torch.no_grad():
            self.time_embed.weight.copy_(sinusoidal_table(cfg.num_train_timesteps, cfg.time_dim))
        self.time_bias = nn.Linear(cfg.time_dim, w2)
        self.time_mask = nn.Sequential(
            nn.Linear(cfg.time_dim, w2), nn.ReLU(inplace=True), nn.Linear(w2, self.bottleneck_size**2)
        )
        # decoder with the mask concatenated at every resolution
        self.dec_proj = nn.Conv2d(w2, w2, 1)
        skip1, skip2 = (w0, w1) if cfg.skips else (0, 0)
        self.dec2 = nn.Sequential(*_conv_bn_relu(w2 + 1 + skip2, w1))
        self.dec1 = nn.Sequential(*_conv_bn_relu(w1 + 1 + k + skip1, w0))
        self.dec_out = nn.Conv2d(w0 + 1 + k, c, 3, padding=1)
        # ᾱ_t of FAST's training schedule (FAST_SPEC §1) for the residual output; not saved (derived)
        if cfg.residual:
            alpha_bar = AIASScheduler(num_train_timesteps=cfg.num_train_timesteps).alphas_cumprod.to(torch.float32)
            self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        # defect keys (created last and zero-initialised: the other layers draw the same initial values as without)
        self.key_embed = nn.Embedding(cfg.num_keys, cfg.time_dim) if cfg.num_keys else None
        if self.key_embed is not None:
            nn.init.zeros_(self.key_embed.weight)

    def _check_inputs(self, z_t: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Validate shapes and the timestep range; return t as a (B,) long tensor."""
        cfg = self.config
        if z_t.ndim != 4:
            raise ValueError(f"FARM expects z_t of shape (B, C, h, w), got {tuple(z_t.shape)}")
        b, c, h, w = z_t.shape
        if h % 4 or w % 4:
            raise ValueError(f"FARM needs latent height and width divisible by 4, got {h}×{w}")
        if c != cfg.latent_channels or h != cfg.latent_size or w != cfg.latent_size:
            raise ValueError(
                f"FARM was built for latents ({cfg.latent_channels}, {cfg.latent_size}, {cfg.latent_size}) "
                f"(FARMConfig.latent_channels / latent_size), got ({c}, {h}, {w})"
            )
        if tuple(m.shape) != (b, 1, h, w):
            raise ValueError(f"FARM expects the mask m of shape {(b, 1, h, w)}, got {tuple(m.shape)}")
        t = torch.as_tensor(t, device=z_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if tuple(t.shape) != (b,):
            raise ValueError(f"FARM expects t of shape ({b},), got {tuple(t.shape)}")
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"FARM expects integer timesteps, got dtype {t.dtype}")
        if int(t.min()) < 0 or int(t.max()) >= cfg.num_train_timesteps:
            raise ValueError(
                f"FARM timesteps must lie in [0, {cfg.num_train_timesteps - 1}], got [{int(t.min())}, {int(t.max())}]"
            )
        return t.long()

    def _check_keys(self, key_ids: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        """A keyed FARM's (B,) key indices, checked against the batch and ``num_keys``."""
        k = self.config.num_keys
        if key_ids is None:
            raise ValueError(f"this FARM is keyed (num_keys={k}): pass key_ids, one defect-key index per sample")
        key_ids = torch.as_tensor(key_ids, device=t.device)
        if tuple(key_ids.shape) != tuple(t.shape) or key_ids.is_floating_point():
            raise ValueError(f"FARM expects integer key_ids of shape {tuple(t.shape)}, got {tuple(key_ids.shape)}")
        if int(key_ids.min()) < 0 or int(key_ids.max()) >= k:
            raise ValueError(f"FARM key_ids must lie in [0, {k - 1}], got [{int(key_ids.min())}, {int(key_ids.max())}]")
        return key_ids.long()

    def _pool_mask(self, m: torch.Tensor, factor: int) -> torch.Tensor:
        """The mask at 1/factor resolution: max-pool or bilinear resize (``config.mask_pool``)."""
        if self.config.mask_pool == "max":
            return F.max_pool2d(m, factor)
        return F.interpolate(m, scale_factor=1.0 / factor, mode="bilinear", align_corners=False)

    def soft_mask(self, t: torch.Tensor) -> torch.Tensor:
        """The background-adaptive soft mask g_t = σ(MLP(e_t)) ∈ (0, 1).

        Args:
            t: (B,) long timesteps in [0, T−1].

        Returns:
            g_t of shape (B, 1, h/4, w/4).
        """
        return self._soft_mask(self.time_embed(t))

    def _soft_mask(self, emb: torch.Tensor) -> torch.Tensor:
        """g_t from the (B, time_dim) embedding, reshaped to (B, 1, h/4, w/4)."""
        g = torch.sigmoid(self.time_mask(emb))  # (B, (h/4)·(w/4))
        return g.view(-1, 1, self.bottleneck_size, self.bottleneck_size)

    def _encoder_input(self, z_t: torch.Tensor, m: torch.Tensor, z_bg: torch.Tensor | None) -> torch.Tensor:
        """z_t, or z_t ‖ m ‖ (1 − m) ⊙ z_bg for a context FARM (``z_bg`` checked against z_t's shape)."""
        if not self.config.context:
            return z_t
        if z_bg is None or tuple(z_bg.shape) != tuple(z_t.shape):
            got = None if z_bg is None else tuple(z_bg.shape)
            raise ValueError(
                f"this FARM reads the background (context): pass z_bg of shape {tuple(z_t.shape)}, got {got}"
            )
        return inpaint_input(z_t, m, z_bg)

    def _full_mask(self, m: torch.Tensor, detail: torch.Tensor | None) -> torch.Tensor:
        """m, or m ‖ detail when the module reads the folded pixel mask (``config.mask_detail`` = k channels)."""
        k = self.config.mask_detail
        if not k:
            return m
        if detail is None or tuple(detail.shape) != (m.shape[0], k, *m.shape[2:]):
            got = None if detail is None else tuple(detail.shape)
            raise ValueError(
                f"this FARM reads the pixel mask (mask_detail={k}): pass detail of shape "
                f"{(m.shape[0], k, *m.shape[2:])}, got {got}"
            )
        return torch.cat([m, detail.to(m.dtype)], dim=1)

    def forward(
        self,
        z_t: torch.Tensor,
        m: torch.Tensor,
        t: torch.Tensor,
        key_ids: torch.Tensor | None = None,
        z_bg: torch.Tensor | None = None,
        detail: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstruct the clean foreground latent.

        Args:
            z_t: (B, C, h, w) noisy latent; h = w = ``config.latent_size``.
            m: (B, 1, h, w) float anomaly mask in {0, 1} (1 = anomaly) at latent resolution.
            t: (B,) long timesteps in [0, T−1] (a 0-d tensor is broadcast to the batch).
            key_ids: (B,) long defect-key indices in [0, num_keys); required by a keyed FARM, ignored otherwise.
            z_bg: (B, C, h, w) clean background latent (only (1 − m) ⊙ z_bg is read); required by a context FARM,
                ignored otherwise.
            detail: (B, k, h, w) the folded pixel mask unshuffle_f(M); required when ``config.mask_detail`` = k > 0,
                ignored otherwise.

        Returns:
            ẑ0_fg of shape (B, C, h, w), trained against m ⊙ z_0.
        """
        t = self._check_inputs(z_t, m, t)
        m = m.to(z_t.dtype)
        m2, m4 = self._pool_mask(m, 2), self._pool_mask(m, 4)  # (B,1,h/2,w/2), (B,1,h/4,w/4)
        mh = self._full_mask(m, detail)  # (B, 1 + k, h, w): m, or m ‖ unshuffle_f(M)
        # 1. encoder
        h1 = self.enc1(torch.cat([self._encoder_input(z_t, m, z_bg), mh[:, 1:]], dim=1))  # (B, w0, h, w)
        h2 = self.enc2(F.max_pool2d(h1, 2))  # (B, w1, h/2, w/2)
        h3 = self.enc_proj(self.enc3(F.max_pool2d(h2, 2)))  # (B, w2, h/4, w/4)
        # 2. time-gated bottleneck: u = h₃ ⊙ (m₄ + (1 − m₄) g_t) + b_t
        emb = self.time_embed(t)  # (B, time_dim)
        if self.key_embed is not None:
            emb = emb + self.key_embed(self._check_keys(key_ids, t))
        bias_t = self.time_bias(emb)[:, :, None, None]  # (B, w2, 1, 1)
        g_t = self._soft_mask(emb)  # (B, 1, h/4, w/4)
        u = h3 * (m4 + (1.0 - m4) * g_t) + bias_t  # (B, w2, h/4, w/4)
        # 3. decoder, re-reading the mask at every resolution
        d = self.dec_proj(u)
        d = F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False)  # (B, w2, h/2, w/2)
        skips = self.config.skips
        d = self.dec2(torch.cat([d, m2, h2] if skips else [d, m2], dim=1))  # (B, w1, h/2, w/2)
        d = F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False)  # (B, w1, h, w)
        d = self.dec1(torch.cat([d, mh, h1] if skips else [d, mh], dim=1))  # (B, w0, h, w)
        out = self.dec_out(torch.cat([d, mh], dim=1))  # (B, C, h, w)
        if not self.config.residual:
            return out
        ab = self.alpha_bar[t].to(z_t.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return m * (ab.sqrt() * z_t + (1.0 - ab).sqrt() * out)

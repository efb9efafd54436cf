"""The Adaptor of FAST (FAST_SPEC §5): a small mask-aware network applied to the UNet's noise prediction ε̂.

Input is concat(ε̂, m repeated to C channels); five 3×3 conv + BatchNorm + ReLU layers (2C → 64 → 128 → 256 → 256 →
64) and a 1×1 conv back to C channels. Three modes: ``"none"`` (identity; the module holds no layers), ``"replace"``
(the authors' release: the output *replaces* ε̂, random init, so it must be trained before use) and
``"residual_zero_init"`` (ε̂ + output with the last 1×1 conv zero-initialised, so the untrained Adaptor is exactly the
identity). At C = 4 with the default widths it holds 1,113,092 parameters (the spec's "~1.1 M").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fast_core.configbase import check_choices

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class AdaptorConfig:
    """Shape and mode of :class:`Adaptor`; the defaults are the paper's module for 4-channel latents."""

    latent_channels: int = 4  # C: channels of ε̂ (= the latent)
    widths: tuple[int, ...] = (64, 128, 256, 256, 64)  # output widths of the 3×3 conv + BN + ReLU layers
    # "none": identity; "replace": ε ← Adaptor(ε, m) [release]; "residual_zero_init": ε ← ε + Adaptor(ε, m), zero init
    mode: Literal["none", "replace", "residual_zero_init"] = "replace"

    def __post_init__(self) -> None:
        check_choices(self)
        self.widths = tuple(self.widths)
        if self.latent_channels < 1:
            raise ValueError(f"AdaptorConfig.latent_channels must be >= 1, got {self.latent_channels}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"AdaptorConfig.widths must be a non-empty tuple of positive ints, got {self.widths}")


class Adaptor(nn.Module):
    """Mask-aware correction of the noise prediction (FAST_SPEC §5).

    With a = Conv1×1(ConvBNReLU⁵([ε̂, m, …, m])):

        mode "none":               ε_out = ε̂
        mode "replace":            ε_out = a
        mode "residual_zero_init": ε_out = ε̂ + a,  with the final 1×1 conv's weight and bias zero at init

    >>> ad = Adaptor(AdaptorConfig(mode="residual_zero_init"))
    >>> eps = torch.randn(2, 4, 8, 8)
    >>> bool(torch.equal(ad(eps, torch.ones(2, 1, 8, 8)), eps))
    True
    """

    def __init__(self, config: AdaptorConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else AdaptorConfig()
        cfg = self.config
        self.net: nn.Sequential | None = None
        if cfg.mode == "none":
            return
        c = cfg.latent_channels
        layers: list[nn.Module] = []
        c_in = 2 * c
        for width in cfg.widths:
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c_in = width
        out = nn.Conv2d(c_in, c, 1)
        if cfg.mode == "residual_zero_init":
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, eps: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Apply the Adaptor.

        Args:
            eps: (B, C, h, w) noise prediction ε̂ of the UNet.
            m: (B, 1, h, w) float anomaly mask in {0, 1} (1 = anomaly) at latent resolution.

        Returns:
            The corrected ε of shape (B, C, h, w) (``eps`` itself in mode "none").
        """
        cfg = self.config
        if eps.ndim != 4 or eps.shape[1] != cfg.latent_channels:
            raise ValueError(
                f"Adaptor expects eps of shape (B, {cfg.latent_channels}, h, w) "
                f"(AdaptorConfig.latent_channels), got {tuple(eps.shape)}"
            )
        b, c, h, w = eps.shape
        if tuple(m.shape) != (b, 1, h, w):
            raise ValueError(f"Adaptor expects the mask m of shape {(b, 1, h, w)}, got {tuple(m.shape)}")
        if self.net is None:
            return eps
        x = torch.cat([eps, m.to(eps.dtype).expand(b, c, h, w)], dim=1)  # (B, 2C, h, w)
        out = self.net(x)  # (B, C, h, w)
        if cfg.mode == "residual_zero_init":
            return eps + out
        return out

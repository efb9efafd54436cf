"""What one sampling pass is set up with: the shared noise schedule, the sampler names and NFE ranges, the config.

A leaf of the synthesis code: :mod:`fast_core.samplers` builds schedulers from a :class:`SynthesisConfig` and
:mod:`fast_core.synthesis` runs the loop it describes; both import this module, which imports neither.

Every sampler shares the FAST noise schedule (FAST_SPEC §1): T = 1000, β_t = linspace(√β_0, √β_{T−1}, T)² with
β_0 = 0.00085, β_{T−1} = 0.012 (diffusers ``scaled_linear``), ᾱ_t = ∏_{s≤t} (1 − β_s), ᾱ_{−1} = 1.

NFE (UNet evaluations per sample) each sampler can run:

    aias   3 .. 1000   K = nfe − 2 >= 1 closed-form segments, then the two plain steps t = 1 → 0 → −1
    ddpm   1 .. 1000   one evaluation per step, every integer timestep at most once
    ddim   1 .. 1000   likewise
    plms   3 .. 1001   n = nfe − 1 >= 2 steps plus diffusers' warm-up evaluation
    dpmpp  2 .. 1000   DPM-Solver++(2M), one evaluation per step
    unipc  2 .. 1000   UniPC (bh2, order 2), one evaluation per step
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fast_core.configbase import check_choices

__all__ = [
    "BETA_END",
    "BETA_SCHEDULE",
    "BETA_START",
    "MAX_NFE",
    "MIN_NFE",
    "NUM_TRAIN_TIMESTEPS",
    "Paste",
    "SamplerName",
    "SynthesisConfig",
]

SamplerName = Literal["aias", "ddpm", "ddim", "plms", "dpmpp", "unipc"]
Paste = Literal["residual", "replace", "smooth"]  # what goes inside M (SynthesisConfig.paste)

NUM_TRAIN_TIMESTEPS = 1000  # T
BETA_START = 0.00085  # β_0
BETA_END = 0.012  # β_{T−1}
BETA_SCHEDULE = "scaled_linear"  # β_t = linspace(√β_0, √β_{T−1}, T)²

# Smallest NFE each sampler can run: AIAS needs K = nfe − 2 >= 1 segments, PLMS n = nfe − 1 >= 2 steps.
MIN_NFE: dict[str, int] = {"aias": 3, "ddpm": 1, "ddim": 1, "plms": 3, "dpmpp": 2, "unipc": 2}
# Largest NFE: every integer timestep at most once (PLMS: 1000 steps plus the warm-up evaluation).
MAX_NFE: dict[str, int] = {"aias": 1000, "ddpm": 1000, "ddim": 1000, "plms": 1001, "dpmpp": 1000, "unipc": 1000}


@dataclass(kw_only=True)
class SynthesisConfig:
    """How one sampling pass runs: the sampler and its NFE, FARM, the background window, the start, the mask."""

    sampler: SamplerName = "aias"  # aias (FAST) or a diffusers baseline: ddpm, ddim (η = 0), plms
    nfe: int = 10  # UNet evaluations per sample; for ddpm/ddim/plms the step count (e.g. 1000 / 50 / 50)
    coefficients: Literal["exact", "release"] = "exact"  # AIAS segment coefficients: closed form or authors' release
    spacing: Literal["uniform", "quadratic", "logsnr"] = "uniform"  # AIAS segment boundary placement
    use_farm: bool = True  # FARM foreground reconstruction + anomaly-aware noise mixing before each UNet call
    farm_min_t: int = 0  # mix with FARM only at t >= this (0: every step but the tail, FAST_SPEC §3) [ours]
    bg_window: tuple[int, int] = (250, 750)  # re-inject the noised background when lo < t_e < hi; (0, 0) disables
    # z at the first timestep t₀: pure noise, z_bg noised to t₀, or the latent of a reference image (the normal image
    # with a real defect pasted inside M, given to synthesize()) noised to t₀ [ours]
    start: Literal["noise", "noised_background", "reference"] = "noise"
    # t₀, the first timestep: 999 = T − 1; lower (AIAS only, a noised start only) keeps the start's coarse content,
    # SDEdit-style: the K+1 AIAS boundaries are placed between t₀ and 1 [ours]
    start_t: int = NUM_TRAIN_TIMESTEPS - 1
    # pixel → latent mask: resize then >= 0.5, or max-pool; None: the rule the model was trained with (its config)
    mask_downsample: Literal["bilinear", "any"] | None = None
    batch_size: int = 8  # samples per forward pass; larger inputs are processed in chunks of this size
    # what goes inside M: the decoded latent (replace, FAST_SPEC §3), the input plus the decoded change (residual), or
    # the input plus that change blurred at the mask's own scale (smooth, fast_core.smooth_paste) [ours]
    paste: Paste = "residual"
    smooth_scale: float = 0.5  # paste "smooth": σ = smooth_scale × the mask's half-thickness in pixels
    # paste "smooth": a mask thinner than this (half-thickness r in the model's pixels) keeps its change unsmoothed,
    # as the residual paste does: routing by size, thin defects sharp and area defects smoothed (0: smooth every mask)
    smooth_min_radius: int = 0
    # paste "smooth": σ capped at this many pixels (None: no cap). A cap at the decoder's cell scale removes the
    # cell-periodic fill of an unconverged decoder and keeps the painted structure coarser than a cell
    smooth_max_sigma: float | None = None
    # classifier-free guidance w towards the defect key, against the normal key "good" [ours]:
    # ε̂ = ε̂_good + w (ε̂_key − ε̂_good); 1 = off (one UNet call per step), otherwise two calls per step
    guidance: float = 1.0
    # clamp the UNet's clean-latent estimate ẑ0 to [−c, c] before each step (None: no clipping, FAST_SPEC §3) [ours]
    clip_x0: float | None = None

    def __post_init__(self) -> None:
        """Check the choices and the ranges; raise ``ValueError`` naming the field."""
        check_choices(self)
        if not isinstance(self.use_farm, bool):
            raise ValueError(f"SynthesisConfig.use_farm must be true or false, got {self.use_farm!r}")
        lo_nfe, hi_nfe = MIN_NFE[self.sampler], MAX_NFE[self.sampler]
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or not lo_nfe <= self.nfe <= hi_nfe:
            raise ValueError(
                f"SynthesisConfig.nfe must be an integer in [{lo_nfe}, {hi_nfe}] for sampler={self.sampler!r}, "
                f"got {self.nfe!r}"
            )
        window = tuple(self.bg_window) if isinstance(self.bg_window, list | tuple) else None
        if (
            window is None
            or len(window) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in window)
            or not 0 <= window[0] <= window[1] <= NUM_TRAIN_TIMESTEPS
        ):
            raise ValueError(
                f"SynthesisConfig.bg_window must be two integers 0 <= lo <= hi <= {NUM_TRAIN_TIMESTEPS} "
                f"(re-inject when lo < t_e < hi; (0, 0) disables), got {self.bg_window!r}"
            )
        self.bg_window = window
        w = self.guidance
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf:
            raise ValueError(f"SynthesisConfig.guidance must be a number >= 0 (1 = off), got {self.guidance!r}")
        self.guidance = float(self.guidance)
        f = self.farm_min_t
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"SynthesisConfig.farm_min_t must be an integer in [0, {NUM_TRAIN_TIMESTEPS}], got {f!r}")
        t0 = self.start_t
        if isinstance(t0, bool) or not isinstance(t0, int) or not 1 <= t0 <= NUM_TRAIN_TIMESTEPS - 1:
            raise ValueError(
                f"SynthesisConfig.start_t must be an integer in [1, {NUM_TRAIN_TIMESTEPS - 1}], got {t0!r}"
            )
        if t0 < NUM_TRAIN_TIMESTEPS - 1 and self.start == "noise":
            raise ValueError(
                f"SynthesisConfig.start_t = {t0} needs a noised start (start: noised_background or reference): pure "
                f"noise belongs at t = {NUM_TRAIN_TIMESTEPS - 1}"
            )
        if t0 < NUM_TRAIN_TIMESTEPS - 1 and self.sampler != "aias":
            raise ValueError(
                f"SynthesisConfig.start_t = {t0} is implemented for sampler aias only, not {self.sampler!r}"
            )
        if t0 < NUM_TRAIN_TIMESTEPS - 1 and t0 < self.nfe - 1:
            raise ValueError(
                f"SynthesisConfig.start_t = {t0} leaves no room for nfe = {self.nfe}: AIAS needs nfe − 1 distinct "
                f"segment boundaries from start_t down to 1"
            )
        k = self.smooth_scale
        if isinstance(k, bool) or not isinstance(k, int | float) or not 0 < k < math.inf:
            raise ValueError(f"SynthesisConfig.smooth_scale must be a number > 0, got {k!r}")
        self.smooth_scale = float(k)
        r = self.smooth_min_radius
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(
                f"SynthesisConfig.smooth_min_radius must be an integer >= 0 (0: smooth every mask), got {r!r}"
            )
        s = self.smooth_max_sigma
        if s is not None and (isinstance(s, bool) or not isinstance(s, int | float) or not 0 < s < math.inf):
            raise ValueError(f"SynthesisConfig.smooth_max_sigma must be a number > 0 or null (no cap), got {s!r}")
        self.smooth_max_sigma = None if s is None else float(s)
        c = self.clip_x0
        if c is not None and (isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c < math.inf):
            raise ValueError(f"SynthesisConfig.clip_x0 must be a number > 0 or null (no clipping), got {c!r}")
        self.clip_x0 = None if c is None else float(c)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"SynthesisConfig.batch_size must be an integer >= 1, got {self.batch_size!r}")

    @property
    def pastes_change(self) -> bool:
        """True for the pastes that add a decoded change to the input (residual, smooth), not decode(z) itself."""
        return self.paste != "replace"

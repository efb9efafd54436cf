"""AIAS, the anomaly-informed accelerated sampler of FAST, as a diffusers-style scheduler object.

Paper: "FAST: Foreground-aware Diffusion with Accelerated Sampling Trajectory" (NeurIPS 2025, arXiv:2509.20295).
The caller writes the loop (``for t in s.timesteps: eps = net(z, t); z = s.step(eps, t, z).prev_sample``); this module
only holds the noise schedule, the step grid and the segment coefficients.

One-step DDPM posterior (FAST_SPEC §1), ᾱ_{-1} = 1:

    q(z_{k-1} | z_k, z_0) = N(a_k z_k + b_k z_0, σ_k² I)
    a_k = √α_k (1 − ᾱ_{k−1}) / (1 − ᾱ_k),   b_k = √ᾱ_{k−1} β_k / (1 − ᾱ_k),   σ_k² = β_k (1 − ᾱ_{k−1}) / (1 − ᾱ_k)

Segment update t_s → t_e (t_s > t_e): the clean estimate ẑ_0 = (z_{t_s} − √(1−ᾱ_{t_s}) ε̂) / √ᾱ_{t_s} is predicted once
and held fixed while the posteriors k = t_s … t_e+1 are composed into one affine Gaussian kernel:

    z_{t_e} = Π z_{t_s} + Σ ẑ_0 + √V ξ,   ξ ~ N(0, I)

    recursion, from (Π, Σ, V) = (1, 0, 0), for k = t_s down to t_e+1:
        Π ← a_k Π ;   Σ ← a_k Σ + b_k ;   V ← a_k² V + σ_k²
    closed form ("exact"), r = ᾱ_{t_s} / ᾱ_{t_e}:
        Π = √r (1 − ᾱ_{t_e}) / (1 − ᾱ_{t_s})
        Σ = √ᾱ_{t_e} (1 − r) / (1 − ᾱ_{t_s})
        V = (1 − ᾱ_{t_e}) (1 − r) / (1 − ᾱ_{t_s})

The closed form is the forward-process marginal q(z_{t_e} | z_{t_s}, z_0): DDIM with η = 1, i.e. DDPM on the respaced
grid. It satisfies Π √ᾱ_{t_s} + Σ = √ᾱ_{t_e} and Π² (1 − ᾱ_{t_s}) + V = 1 − ᾱ_{t_e}.

"release" coefficients reproduce the authors' released code, which weights each step's Σ and V terms by the a's of the
*earlier* (higher-t, already processed) steps instead of the later ones:

    P = 1; for k = t_s down to t_e+1:  Σ += P b_k ;  V += P² σ_k² ;  P ← a_k P;   then Π = P

i.e. Σ_release = Σ_k b_k ∏_{j=k+1}^{t_s} a_j, whereas the recursion gives Σ_exact = Σ_k b_k ∏_{j=t_e+1}^{k−1} a_j.
Π is unchanged. On the 10-NFE grid this reproduces the documented deviations: Σ is up to 7.5 % low (999 → 874) and on
125 → 1 V is 0.0494 instead of 0.00169 (×29). A single-step segment (the tail 1 → 0 and 0 → −1) is the same in both.

Step grid (NFE network evaluations, K = NFE − 2 closed-form segments): K+1 boundaries from T−1 = 999 down to 1, then
the two plain DDPM posterior steps t = 1 → 0 and t = 0 → −1 (the last adds no noise, V = 0). Boundary spacing:
``uniform`` trunc(linspace(999, 1, K+1)) (NFE 10 → [999, 874, 749, 624, 500, 375, 250, 125, 1, 0]); ``quadratic``
t_i = round(1 + 998 (1 − i/K)²), denser at low t; ``logsnr`` t_i = the integer t whose log-SNR λ_t = log(ᾱ_t/(1−ᾱ_t))
is nearest to the i-th of K+1 values uniform in λ between λ_999 and λ_1. ``first_timestep`` t₀ < 999 places the same
K+1 boundaries between t₀ and 1 instead (a start from a noised reference latent, SDEdit-style [ours]).

Notation (code name → symbol):

    betas, alphas           β_t, α_t = 1 − β_t
    alphas_cumprod          ᾱ_t = ∏_{s≤t} α_s (float64), alpha_bar(-1) = 1
    timestep, prev_t        t_s, t_e (t_e = −1 after the last grid entry)
    model_output            ε̂ (epsilon prediction)
    model_input             z̃ (the latent the network saw; defaults to ``sample``)
    sample                  z_{t_s}
    pred_original_sample    ẑ_0
    pi, sigma, var          Π, Σ, V
    noise                   ξ
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fast_core.configbase import check_choice, check_choices

logger = logging.getLogger(__name__)

BetaSchedule = Literal["scaled_linear", "linear"]
Coefficients = Literal["exact", "release"]
Spacing = Literal["uniform", "quadratic", "logsnr"]


@dataclass(kw_only=True)
class AIASConfig:
    """Configuration of the AIAS sampler: the noise schedule, the coefficient form, the grid spacing and the NFE."""

    num_train_timesteps: int = 1000  # T: training timesteps, t ∈ {0..T−1}
    beta_start: float = 0.00085  # β_0
    beta_end: float = 0.012  # β_{T−1}
    beta_schedule: BetaSchedule = "scaled_linear"  # β_t = linspace(√β_0, √β_{T−1}, T)² ("linear": no square roots)
    coefficients: Coefficients = "exact"  # segment coefficients: closed form, or the authors' released form
    spacing: Spacing = "uniform"  # how the K+1 segment boundaries are placed between 999 and 1
    nfe: int = 10  # network evaluations per sample: K = nfe − 2 segments plus the t = 1 and t = 0 steps

    def __post_init__(self) -> None:
        """Check the choices and the NFE."""
        check_choices(self)
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 3:
            raise ValueError(f"AIASConfig.nfe must be an integer >= 3 (K = nfe - 2 >= 1 segments), got {self.nfe!r}")


@dataclass
class AIASSchedulerOutput:
    """Output of :meth:`AIASScheduler.step`.

    Args:
        prev_sample: z_{t_e}, shape of ``sample`` (B, C, h, w): the latent for the next grid entry.
        pred_original_sample: ẑ_0, shape of ``sample``: the clean estimate the step used.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class AIASScheduler:
    """AIAS sampler: K closed-form segments then two DDPM posterior steps, epsilon prediction, no clipping.

    Constructor keyword arguments are the config (``scheduler.config``); ``AIASScheduler(**s.config)`` rebuilds it.

    >>> s = AIASScheduler()
    >>> s.set_timesteps(10)
    >>> s.timesteps.tolist()
    [999, 874, 749, 624, 500, 375, 250, 125, 1, 0]
    >>> [round(c, 5) for c in s.segment_coefficients(125, 1)]
    [0.01148, 0.98849, 0.00169]
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: BetaSchedule = "scaled_linear",
        coefficients: Coefficients = "exact",
        spacing: Spacing = "uniform",
    ) -> None:
        """Build the float64 schedule tables; call :meth:`set_timesteps` before :meth:`step`."""
        check_choice("AIASScheduler.beta_schedule", beta_schedule, BetaSchedule)
        check_choice("AIASScheduler.coefficients", coefficients, Coefficients)
        check_choice("AIASScheduler.spacing", spacing, Spacing)
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 3:
            raise ValueError(f"AIASScheduler num_train_timesteps must be an integer >= 3, got {num_train_timesteps!r}")
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(f"AIASScheduler needs 0 < beta_start < beta_end < 1, got {beta_start!r}, {beta_end!r}")
        self._config = {
            "num_train_timesteps": num_train_timesteps,
            "beta_start": float(beta_start),
            "beta_end": float(beta_end),
            "beta_schedule": beta_schedule,
            "coefficients": coefficients,
            "spacing": spacing,
        }
        self.num_train_timesteps = n = num_train_timesteps  # T
        if beta_schedule == "scaled_linear":
            self.betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=torch.float64) ** 2
        else:
            self.betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        self.alphas = 1.0 - self.betas  # α_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t, float64, length T
        self._alpha_bar = [1.0, *self.alphas_cumprod.tolist()]  # ᾱ_{t} at index t + 1, so ᾱ_{-1} = 1
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0, dtype=torch.long)
        self._grid: list[int] = []
        self._next: dict[int, int] = {}
        self._coef: dict[int, tuple[float, float, float]] = {}

    @property
    def config(self) -> dict[str, object]:
        """The constructor keyword arguments (a fresh dict)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, cfg: AIASConfig) -> AIASScheduler:
        """Build a scheduler from an :class:`AIASConfig` and set its grid to ``cfg.nfe`` evaluations."""
        scheduler = cls(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
            beta_schedule=cfg.beta_schedule,
            coefficients=cfg.coefficients,
            spacing=cfg.spacing,
        )
        scheduler.set_timesteps(cfg.nfe)
        return scheduler

    # ------------------------------------------------------------------ schedule
    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a float64 python float; ``t = -1`` gives 1.0."""
        t = int(t)
        if not -1 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep {t} is outside [-1, {self.num_train_timesteps - 1}]")
        return self._alpha_bar[t + 1]

    def _posterior(self, k: int) -> tuple[float, float, float]:
        """One-step posterior coefficients (a_k, b_k, σ_k²) of q(z_{k−1} | z_k, z_0)."""
        ab_k, ab_prev = self._alpha_bar[k + 1], self._alpha_bar[k]
        beta_k = float(self.betas[k])
        a = math.sqrt(1.0 - beta_k) * (1.0 - ab_prev) / (1.0 - ab_k)
        b = math.sqrt(ab_prev) * beta_k / (1.0 - ab_k)
        var = beta_k * (1.0 - ab_prev) / (1.0 - ab_k)
        return a, b, var

    def segment_coefficients(self, t_s: int, t_e: int) -> tuple[float, float, float]:
        """(Π, Σ, V) of the segment t_s → t_e: z_{t_e} = Π z_{t_s} + Σ ẑ_0 + √V ξ (see the module docstring).

        "exact": Π = √r (1−ᾱ_{t_e})/(1−ᾱ_{t_s}), Σ = √ᾱ_{t_e} (1−r)/(1−ᾱ_{t_s}), V = (1−ᾱ_{t_e})(1−r)/(1−ᾱ_{t_s}),
        r = ᾱ_{t_s}/ᾱ_{t_e}. "release": the authors' loop, P = 1; Σ += P b_k; V += P² σ_k²; P ← a_k P; Π = P.

        Args:
            t_s: segment start, in [0, T−1].
            t_e: segment end, in [−1, t_s − 1]; ``t_e = -1`` gives (0, 1, 0).

        Returns:
            (Π, Σ, V) as python floats computed in float64.

        >>> [round(c, 5) for c in AIASScheduler().segment_coefficients(999, 874)]
        [0.49585, 0.10192, 0.73684]
        """
        t_s, t_e = int(t_s), int(t_e)
        n = self.num_train_timesteps
        if not (0 <= t_s < n and -1 <= t_e < t_s):
            raise ValueError(f"segment {t_s} -> {t_e} is invalid: need 0 <= t_s <= {n - 1} and -1 <= t_e < t_s")
        if self._config["coefficients"] == "exact":
            ab_s, ab_e = self._alpha_bar[t_s + 1], self._alpha_bar[t_e + 1]
            r = ab_s / ab_e
            pi = math.sqrt(r) * (1.0 - ab_e) / (1.0 - ab_s)
            sigma = math.sqrt(ab_e) * (1.0 - r) / (1.0 - ab_s)
            var = (1.0 - ab_e) * (1.0 - r) / (1.0 - ab_s)
            return pi, sigma, var
        p, sigma, var = 1.0, 0.0, 0.0
        for k in range(t_s, t_e, -1):
            a, b, s2 = self._posterior(k)
            sigma += p * b
            var += p * p * s2
            p *= a
        return p, sigma, var

    # ------------------------------------------------------------------ grid
    def _boundaries(self, num_segments: int, t_max: int) -> list[int]:
        """K+1 strictly decreasing boundaries from ``t_max`` (T−1 unless started later) to 1 for the spacing."""
        t_min, k = 1, num_segments
        spacing = self._config["spacing"]
        if spacing == "uniform":
            values = np.trunc(np.linspace(t_max, t_min, k + 1))
        elif spacing == "quadratic":
            frac = np.arange(k + 1, dtype=np.float64) / k
            values = np.rint(t_min + (t_max - t_min) * (1.0 - frac) ** 2)
        else:  # logsnr
            ab = self.alphas_cumprod.numpy()
            lam = np.log(ab / (1.0 - ab))  # λ_t, decreasing in t
            targets = np.linspace(lam[t_max], lam[t_min], k + 1)
            values = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
        bounds = [int(v) for v in values]
        if any(b <= c for b, c in zip(bounds[:-1], bounds[1:], strict=False)):
            raise ValueError(
                f"nfe={num_segments + 2} ({num_segments} segments) is too many for spacing={spacing!r}: segment "
                f"boundaries collide on the integer timesteps {t_max}..{t_min}; use fewer steps"
                + (f" (uniform allows nfe <= {t_max + 1})" if spacing == "uniform" else "")
            )
        return bounds

    def _check_custom(self, timesteps: Sequence[int] | torch.Tensor) -> list[int]:
        """Validate explicit segment boundaries: integers, strictly decreasing, within [1, T−1], ending at 1."""
        values = timesteps.tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
        t_max = self.num_train_timesteps - 1
        bounds = []
        for v in values:
            if isinstance(v, bool) or not float(v).is_integer():
                raise ValueError(f"custom timesteps must be integers, got {v!r}")
            bounds.append(int(v))
        if len(bounds) < 2:
            raise ValueError(f"custom timesteps need at least 2 boundaries (1 segment) ending at 1, got {bounds}")
        if any(b <= c for b, c in zip(bounds[:-1], bounds[1:], strict=False)):
            raise ValueError(f"custom timesteps must be strictly decreasing, got {bounds}")
        if bounds[0] > t_max or bounds[-1] < 1:
            raise ValueError(f"custom timesteps must lie within [1, {t_max}], got {bounds}")
        if bounds[-1] != 1:
            raise ValueError(f"custom timesteps must end at 1 (the DDPM tail 1 -> 0 -> -1 follows), got {bounds}")
        return bounds

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        first_timestep: int | None = None,
    ) -> None:
        """Fill ``timesteps`` (descending LongTensor, one network evaluation per entry) and the segment coefficients.

        Args:
            num_inference_steps: the NFE (>= 3): K = NFE − 2 segments with boundaries placed by ``spacing``.
            device: where ``timesteps`` lives.
            timesteps: explicit segment boundaries instead (strictly decreasing, in [1, T−1], last = 1); the grid is
                these followed by 0. Give exactly one of ``num_inference_steps`` and ``timesteps``.
            first_timestep: with ``num_inference_steps``, the first boundary t₀ in [1 + K, T−1] (default T−1): the
                K+1 boundaries are placed between t₀ and 1, for a start from a latent noised to t₀.

        >>> s = AIASScheduler()
        >>> s.set_timesteps(10, first_timestep=500)
        >>> s.timesteps.tolist()
        [500, 437, 375, 312, 250, 188, 125, 63, 1, 0]
        """
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps needs exactly one of num_inference_steps (the NFE) or timesteps")
        if timesteps is not None:
            if first_timestep is not None:
                raise ValueError("first_timestep goes with num_inference_steps, not with explicit timesteps")
            bounds = self._check_custom(timesteps)
        else:
            nfe = num_inference_steps
            if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 3:
                raise ValueError(f"num_inference_steps (NFE) must be an integer >= 3 (K = NFE - 2 >= 1), got {nfe!r}")
            t_max = self.num_train_timesteps - 1
            if first_timestep is not None:
                t0 = first_timestep
                if isinstance(t0, bool) or not isinstance(t0, int) or not nfe - 1 <= t0 <= t_max:
                    raise ValueError(
                        f"first_timestep must be an integer in [{nfe - 1}, {t_max}] for nfe={nfe} "
                        f"({nfe - 2} segments need {nfe - 1} distinct boundaries down to 1), got {t0!r}"
                    )
                t_max = t0
            bounds = self._boundaries(nfe - 2, t_max)
        grid = [*bounds, 0]
        self._grid = grid
        self._next = {t: (grid[i + 1] if i + 1 < len(grid) else -1) for i, t in enumerate(grid)}
        self._coef = {t: self.segment_coefficients(t, t_e) for t, t_e in self._next.items()}
        self.num_inference_steps = len(grid)
        self.timesteps = torch.tensor(grid, dtype=torch.long, device=device)
        logger.debug("AIAS grid (%d NFE, %s): %s", len(grid), self._config["spacing"], grid)

    def prev_timestep(self, t: int | torch.Tensor) -> int:
        """The grid entry after ``t`` (−1 after the last one)."""
        t = self._as_int(t)
        if not self._grid:
            raise ValueError("call set_timesteps before prev_timestep/step")
        if t not in self._next:
            raise ValueError(f"timestep {t} is not on the current grid ({len(self._grid)} entries: {self._grid})")
        return self._next[t]

    @staticmethod
    def _as_int(t: int | torch.Tensor) -> int:
        """A python int from an int or a one-element tensor."""
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ValueError(f"timestep must be a single value, got a tensor of shape {tuple(t.shape)}")
            return int(t.item())
        return int(t)

    # ------------------------------------------------------------------ sampling
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        model_input: torch.Tensor | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> AIASSchedulerOutput:
        """One AIAS segment t_s → t_e: z_{t_e} = Π z_{t_s} + Σ ẑ_0 + √V ξ with ẑ_0 = (z̃ − √(1−ᾱ_{t_s}) ε̂)/√ᾱ_{t_s}.

        Args:
            model_output: ε̂, (B, C, h, w), the network's noise prediction at ``timestep``.
            timestep: t_s, an entry of ``timesteps``.
            sample: z_{t_s}, (B, C, h, w): the latent that Π multiplies.
            generator: source of ξ (drawn on the generator's device, in ``sample``'s dtype); unused when V = 0.
            model_input: z̃, the latent the network saw (e.g. after foreground mixing); defaults to ``sample``.
            variance_noise: ξ given by the caller, shape of ``sample`` (e.g. drawn per sample from its own generator,
                as diffusers' ``DDIMScheduler.step`` takes it); ``generator`` is then unused.

        Returns:
            :class:`AIASSchedulerOutput` with ``prev_sample`` z_{t_e} and ``pred_original_sample`` ẑ_0.
        """
        model_input = sample if model_input is None else model_input
        if model_output.shape != sample.shape or model_input.shape != sample.shape:
            raise ValueError(
                f"model_output {tuple(model_output.shape)}, sample {tuple(sample.shape)} and model_input "
                f"{tuple(model_input.shape)} must have the same shape"
            )
        # 1. segment ends: t_s = timestep, t_e = the next grid entry (−1 after the last)
        t_s = self._as_int(timestep)
        self.prev_timestep(t_s)
        alpha_bar_t = self._alpha_bar[t_s + 1]

        # 2. segment coefficients (Π, Σ, V), float64, cast to the sample's dtype at use
        pi, sigma, var = self._coef[t_s]

        # 3. clean estimate from the epsilon prediction: ẑ_0 = (z̃ − √(1−ᾱ_{t_s}) ε̂) / √ᾱ_{t_s}; no clipping
        pred_original_sample = (model_input - math.sqrt(1.0 - alpha_bar_t) * model_output) / math.sqrt(alpha_bar_t)

        # 4. mean of the composed kernel: Π z_{t_s} + Σ ẑ_0
        prev_sample = pi * sample + sigma * pred_original_sample

        # 5. add √V ξ, ξ ~ N(0, I) from `generator`; the last step (t_e = −1) has V = 0 and draws nothing
        if variance_noise is not None and variance_noise.shape != sample.shape:
            raise ValueError(f"variance_noise {tuple(variance_noise.shape)} must match sample {tuple(sample.shape)}")
        if var > 0.0:
            if variance_noise is None:
                noise_device = generator.device if generator is not None else sample.device
                noise = torch.randn(sample.shape, generator=generator, device=noise_device, dtype=sample.dtype)
            else:
                noise = variance_noise
            prev_sample = prev_sample + math.sqrt(var) * noise.to(sample.device, sample.dtype)

        return AIASSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """Forward process z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε (t = −1 returns ``original_samples``).

        Args:
            original_samples: z_0, (B, ...).
            noise: ε, same shape.
            timesteps: an int, or a (B,) / one-element integer tensor of t in [−1, T−1].

        Returns:
            z_t in the dtype and on the device of ``original_samples``.
        """
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must match original_samples {tuple(original_samples.shape)}")
        t = torch.as_tensor(timesteps).to(device="cpu", dtype=torch.long).reshape(-1)
        n = self.num_train_timesteps
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= n):
            raise ValueError(f"timesteps must lie in [-1, {n - 1}], got {t.tolist()}")
        if t.numel() not in (1, original_samples.shape[0]):
            raise ValueError(f"timesteps has {t.numel()} entries; expected 1 or the batch size")
        alpha_bar = torch.tensor(self._alpha_bar, dtype=torch.float64)[t + 1]  # (B,) or (1,)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        sqrt_ab = alpha_bar.sqrt().reshape(shape).to(original_samples.device, original_samples.dtype)
        sqrt_1m_ab = (1.0 - alpha_bar).sqrt().reshape(shape).to(original_samples.device, original_samples.dtype)
        return sqrt_ab * original_samples + sqrt_1m_ab * noise

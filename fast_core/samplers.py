"""The sampler registry of the synthesis loop: AIAS and the diffusers baselines behind one factory.

:func:`make_scheduler` builds the scheduler a :class:`~fast_core.synthesis_config.SynthesisConfig` names, with its grid
set, so that every sampler runs through the same loop in :mod:`fast_core.synthesis`. :func:`target_timestep` tells
the loop where a step lands (the t_e whose ᾱ the background re-injection uses) and :func:`scheduler_step` hides the
small differences between the ``step`` signatures. All samplers share the FAST noise schedule (FAST_SPEC §1, its
constants in :mod:`fast_core.synthesis_config`): T = 1000, β_t = linspace(√0.00085, √0.012, T)² (diffusers
``scaled_linear``), epsilon prediction, no clipping.

Baseline choices (documented, not defaults of diffusers):

    ddpm   DDPMScheduler(variance_type="fixed_small", clip_sample=False, timestep_spacing="trailing");
           nfe = num_inference_steps (1000 → t = 999..0); respaced posterior variance for nfe < 1000; the
           last step (t_e = −1, ᾱ_{−1} = 1) adds no noise.
    ddim   DDIMScheduler(eta = 0, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing");
           nfe = num_inference_steps (50 → t = 999, 979, ..., 19); the last step lands on ᾱ = 1, the clean sample,
           like AIAS (the LDM/Stable Diffusion configs use set_alpha_to_one=False and stop at ᾱ_0 instead).
    plms   PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=True, timestep_spacing="trailing"): PLMS as in the
           CompVis LDM code. diffusers' PLMS repeats its second timestep (a warm-up evaluation), so n steps cost
           n + 1 network evaluations; we set n = nfe − 1 so the UNet runs exactly ``nfe`` times (PLMS-50 here is
           49 steps, 50 evaluations: samplers are compared at equal NFE).
    dpmpp  DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
           timestep_spacing="trailing"): DPM-Solver++(2M), the fast solver users reach for at 10–20 steps.
    unipc  UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True, final_sigmas_type="zero",
           timestep_spacing="trailing"). Both multistep solvers keep a history of model outputs; FARM mixing and
           background re-injection change the sample between steps (as for PLMS), which their history does not
           know about. Both end on σ = 0 (ᾱ = 1, the clean sample), like AIAS and DDIM here.

"trailing" spacing starts every baseline at t = 999, where the pure-noise start z ~ N(0, I) belongs, as AIAS does.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from fast_core.schedulers.scheduling_aias import AIASScheduler
from fast_core.synthesis_config import (
    BETA_END,
    BETA_SCHEDULE,
    BETA_START,
    NUM_TRAIN_TIMESTEPS,
    SamplerName,
    SynthesisConfig,
)

Scheduler = Union[
    AIASScheduler, DDPMScheduler, DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
]
_MULTISTEP = {"prediction_type": "epsilon", "timestep_spacing": "trailing", "final_sigmas_type": "zero"}


def make_scheduler(cfg: SynthesisConfig, device: torch.device | str | None = None) -> Scheduler:
    """A fresh scheduler for ``cfg.sampler`` with its timesteps set so that one pass costs ``cfg.nfe`` UNet calls.

    A new object per sampling pass: PLMS keeps a history of ε̂ between steps.

    Args:
        cfg: the synthesis config (``sampler``, ``nfe``, and for AIAS ``coefficients``, ``spacing`` and ``start_t``).
        device: where ``scheduler.timesteps`` lives.

    Returns:
        An :class:`AIASScheduler`, or a diffusers DDPM / DDIM / PNDM(PLMS) scheduler (see the module docstring).

    >>> make_scheduler(SynthesisConfig(sampler="ddim", nfe=5)).timesteps.tolist()
    [999, 799, 599, 399, 199]
    """
    common = {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": BETA_SCHEDULE,
    }
    if cfg.sampler == "aias":
        scheduler: Scheduler = AIASScheduler(**common, coefficients=cfg.coefficients, spacing=cfg.spacing)
        scheduler.set_timesteps(cfg.nfe, device=device, first_timestep=cfg.start_t)
    elif cfg.sampler == "ddpm":
        scheduler = DDPMScheduler(
            **common,
            variance_type="fixed_small",
            clip_sample=False,
            prediction_type="epsilon",
            timestep_spacing="trailing",
        )
        scheduler.set_timesteps(cfg.nfe, device=device)
    elif cfg.sampler == "ddim":
        scheduler = DDIMScheduler(
            **common,
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=0,
            prediction_type="epsilon",
            timestep_spacing="trailing",
        )
        scheduler.set_timesteps(cfg.nfe, device=device)
    elif cfg.sampler == "plms":
        scheduler = PNDMScheduler(
            **common,
            skip_prk_steps=True,
            set_alpha_to_one=True,
            steps_offset=0,
            prediction_type="epsilon",
            timestep_spacing="trailing",
        )
        scheduler.set_timesteps(cfg.nfe - 1, device=device)
    elif cfg.sampler == "dpmpp":
        scheduler = DPMSolverMultistepScheduler(**common, **_MULTISTEP, algorithm_type="dpmsolver++", solver_order=2)
        scheduler.set_timesteps(cfg.nfe, device=device)
    elif cfg.sampler == "unipc":
        scheduler = UniPCMultistepScheduler(**common, **_MULTISTEP, solver_order=2, solver_type="bh2", predict_x0=True)
        scheduler.set_timesteps(cfg.nfe, device=device)
    else:
        raise ValueError(f"sampler {cfg.sampler!r} is not one of: 'aias', 'ddpm', 'ddim', 'plms', 'dpmpp', 'unipc'")
    return scheduler


def alpha_bar(scheduler: Scheduler, t: int) -> float:
    """ᾱ_t of the scheduler's table as a python float; t < 0 gives ᾱ_{−1} = 1."""
    if t < 0:
        return 1.0
    return float(scheduler.alphas_cumprod[t])


def reinject_background(
    z: torch.Tensor, m: torch.Tensor, z_bg: torch.Tensor, ab: float, noise: torch.Tensor
) -> torch.Tensor:
    """Background re-injection (FAST_SPEC §3): z ← (1 − m)(√ᾱ z_bg + √(1 − ᾱ) ξ') + m z, the clean background noised
    to the level ᾱ the step landed on, outside the latent mask m; the sampled latent inside it."""
    return (1.0 - m) * (math.sqrt(ab) * z_bg + math.sqrt(1.0 - ab) * noise) + m * z


def target_timestep(sampler: SamplerName, scheduler: Scheduler, t: int) -> int:
    """The timestep t_e the next ``step`` at ``t`` lands on (−1: the clean end, ᾱ = 1); call it BEFORE the step.

    AIAS and DDPM step to the next grid entry; DDIM and PLMS step by T // n (diffusers' rule); PLMS's warm-up
    evaluation (its second call) redoes the first step, landing on ``t`` itself.
    """
    if sampler == "aias":
        return int(scheduler.prev_timestep(t))
    if sampler == "ddpm":
        return int(scheduler.previous_timestep(t))
    if sampler in ("dpmpp", "unipc"):  # the next entry of the grid; after the last one σ = 0 (the clean end)
        grid = [int(s) for s in scheduler.timesteps]
        i = grid.index(int(t))
        return grid[i + 1] if i + 1 < len(grid) else -1
    stride = NUM_TRAIN_TIMESTEPS // int(scheduler.num_inference_steps)
    if sampler == "plms" and scheduler.counter == 1:
        return t
    return max(t - stride, -1)


def scheduler_step(
    sampler: SamplerName,
    scheduler: Scheduler,
    eps: torch.Tensor,
    t: int,
    z: torch.Tensor,
    z_mix: torch.Tensor,
    *,
    generators: list[torch.Generator],
    variance_noise: torch.Tensor | None,
) -> torch.Tensor:
    """One sampler step from t to :func:`target_timestep`; returns the new latent (B, C, h, w).

    AIAS: z ← Π z + Σ ẑ_0(z̃, ε̂) + √V ξ (Π multiplies the un-mixed ``z``, ξ = ``variance_noise``).
    Baselines: diffusers' update applied to the mixed latent ``z_mix`` (their steps take one sample); DDPM draws its
    noise per sample from ``generators`` (diffusers' list-of-generators form); DDIM (η = 0), PLMS, DPM-Solver++ and
    UniPC draw nothing.
    """
    if sampler == "aias":
        return scheduler.step(eps, t, z, model_input=z_mix, variance_noise=variance_noise).prev_sample
    if sampler == "ddpm":
        return scheduler.step(eps, t, z_mix, generator=list(generators)).prev_sample
    if sampler == "ddim":
        return scheduler.step(eps, t, z_mix, eta=0.0).prev_sample
    return scheduler.step(eps, t, z_mix).prev_sample

"""The FAST synthesis loop: a normal image and an anomaly mask in, an anomaly image with a pixel-exact mask out.

One sampling pass (FAST_SPEC §3) with AIAS, FARM mixing, background re-injection and the final pixel paste; the
baselines (DDPM, DDIM, PLMS from diffusers) run through the same loop so ablations differ in one config value. Mask
convention: 1 = anomaly (the region to synthesize), 0 = normal background.

    z_bg = encode(x_n);  m = down(M);  z = N(0, I)   (or √ᾱ_t₀ z_s + √(1−ᾱ_t₀) ε, z_s = z_bg or encode(x_ref))
    for each segment t_s → t_e:
        ẑ0_fg = FARM(z, m, t_s)
        z̃     = (1−m) z + m (√ᾱ_{t_s} ẑ0_fg + √(1−ᾱ_{t_s}) ζ)                     (z̃ = z without FARM)
        ε̂     = Adaptor(UNet(z̃, t_s, c), m);   ẑ0 = (z̃ − √(1−ᾱ_{t_s}) ε̂) / √ᾱ_{t_s}   (inpaint UNet: z̃ ‖ m ‖ (1−m) z_bg)
                (guidance w ≠ 1, ours: ε̂ = ε̂_good + w (ε̂_c − ε̂_good), two UNet calls)
        z     = Π z + Σ ẑ0 + √V ξ                                                  (Π multiplies the un-mixed z)
        if lo < t_e < hi:  z = (1−m)(√ᾱ_{t_e} z_bg + √(1−ᾱ_{t_e}) ξ') + m z          (background re-injection)
    t = 1, 0: plain steps (no FARM, no mixing, no re-injection)
    x_out = M ⊙ x̂ + (1 − M) ⊙ x_n;  label = M
    x̂ = decode(z)                                   paste = "replace" (FAST_SPEC §3)
    x̂ = x_n + decode(z) − decode(z_bg)              paste = "residual" (default, ours)
    x̂ = x_n + G_σ ∗ (M ⊙ (decode(z) − decode(z_bg)))  paste = "smooth" (ours; σ = k · half-thickness r of M,
                                                    at most smooth_max_sigma, fast_core.smooth_paste; unsmoothed
                                                    where r < smooth_min_radius)

Reference start [ours]: with ``start = "reference"`` the caller also gives x_ref, the normal image with a real defect
pasted inside M, and the sampling starts from encode(x_ref) noised to t₀ = ``start_t`` (AIAS boundaries between t₀ and
1). The coarse content of the real defect survives the noise at t₀ < T − 1; the UNet redraws the rest under the
defect key, so each pass gives another defect of the same kind, where a paste would copy one (SDEdit's image-guided
start, applied inside the mask).

Residual paste: a decoder drops what the latent cannot hold (sensor noise, fine grain): decode(z_bg) is x_n
smoothed. With "replace", the pasted region is smoother than its surroundings: on Magnetic Tile the median grain
ratio (benchmarks.quality_contrast: |x − box₃(x)| inside M over the ring around it) is 0.62, against 1.18 for real
defects, a cue no real defect carries. Adding only the decoded *change* decode(z) − decode(z_bg) keeps the input's
own grain inside M (1.18 on the same pairs); where the sampler reproduces the background, x̂ = x_n.

Baselines mix with FARM at every t (when ``use_farm``), step the mixed latent with diffusers' update, and re-inject
the background with ᾱ of the timestep the step lands on. Every random tensor (start noise, ζ, ξ, ξ', DDPM noise) is
drawn per sample from that sample's own generator, so a sample's bytes do not depend on its batch-mates' seeds: the
same (seed, inputs) reproduce exactly on CPU across batches, retries and resumes.

Notation (code → symbol): ``x_n`` x_n, ``mask_px`` M, ``m`` m, ``z`` z_t, ``z_mix`` z̃, ``z0_fg`` ẑ0_fg, ``eps`` ε̂,
``zeta`` ζ, ``xi`` ξ, ``xi_bg`` ξ', ``ab_t`` ᾱ_t.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from fast_core.data.layout import GOOD  # the normal images' key: the negative branch of guidance
from fast_core.samplers import (
    Scheduler,
    alpha_bar,
    make_scheduler,
    reinject_background,
    scheduler_step,
    target_timestep,
)
from fast_core.smooth_paste import smooth_change
from fast_core.synthesis_config import SynthesisConfig

if TYPE_CHECKING:
    from fast_core.models.ldm import FastLDM

logger = logging.getLogger(__name__)

__all__ = ["SynthesisConfig", "SynthesisResult", "make_scheduler", "masks_to_uint8", "synthesize", "to_uint8"]

PHASES = ("encode", "loop", "decode", "paste")  # keys of SynthesisResult.timings


@dataclass
class SynthesisResult:
    """Output of :func:`synthesize`.

    Args:
        images: (B, C, H, W) float32 in [−1, 1]: x̂ inside M (decode(z), or x_n + decode(z) − decode(z_bg) with
            ``paste="residual"``, or that change smoothed with ``paste="smooth"``), the input image exactly outside it.
        masks: (B, 1, H, W) float32: the input mask M, bit-exact (the label of the pair).
        latent_mask_empty: (B,) bool: True where the latent mask m has no anomaly cell: the sampler saw no anomaly
            region, so the pixels pasted into M are only a reconstruction of the background.
        nfe: UNet evaluations per sample, counted in the loop.
        timings: wall seconds per phase over the whole call: ``encode``, ``loop`` (FARM, UNet, Adaptor, steps),
            ``decode``, ``paste``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    latent_mask_empty: torch.Tensor
    nfe: int
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------- helpers
def _amp_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for the networks: fp16/bf16 on CUDA, none for float32; other pairs are an error."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype in (torch.float16, torch.bfloat16) and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=dtype)
    raise ValueError(
        f"dtype {dtype} on device {device.type!r} is not supported: use torch.float32, or torch.float16 / "
        "torch.bfloat16 on a cuda device"
    )


def _randn(shape: torch.Size, generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    """N(0, I) of (B, *shape), row i drawn from ``generators[i]`` on that generator's device, float32."""
    rows = [torch.randn(tuple(shape), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


class _PhaseTimer:
    """Wall-clock seconds per phase, synchronising CUDA at the boundaries so GPU work is attributed correctly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[phase] += time.perf_counter() - start


def _check_unit_range(x: torch.Tensor, name: str) -> None:
    """``ValueError`` unless ``x`` is floating point with every value in [−1, 1] (the model's pixel range)."""
    if not x.is_floating_point() or float(x.min()) < -1.0 or float(x.max()) > 1.0:
        raise ValueError(f"{name} must be floating point in [-1, 1]")


def _check_inputs(
    model: FastLDM,
    images: torch.Tensor,
    masks: torch.Tensor,
    keys: list[str],
    generators: list[torch.Generator],
    cfg: SynthesisConfig,
    references: torch.Tensor | None = None,
) -> None:
    """Shapes, ranges and lengths of the inputs of :func:`synthesize`; raise ``ValueError`` on the first problem."""
    if images.ndim != 4 or images.shape[1] != model.image_channels:
        raise ValueError(f"images must be (B, {model.image_channels}, H, W) for this model, got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if tuple(masks.shape) != (b, 1, h, w):
        raise ValueError(f"masks must be (B, 1, H, W) = {(b, 1, h, w)}, got {tuple(masks.shape)}")
    if len(keys) != b or len(generators) != b:
        raise ValueError(f"need one key and one generator per sample: B={b}, {len(keys)} keys, {len(generators)} gens")
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("masks must be binary: 1 = anomaly (synthesize), 0 = background")
    _check_unit_range(images, "images")
    if (references is None) != (cfg.start != "reference"):
        raise ValueError(
            f"start={cfg.start!r} with references {'missing' if references is None else 'given'}: reference images "
            "are given exactly when the sampling starts from them (start: reference)"
        )
    if references is not None:
        if tuple(references.shape) != tuple(images.shape):
            raise ValueError(
                f"references must have the images' shape {tuple(images.shape)}, got {tuple(references.shape)}"
            )
        _check_unit_range(references, "references")
    if cfg.guidance != 1.0 and GOOD not in model.keys:
        raise ValueError(
            f"guidance={cfg.guidance} needs the normal key {GOOD!r} in the model's conditioner (it has "
            f"{model.keys}); use guidance 1 for this model"
        )


# ------------------------------------------------------------------------------------------------------------ loop
def _guided_eps(
    model: FastLDM,
    w: float,
    z_mix: torch.Tensor,
    t_vec: torch.Tensor,
    keys: list[str],
    m: torch.Tensor,
    z_bg: torch.Tensor,
    mask_px: torch.Tensor,
) -> torch.Tensor:
    """ε̂ = Adaptor(UNet(z̃, t, c), m); with w ≠ 1, classifier-free guidance against the normal key [ours]:

        ε̂ = ε̂_good + w (ε̂_c − ε̂_good),   ε̂_k = Adaptor(UNet(z̃, t, c(k)), m)

    The base stage teaches the UNet to fill a masked region with normal texture under "good" and with a defect under
    a defect key; w > 1 pushes the sample along the difference, away from normal texture. Both branches run in one
    batch (2B); the networks are in eval mode, so a sample does not depend on its batch-mates.
    """
    if w == 1.0:
        return model.predict_eps(z_mix, t_vec, keys, m, z_bg, mask_px).float()
    b = z_mix.shape[0]
    both = model.predict_eps(
        torch.cat([z_mix, z_mix]), torch.cat([t_vec, t_vec]), [*keys, *[GOOD] * b], torch.cat([m, m]),
        torch.cat([z_bg, z_bg]), torch.cat([mask_px, mask_px]),
    ).float()  # fmt: skip
    eps_c, eps_good = both[:b], both[b:]
    return eps_good + w * (eps_c - eps_good)


def _denoise(
    model: FastLDM,
    scheduler: Scheduler,
    cfg: SynthesisConfig,
    z: torch.Tensor,
    z_bg: torch.Tensor,
    m: torch.Tensor,
    mask_px: torch.Tensor,
    keys: list[str],
    generators: list[torch.Generator],
    amp: Callable[[], contextlib.AbstractContextManager],
) -> tuple[torch.Tensor, int]:
    """Run the sampler from the start latent ``z`` (B, C, h, w) to the clean latent (m: the latent mask, mask_px the
    pixel mask M); returns (z_0, UNet calls)."""
    device = z.device
    timesteps = [int(t) for t in scheduler.timesteps.tolist()]
    lo, hi = cfg.bg_window
    tail_start = len(timesteps) - 2 if cfg.sampler == "aias" else len(timesteps)  # AIAS refinement tail t = 1, 0
    calls = 0
    for i, t in enumerate(timesteps):
        in_tail = i >= tail_start
        t_vec = torch.full((z.shape[0],), t, dtype=torch.long, device=device)  # (B,)
        ab_t = alpha_bar(scheduler, t)

        # 1. foreground reconstruction and anomaly-aware noise: z̃ = (1−m) z + m (√ᾱ_t ẑ0_fg + √(1−ᾱ_t) ζ)
        if cfg.use_farm and not in_tail and t >= cfg.farm_min_t:
            with amp():
                z0_fg = model.farm_estimate(z, m, t_vec, keys, z_bg, mask_px).float()  # (B, C, h, w)
            zeta = _randn(z.shape[1:], generators, device)
            z_mix = (1.0 - m) * z + m * (math.sqrt(ab_t) * z0_fg + math.sqrt(1.0 - ab_t) * zeta)
        else:
            z_mix = z

        # 2. noise prediction ε̂ = Adaptor(UNet(z̃, t, c), m), or guided: ε̂_good + w (ε̂_c − ε̂_good)
        with amp():
            eps = _guided_eps(model, cfg.guidance, z_mix, t_vec, keys, m, z_bg, mask_px)  # (B, C, h, w)
        calls += 1 if cfg.guidance == 1.0 else 2
        if cfg.clip_x0 is not None:  # ẑ0 = (z̃ − √(1−ᾱ_t) ε̂)/√ᾱ_t clamped to [−c, c]; ε̂ recomputed from it
            x0 = ((z_mix - math.sqrt(1.0 - ab_t) * eps) / math.sqrt(ab_t)).clamp(-cfg.clip_x0, cfg.clip_x0)
            eps = (z_mix - math.sqrt(ab_t) * x0) / math.sqrt(1.0 - ab_t)

        # 3. sampler step t → t_e (AIAS: Π z + Σ ẑ0 + √V ξ; baselines: diffusers' update of z̃)
        t_e = target_timestep(cfg.sampler, scheduler, t)
        xi = _randn(z.shape[1:], generators, device) if cfg.sampler == "aias" else None
        z = scheduler_step(cfg.sampler, scheduler, eps, t, z, z_mix, generators=generators, variance_noise=xi)

        # 4. background re-injection: z = (1−m)(√ᾱ_{t_e} z_bg + √(1−ᾱ_{t_e}) ξ') + m z
        if not in_tail and lo < t_e < hi:
            ab_e = alpha_bar(scheduler, t_e)
            xi_bg = _randn(z.shape[1:], generators, device)
            z = reinject_background(z, m, z_bg, ab_e, xi_bg)
    return z, calls


def _synthesize_chunk(
    model: FastLDM,
    x_n: torch.Tensor,
    mask_px: torch.Tensor,
    keys: list[str],
    cfg: SynthesisConfig,
    generators: list[torch.Generator],
    amp: Callable[[], contextlib.AbstractContextManager],
    timer: _PhaseTimer,
    x_ref: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One forward batch: (images (B, C, H, W), latent_mask_empty (B,), UNet calls)."""
    device = x_n.device
    b = x_n.shape[0]
    with timer("encode"):
        with amp():
            if x_ref is None:
                z_bg = model.encode(x_n).float()  # (B, C, h, w), scaled latent mean
            else:  # one encoder call for z_bg = E(x_n) and z_ref = E(x_ref)
                both_z = model.encode(torch.cat([x_n, x_ref])).float()
                z_bg, z_ref = both_z[:b], both_z[b:]
        m = model.latent_mask(mask_px, cfg.mask_downsample).to(
            torch.float32
        )  # (B, 1, h, w), {0, 1}; None: trained rule
    with timer("loop"):
        scheduler = make_scheduler(cfg, device=device)
        noise = _randn(z_bg.shape[1:], generators, device)
        if cfg.start == "noise":
            z = noise
        else:  # √ᾱ_{t₀} z_start + √(1−ᾱ_{t₀}) ε, z_start = z_bg or z_ref
            ab_0 = alpha_bar(scheduler, int(scheduler.timesteps[0]))
            z = math.sqrt(ab_0) * (z_bg if x_ref is None else z_ref) + math.sqrt(1.0 - ab_0) * noise
        z, calls = _denoise(model, scheduler, cfg, z, z_bg, m, mask_px, keys, generators, amp)
    with timer("decode"), amp():
        if cfg.pastes_change:  # one decoder call for D(z) and D(z_bg)
            both = model.decode(torch.cat([z, z_bg])).float()
            delta = both[: z.shape[0]] - both[z.shape[0] :]  # Δ = D(z) − D(z_bg)
            if cfg.paste == "smooth":  # G_σ ∗ (M ⊙ Δ), σ = min(k · r(M), σ_max); M ⊙ Δ where r(M) < r_min
                delta = smooth_change(delta, mask_px, cfg.smooth_scale, cfg.smooth_min_radius, cfg.smooth_max_sigma)
            decoded = (x_n + delta).clamp(-1.0, 1.0)
        else:
            decoded = model.decode(z).float().clamp(-1.0, 1.0)  # (B, C, H, W)
    with timer("paste"):
        images = torch.where(mask_px > 0.5, decoded, x_n)  # M ⊙ x̂ + (1 − M) ⊙ x_n, bit-exact outside M
    return images, m.flatten(1).amax(dim=1) == 0, calls


def synthesize(
    model: FastLDM,
    images: torch.Tensor,
    masks: torch.Tensor,
    keys: list[str],
    cfg: SynthesisConfig,
    generators: list[torch.Generator],
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    references: torch.Tensor | None = None,
) -> SynthesisResult:
    """Synthesize anomalies inside ``masks`` on the normal ``images``; pixels outside the mask are kept exactly.

    Follows FAST_SPEC §3 (see the module docstring). The model must already be on ``device``; it is put in eval mode
    for the call (BatchNorm must not mix batch-mates) and restored afterwards. Latent math runs in float32; the
    networks run under autocast when ``dtype`` is float16/bfloat16 on CUDA.

    Args:
        model: a :class:`~fast_core.models.ldm.FastLDM` (VAE, UNet, conditioner, FARM, Adaptor).
        images: x_n, (B, C, H, W) in [−1, 1], C = ``model.image_channels``.
        masks: M, (B, 1, H, W) binary, 1 = anomaly (synthesize), 0 = background.
        keys: the defect key of each sample (conditioning), length B.
        cfg: sampler, NFE, FARM, background window, start and mask options.
        generators: one ``torch.Generator`` per sample; every random tensor of sample i comes from ``generators[i]``.
        device: where the model lives and the work runs.
        dtype: network precision: torch.float32, or torch.float16 / torch.bfloat16 on CUDA.
        references: x_ref, (B, C, H, W) in [−1, 1], exactly when ``cfg.start == "reference"``: the image whose
            latent, noised to ``cfg.start_t``, starts the sampling (typically x_n with a real defect pasted inside
            M). Only the start depends on it: z_bg, the background re-injection and the paste use x_n.

    Returns:
        :class:`SynthesisResult` (images on ``device``, masks equal to M, per-sample empty-latent-mask flags, the
        NFE per sample, and phase timings).

    >>> gens = [torch.Generator().manual_seed(s) for s in (11, 12)]  # doctest: +SKIP
    >>> out = synthesize(model, x_n, mask, ["scratch"] * 2, SynthesisConfig(), gens, "cpu")  # doctest: +SKIP
    >>> bg = mask.expand_as(x_n) == 0  # doctest: +SKIP
    >>> bool((out.images[bg] == x_n[bg]).all()), out.nfe  # doctest: +SKIP
    (True, 10)
    """
    device = torch.device(device)
    _amp_context(device, dtype)  # validate the pair before any work
    amp = functools.partial(_amp_context, device, dtype)  # a fresh autocast context per network call
    keys, generators = list(keys), list(generators)
    _check_inputs(model, images, masks, keys, generators, cfg, references)
    x_all = images.to(device=device, dtype=torch.float32)
    r_all = None if references is None else references.to(device=device, dtype=torch.float32)
    m_all = masks.to(device=device, dtype=torch.float32)
    timer = _PhaseTimer(device)
    outputs, empties, nfe = [], [], 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, x_all.shape[0], cfg.batch_size):
                hi = lo + cfg.batch_size
                out, empty, nfe = _synthesize_chunk(
                    model, x_all[lo:hi], m_all[lo:hi], keys[lo:hi], cfg, generators[lo:hi], amp, timer,
                    None if r_all is None else r_all[lo:hi],
                )  # fmt: skip
                outputs.append(out)
                empties.append(empty)
    finally:
        model.train(was_training)
    latent_mask_empty = torch.cat(empties)
    if bool(latent_mask_empty.any()):
        logger.info(
            "%d of %d masks vanish at latent resolution (mask_downsample=%r): no anomaly is synthesized for them",
            int(latent_mask_empty.sum()),
            latent_mask_empty.numel(),
            cfg.mask_downsample or model.config.mask_downsample,
        )
    return SynthesisResult(
        images=torch.cat(outputs),
        masks=m_all.clone(),
        latent_mask_empty=latent_mask_empty,
        nfe=nfe,
        timings=dict(timer.seconds),
    )


# ---------------------------------------------------------------------------------------------------- conversions
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [−1, 1], (B, C, H, W) → uint8 (B, H, W, C): round((x + 1) · 127.5), clamped to [0, 255].

    >>> to_uint8(torch.tensor([[[[-1.0, 0.0, 1.0]]]])).reshape(-1).tolist()
    [0, 128, 255]
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    x = ((images.detach().to("cpu", torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def masks_to_uint8(masks: torch.Tensor) -> np.ndarray:
    """Binary masks (B, 1, H, W) → uint8 (B, H, W) with 255 = anomaly, 0 = background (the MVTec mask format).

    >>> masks_to_uint8(torch.tensor([[[[0.0, 1.0]]]])).tolist()
    [[[0, 255]]]
    """
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (B, 1, H, W), got {tuple(masks.shape)}")
    return ((masks[:, 0].detach().to("cpu") > 0.5).to(torch.uint8) * 255).numpy()

"""One training step per trainer: the FAST stage (FAST_SPEC §6), the VAE and the from-scratch base UNet.

Each function computes a scalar loss for one batch and returns ``(loss, metrics)``; the caller owns the optimizer,
``backward`` and the data loop (Ray Train in ``pipelines``). Every random draw (timesteps, noise, the VAE posterior
sample) comes from the ``generator`` argument, so one seed gives the same bytes on CPU. Noise schedule (FAST_SPEC §1):
T = 1000, β_t = linspace(√0.00085, √0.012, T)², ᾱ_t = ∏_{s≤t}(1 − β_s), taken from :class:`AIASScheduler`.

Notation: x image in [−1, 1]; M pixel mask (1 = anomaly); m latent mask; z_0 latent; ε noise; t timestep;
ᾱ_t ``alpha_bar``; ẑ0_fg FARM's clean-foreground estimate; ε̂ the noise prediction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fast_core.schedulers.scheduling_aias import AIASScheduler

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from fast_core.models.ldm import FastLDM

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _alphas_cumprod() -> torch.Tensor:
    """ᾱ_t for t = 0 … T−1 (float64, CPU), the FAST training schedule."""
    return AIASScheduler().alphas_cumprod.to(torch.float64).cpu()


def _randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) drawn on the generator's device (CPU when None), then moved to ``like``'s device and dtype."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def sample_timesteps(batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """t ~ U{0, …, T−1}: (B,) long on ``device`` (drawn on the generator's device)."""
    T = _alphas_cumprod().numel()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, T, (batch,), generator=generator, device=gen_device).to(device)


def _alpha_bar(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t gathered for each sample: (B, 1, 1, 1) in ``like``'s dtype and device."""
    return _alphas_cumprod()[t.cpu()].to(like.device, like.dtype).view(-1, 1, 1, 1)


def clean_latent(model: FastLDM, x: torch.Tensor | None, z0: torch.Tensor | None, where: str) -> torch.Tensor:
    """z_0 of a batch: ``z0`` when the caller encoded it already (a latent cache: the first stage is frozen in the
    base and FAST stages, so encode(x) is the same at every step), else encode(x) without gradient; float32.

    Raises:
        ValueError: neither or both of ``x`` and ``z0`` given.
    """
    if (x is None) == (z0 is None):
        raise ValueError(f"{where}: give exactly one of the images x and their latents z0")
    if z0 is not None:
        return z0.float()
    with torch.no_grad():
        return model.encode(x).float()


def farm_mixed_input(
    model: FastLDM,
    z0: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    keys: list[str],
    M: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The FAST stage's noised, FARM-mixed input (FAST_SPEC §6), under the caller's autocast:

        z_t   = √ᾱ_t z_0 + √(1−ᾱ_t) ε
        ẑ0_fg = FARM(z_t, m, t)              (keyed FARM: also the key; context FARM: also (1 − m) ⊙ z_0)
        z̃_t   = (1−m) z_t + m (√ᾱ_t ẑ0_fg + √(1−ᾱ_t) ε)                    # the same ε

    Args:
        model: the FAST model (its ``farm``).
        z0: (B, C, h, w) clean latents; m: (B, 1, h, w) latent mask; t: (B,) timesteps; eps: (B, C, h, w) noise.
        keys: the B defect keys (read by a keyed FARM).
        M: (B, 1, H, W) pixel masks (read by a pixel-mask FARM, ``FARMConfig.mask_detail``).

    Returns:
        (ẑ0_fg as float32, z̃_t), both (B, C, h, w).
    """
    ab = _alpha_bar(t, z0)  # (B, 1, 1, 1)
    z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
    z0_fg = model.farm_estimate(z_t, m, t, keys, z0, M).float()
    return z0_fg, (1 - m) * z_t + m * (ab.sqrt() * z0_fg + (1 - ab).sqrt() * eps)


def eps_loss(
    eps_pred: torch.Tensor,
    eps: torch.Tensor,
    m: torch.Tensor | None,
    fg_weight: float,
    t_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ε-loss, optionally weighted towards the anomaly cells and per timestep [ours]:

        w = 1 + λ_fg · m                                  # (B, 1, h, w), broadcast over the C latent channels
        loss = Σ s_b w (ε̂ − ε)² / (C · Σ w)              # = mean((ε̂ − ε)²) when λ_fg = 0 and s = 1 (FAST_SPEC §6)

    Defects cover a few per cent of the latent, so with the plain mean the anomaly cells carry a few per cent of the
    gradient; λ_fg ≈ (1 − f)/f for a typical foreground fraction f gives foreground and background equal shares.
    s_b is a per-sample timestep weight (:func:`min_snr_weight`), 1 when ``t_weight`` is None.

    Args:
        eps_pred: (B, C, h, w) predicted noise ε̂.
        eps: (B, C, h, w) drawn noise ε.
        m: (B, 1, h, w) latent mask in {0, 1}, or None (no mask: w = 1).
        fg_weight: λ_fg ≥ 0.
        t_weight: (B,) per-sample weights s_b, or None.

    >>> e = torch.zeros(1, 2, 2, 2); e[0, :, 0, 0] = 1.0                  # error only in cell (0, 0)
    >>> m = torch.zeros(1, 1, 2, 2); m[0, 0, 0, 0] = 1.0
    >>> float(eps_loss(e, torch.zeros_like(e), m, 0.0)), float(eps_loss(e, torch.zeros_like(e), m, 3.0))
    (0.25, 0.5714285969734192)
    >>> float(eps_loss(e, torch.zeros_like(e), m, 0.0, torch.tensor([0.5])))
    0.125
    """
    if t_weight is None and (fg_weight == 0.0 or m is None):
        return F.mse_loss(eps_pred, eps)
    sq = (eps_pred - eps).pow(2)  # (B, C, h, w)
    no_mask = fg_weight == 0.0 or m is None
    w = torch.ones_like(sq[:, :1]) if no_mask else 1.0 + fg_weight * m.to(eps_pred.dtype)  # (B, 1, h, w)
    weighted = w * sq if t_weight is None else t_weight.to(sq.dtype).view(-1, 1, 1, 1) * w * sq
    return weighted.sum() / (w.sum() * sq.shape[1])


def min_snr_weight(t: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-γ weights of an ε-prediction loss [ours, after Hang et al. 2023], one per sample:

        SNR_t = ᾱ_t / (1 − ᾱ_t);   s_t = min(SNR_t, γ) / SNR_t

    s_t = 1 where the noise dominates (SNR_t ≤ γ) and falls as 1/SNR_t below that: the nearly clean timesteps, whose
    ε-errors are the largest and teach the least about what a defect looks like, stop dominating the gradient.
    None (no weighting) for ``gamma`` None.

    >>> [round(float(v), 3) for v in min_snr_weight(torch.tensor([0, 100, 500, 999]), 5.0)]
    [0.004, 0.591, 1.0, 1.0]
    """
    if gamma is None:
        return None
    ab = _alphas_cumprod()[t.cpu()].to(torch.float64)
    snr = ab / (1.0 - ab)
    return (snr.clamp(max=gamma) / snr).to(torch.float32).to(t.device)


def loss_t_weight(t: torch.Tensor, snr_gamma: float | None, prediction: str) -> torch.Tensor | None:
    """Per-sample weights s_b of the ε term for a UNet that predicts ``prediction`` (``UNetConfig.prediction``):

        epsilon:       s_t = 1, or min(SNR_t, γ)/SNR_t with ``snr_gamma`` γ        (:func:`min_snr_weight`)
        v_prediction:  s_t = 1/ᾱ_t, or min(SNR_t, γ)/SNR_t with γ              [ours]

    A v-prediction UNet learns v = √ᾱ_t ε − √(1−ᾱ_t) z_0 and is read as ε̂ = √(1−ᾱ_t) z_t + √ᾱ_t v̂, so
    v̂ − v = (ε̂ − ε)/√ᾱ_t and its own loss ‖v̂ − v‖² is the ε-loss weighted by 1/ᾱ_t (215 at t = 999, ~1 at t = 0):
    the noisy timesteps, where ẑ0 = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t multiplies every ε error by up to 1/√ᾱ_t, count in
    clean-latent units. Min-SNR-γ weights the v-loss by min(SNR_t, γ)/(SNR_t + 1) (Hang et al. 2023), which is
    the same ε weight as for an ε-prediction UNet. None when every weight is 1.

    >>> [round(float(v), 1) for v in loss_t_weight(torch.tensor([0, 500, 999]), None, "v_prediction")]
    [1.0, 3.6, 214.6]
    """
    if snr_gamma is not None or prediction == "epsilon":
        return min_snr_weight(t, snr_gamma)
    return (1.0 / _alphas_cumprod()[t.cpu()]).to(torch.float32).to(t.device)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a reduced precision ``dtype``; a no-op for None or float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def fast_training_step(
    model: FastLDM,
    x: torch.Tensor | None,
    M: torch.Tensor,
    keys: list[str],
    generator: torch.Generator | None,
    lambda_eps: float = 2.0,
    lambda_farm: float = 5.0,
    autocast_dtype: torch.dtype | None = None,
    fg_weight: float = 0.0,
    z0: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The FAST-stage loss for one batch (FAST_SPEC §6) [release]:

        z_0 = encode(x) (no grad, or given);  m = down(M);  t ~ U{0..T−1};  ε ~ N(0, I)
        z_t    = √ᾱ_t z_0 + √(1−ᾱ_t) ε
        ẑ0_fg  = FARM(z_t, m, t)
        z̃_t    = (1−m) z_t + m (√ᾱ_t ẑ0_fg + √(1−ᾱ_t) ε)                    # the same ε
        ε̂      = Adaptor(UNet(z̃_t, t, c(keys)), m)                            # inpaint UNet: z̃_t ‖ m ‖ (1−m) z_0
        loss   = λ_ε · mean((ε̂ − ε)²) + λ_F · mean((ẑ0_fg − m ⊙ z_0)²)      # both means over the whole latent

    With ``fg_weight`` λ_fg > 0 the ε term is :func:`eps_loss`'s weighted mean (w = 1 + λ_fg·m) [ours]; the FARM term
    is unchanged (its target is 0 off the mask, where z̃_t does not use it). With ``snr_gamma`` γ the ε term is
    weighted per sample by :func:`min_snr_weight` [ours]; on a v-prediction base by 1/ᾱ_t, the base's own loss
    (:func:`loss_t_weight`).

    Gradients reach the conditioner's learned vectors, the Adaptor and FARM (also through z̃_t); the caller's optimizer
    decides what is updated (``model.configure_stage("fast")``).

    Args:
        model: the FAST model.
        x: (B, image_channels, H, W) anomaly images in [−1, 1], or None when ``z0`` is given.
        M: (B, 1, H, W) pixel masks in {0, 1} (1 = anomaly).
        keys: B defect keys.
        generator: source of t and ε.
        lambda_eps: weight λ_ε of the noise loss.
        lambda_farm: weight λ_F of the FARM reconstruction loss.
        autocast_dtype: run the networks under ``torch.autocast`` with this dtype (None: full precision).
        fg_weight: λ_fg of :func:`eps_loss` (0: the plain mean of §6).
        z0: (B, C, h, w) the images' latents encode(x), computed once by the caller (x is then None).
        snr_gamma: γ of the min-SNR weighting of the ε term, or None (unweighted).

    Returns:
        The scalar loss (float32, with grad) and ``{"loss": …, "loss_eps": …, "loss_farm": …}`` as floats.
    """
    z0 = clean_latent(model, x, z0, "fast_training_step")  # (B, C, h, w)
    if z0.shape[0] != M.shape[0] or len(keys) != z0.shape[0]:
        raise ValueError(f"fast_training_step: batch sizes differ: x {z0.shape[0]}, M {M.shape[0]}, keys {len(keys)}")
    with torch.no_grad():
        m = model.latent_mask(M).to(z0.device)  # (B, 1, h, w)
    t = sample_timesteps(z0.shape[0], generator, z0.device)  # (B,)
    eps = _randn(z0.shape, generator, z0)  # (B, C, h, w)
    with _autocast(z0.device, autocast_dtype):
        z0_fg, z_mix = farm_mixed_input(model, z0, m, t, eps, keys, M)
        eps_pred = model.predict_eps(z_mix, t, keys, m, z0, M).float()
    loss_eps = eps_loss(eps_pred, eps, m, fg_weight, loss_t_weight(t, snr_gamma, model.config.unet.prediction))
    loss_farm = F.mse_loss(z0_fg, m * z0)
    loss = lambda_eps * loss_eps + lambda_farm * loss_farm
    return loss, {
        "loss": float(loss.detach()),
        "loss_eps": float(loss_eps.detach()),
        "loss_farm": float(loss_farm.detach()),
    }


def unet_training_step(
    model: FastLDM,
    x: torch.Tensor | None,
    keys: list[str],
    generator: torch.Generator | None,
    autocast_dtype: torch.dtype | None = None,
    M: torch.Tensor | None = None,
    fg_weight: float = 0.0,
    z0: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ε-prediction loss of the base UNet (from-scratch base training; no FARM, no Adaptor):

        z_0 = encode(x) (no grad, or given);  t ~ U{0..T−1};  ε ~ N(0, I);  z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε
        loss = mean((ε_θ(z_t, t, c(keys)) − ε)²)          # λ_fg = 0
        loss = Σ w (ε_θ − ε)² / (C · Σ w),  w = 1 + λ_fg · down(M)   # λ_fg > 0 [ours], see eps_loss
        each sample's term × min(SNR_t, γ)/SNR_t                      # snr_gamma γ [ours], see min_snr_weight
        each sample's term × 1/ᾱ_t = ‖v̂ − v‖²                        # a v-prediction UNet [ours], see loss_t_weight

    An ``inpaint`` UNet takes z_t ‖ m ‖ (1 − m) ⊙ z_0 with m = down(M): it learns to fill the masked region from its
    surroundings (normal images need non-empty masks for that to teach anything: see pipelines.train.data).

    Use with ``model.configure_stage("base")`` (UNet + prompt encoder trainable).

    Args:
        model: the model whose ``unet`` and ``conditioner`` are trained.
        x: (B, image_channels, H, W) images in [−1, 1] (normal and anomalous), or None when ``z0`` is given.
        keys: B keys ("good" for normal images).
        generator: source of t and ε.
        autocast_dtype: run the UNet under ``torch.autocast`` with this dtype (None: full precision).
        M: (B, 1, H, W) pixel masks in {0, 1} (all 0 for normal images), or None; used when λ_fg > 0 or the UNet
            is an ``inpaint`` one (then required).
        fg_weight: λ_fg of :func:`eps_loss`.
        z0: (B, C, h, w) the images' latents encode(x), computed once by the caller (x is then None).
        snr_gamma: γ of the min-SNR weighting, or None (unweighted).

    Returns:
        The scalar loss and ``{"loss": …}``.
    """
    z0 = clean_latent(model, x, z0, "unet_training_step")
    if len(keys) != z0.shape[0]:
        raise ValueError(f"unet_training_step: {len(keys)} keys for a batch of {z0.shape[0]} images")
    needs_mask = fg_weight > 0.0 or model.inpaint
    if needs_mask and (M is None or M.shape[0] != z0.shape[0]):
        raise ValueError("unet_training_step: fg_weight > 0 or an inpaint UNet needs one mask M per image")
    with torch.no_grad():
        m = model.latent_mask(M).to(z0.device) if needs_mask else None
    t = sample_timesteps(z0.shape[0], generator, z0.device)
    eps = _randn(z0.shape, generator, z0)
    ab = _alpha_bar(t, z0)
    z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
    with _autocast(z0.device, autocast_dtype):
        eps_pred = model.unet_eps(z_t, t, keys, m, z0, M).float()
    t_weight = loss_t_weight(t, snr_gamma, model.config.unet.prediction)
    loss = eps_loss(eps_pred, eps, m if fg_weight > 0.0 else None, fg_weight, t_weight)
    return loss, {"loss": float(loss.detach())}


def vae_training_step(
    vae: AutoencoderKL,
    x: torch.Tensor,
    generator: torch.Generator | None,
    kl_weight: float = 1e-6,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 reconstruction + KL loss of the first-stage autoencoder (the LDM's weighting, without perceptual/GAN terms).

        q(z|x) = N(μ, σ²);  z = μ + σ ξ, ξ ~ N(0, I);  x̂ = D(z)
        loss = (1/N) · [ Σ_pixels |x − x̂| + kl_weight · Σ_latent ½(μ² + σ² − 1 − log σ²) ],  averaged over the batch

    with N = pixels × channels of one image: the CompVis ratio of reconstruction to KL (both summed per image,
    ``kl_weight`` 1e-6), divided by N so the learning rate does not depend on the image size.

    Args:
        vae: the diffusers ``AutoencoderKL`` being trained (unscaled latents; ``scaling_factor`` plays no part).
        x: (B, C, H, W) images in [−1, 1].
        generator: source of ξ.
        kl_weight: weight of the KL term.
        autocast_dtype: run the VAE under ``torch.autocast`` with this dtype (None: full precision).

    Returns:
        The scalar loss and ``{"loss": …, "loss_rec": …, "loss_kl": …}`` (loss_rec the mean absolute error,
        loss_kl the per-image KL sum).
    """
    with _autocast(x.device, autocast_dtype):
        posterior = vae.encode(x).latent_dist
        mean, logvar = posterior.mean.float(), posterior.logvar.float()  # (B, C, h, w)
        z = mean + torch.exp(0.5 * logvar) * _randn(mean.shape, generator, mean)
        x_rec = vae.decode(z.to(x.dtype)).sample.float()
    n = x[0].numel()
    rec = (x_rec - x.float()).abs().mean()  # = Σ|x − x̂| / (B·N)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1).mean()  # per-image KL sum
    loss = rec + kl_weight * kl / n
    return loss, {"loss": float(loss.detach()), "loss_rec": float(rec.detach()), "loss_kl": float(kl.detach())}

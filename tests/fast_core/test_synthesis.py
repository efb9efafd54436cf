"""Tests of the FAST synthesis loop on a tiny random model: determinism, the exact paste, NFE counts, ablation paths."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fast_core import smooth_paste, synthesis
from fast_core.configbase import from_dict, to_dict
from fast_core.models.ldm import FastLDM
from fast_core.samplers import make_scheduler, target_timestep
from fast_core.schedulers.scheduling_aias import AIASScheduler
from fast_core.synthesis import SynthesisConfig, masks_to_uint8, synthesize, to_uint8
from tests.helpers.tiny_models import tiny_fast_config, tiny_fast_ldm


@pytest.fixture(scope="module")
def model():
    return tiny_fast_ldm(image_channels=3, seed=0).eval()


@pytest.fixture(scope="module")
def model_gray():
    return tiny_fast_ldm(image_channels=1, seed=0).eval()


def _inputs(b: int = 2, c: int = 3, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images in [-1, 1] (B, C, 32, 32) and a different rectangle mask per sample (B, 1, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, c, 32, 32, generator=g) * 2 - 1
    masks = torch.zeros(b, 1, 32, 32)
    for i in range(b):
        masks[i, :, 8 + i : 24, 6 : 22 + i] = 1.0
    return images, masks


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _run(model, cfg: SynthesisConfig, seeds=(1, 2), images=None, masks=None):
    if images is None:
        images, masks = _inputs(len(seeds), model.image_channels)
    keys = [model.conditioner.keys[0]] * len(seeds)
    return synthesize(model, images, masks, keys, cfg, _gens(*seeds), "cpu")


def _count_calls(monkeypatch, module: torch.nn.Module) -> list[int]:
    """Count calls of ``module.forward`` for the duration of a test."""
    counter = [0]
    original = module.forward

    def spy(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "forward", spy)
    return counter


def _farm_inputs(model, monkeypatch) -> list[tuple[torch.Tensor, int]]:
    """Record (z, t) of every FARM call for the duration of a test."""
    seen = []
    original = model.farm.forward

    def spy(z, m, t, *rest):  # rest: the key ids and background a keyed or context FARM reads
        seen.append((z.clone(), int(t[0])))
        return original(z, m, t, *rest)

    monkeypatch.setattr(model.farm, "forward", spy)
    return seen


# ------------------------------------------------------------------------------------------- determinism and paste
def test_same_seed_gives_same_bytes_and_different_seed_differs(model):
    cfg = SynthesisConfig(nfe=10)
    a = _run(model, cfg, seeds=(1, 2))
    b = _run(model, cfg, seeds=(1, 2))
    c = _run(model, cfg, seeds=(3, 4))
    assert a.images.shape == (2, 3, 32, 32)
    assert torch.equal(a.images, b.images)
    assert np.array_equal(to_uint8(a.images), to_uint8(b.images))
    inside = a.masks.expand_as(a.images) > 0
    assert (a.images[inside] - c.images[inside]).abs().max() > 1e-3


def test_outside_mask_is_input_exactly_and_mask_is_returned_bit_exact(model):
    images, masks = _inputs(2)
    out = _run(model, SynthesisConfig(nfe=5), images=images, masks=masks)
    outside = masks.expand_as(images) == 0
    assert torch.equal(out.images[outside], images[outside])
    outside_hwc = outside.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(to_uint8(out.images)[outside_hwc], to_uint8(images)[outside_hwc])
    inside = ~outside
    assert (out.images[inside] - images[inside]).abs().mean() > 1e-2  # something was synthesized there
    assert out.images.min() >= -1 and out.images.max() <= 1
    assert torch.equal(out.masks, masks)
    assert np.array_equal(masks_to_uint8(out.masks), (masks[:, 0].numpy() * 255).astype(np.uint8))
    assert out.latent_mask_empty.tolist() == [False, False]


def test_sample_output_does_not_depend_on_batch_mates(model):
    images, masks = _inputs(2)
    pair = _run(model, SynthesisConfig(nfe=5), seeds=(7, 8), images=images, masks=masks)
    alone = _run(model, SynthesisConfig(nfe=5), seeds=(7,), images=images[:1], masks=masks[:1])
    other = _run(model, SynthesisConfig(nfe=5), seeds=(7, 99), images=images, masks=masks)
    chunked = _run(model, SynthesisConfig(nfe=5, batch_size=1), seeds=(7, 8), images=images, masks=masks)
    torch.testing.assert_close(pair.images[:1], alone.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(pair.images[:1], other.images[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pair.images, chunked.images, atol=1e-5, rtol=0)


def test_ddpm_noise_is_per_sample(model):
    images, masks = _inputs(2)
    pair = _run(model, SynthesisConfig(sampler="ddpm", nfe=4), seeds=(7, 8), images=images, masks=masks)
    alone = _run(model, SynthesisConfig(sampler="ddpm", nfe=4), seeds=(7,), images=images[:1], masks=masks[:1])
    torch.testing.assert_close(pair.images[:1], alone.images, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ reference loops (§3)
def _reference(
    model,
    x,
    mask,
    seed: int,
    sampler: str,
    nfe: int,
    window=(250, 750),
    paste: str = "residual",
    key: str | None = None,
    guidance: float = 1.0,
    clip_x0: float | None = None,
    farm_min_t: int = 0,
) -> torch.Tensor:
    """FAST_SPEC §3 written out for one sample with explicit formulas: AIAS via (Π, Σ, V), DDIM (η = 0) by hand;
    the paste replaces M with decode(z), or adds decode(z) − decode(z_bg) to x there (residual); with guidance w,
    ε̂ = ε̂_good + w (ε̂_key − ε̂_good)."""
    g = torch.Generator().manual_seed(seed)
    key = [key or model.conditioner.keys[0]]
    sched = AIASScheduler()  # the ᾱ table (float64) and, for AIAS, the grid and segment coefficients
    if sampler == "aias":
        sched.set_timesteps(nfe)
        grid = sched.timesteps.tolist()
        ends = [*grid[1:], -1]
    else:  # DDIM, trailing spacing, T // n strides, ᾱ = 1 after the last step
        stride = 1000 // nfe
        grid = [999 - i * stride for i in range(nfe)]
        ends = [max(t - stride, -1) for t in grid]
    with torch.no_grad():
        z_bg = model.encode(x)
        m = model.latent_mask(mask, "bilinear")
        z = torch.randn(z_bg.shape[1:], generator=g)[None]
        for i, (t, t_e) in enumerate(zip(grid, ends, strict=True)):
            tail = sampler == "aias" and i >= len(grid) - 2
            ab, ab_e = sched.alpha_bar(t), sched.alpha_bar(t_e)
            tv = torch.tensor([t])
            if not tail and t >= farm_min_t:
                z0_fg = model.farm(z, m, tv)
                zeta = torch.randn(z.shape[1:], generator=g)[None]
                z_mix = (1 - m) * z + m * (math.sqrt(ab) * z0_fg + math.sqrt(1 - ab) * zeta)
            else:
                z_mix = z
            eps = model.predict_eps(z_mix, tv, key, m, z_bg)  # z_bg: read by an inpaint UNet only
            if guidance != 1.0:
                eps_good = model.predict_eps(z_mix, tv, ["good"], m, z_bg)
                eps = eps_good + guidance * (eps - eps_good)
            x0 = (z_mix - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            if clip_x0 is not None:
                x0 = x0.clamp(-clip_x0, clip_x0)
                eps = (z_mix - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            if sampler == "aias":
                pi, sigma, var = sched.segment_coefficients(t, t_e)
                xi = torch.randn(z.shape[1:], generator=g)[None]
                z = pi * z + sigma * x0 + math.sqrt(var) * xi  # Π multiplies the un-mixed z
            else:
                z = math.sqrt(ab_e) * x0 + math.sqrt(1 - ab_e) * eps
            if not tail and window[0] < t_e < window[1]:
                xi_bg = torch.randn(z.shape[1:], generator=g)[None]
                z = (1 - m) * (math.sqrt(ab_e) * z_bg + math.sqrt(1 - ab_e) * xi_bg) + m * z
        decoded = model.decode(z)
        if paste == "residual":
            decoded = x + decoded - model.decode(z_bg)
    return mask * decoded.clamp(-1, 1) + (1 - mask) * x


@pytest.mark.parametrize(
    ("sampler", "nfe", "paste"), [("aias", 10, "residual"), ("aias", 10, "replace"), ("ddim", 5, "residual")]
)
def test_loop_matches_reference(model, sampler, nfe, paste):
    images, masks = _inputs(1)
    cfg = SynthesisConfig(sampler=sampler, nfe=nfe, paste=paste)
    out = _run(model, cfg, seeds=(4,), images=images, masks=masks)
    expected = _reference(model, images, masks, 4, sampler, nfe, paste=paste)
    torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)


def test_inpaint_model_loop_matches_reference():
    model = tiny_fast_ldm(image_channels=3, seed=0, inpaint=True).eval()
    images, masks = _inputs(1)
    out = _run(model, SynthesisConfig(nfe=10), seeds=(4,), images=images, masks=masks)
    torch.testing.assert_close(out.images, _reference(model, images, masks, 4, "aias", 10), atol=1e-5, rtol=0)
    outside = masks.expand_as(images) == 0
    assert torch.equal(out.images[outside], images[outside])


def test_guided_loop_matches_reference_and_costs_two_calls_per_step(monkeypatch):
    model = tiny_fast_ldm(image_channels=3, seed=0, inpaint=True).eval()
    assert model.keys[0] == "good"
    images, masks = _inputs(1)
    unet_calls = _count_calls(monkeypatch, model.unet)
    guided = synthesize(model, images, masks, ["tiny/crack"], SynthesisConfig(nfe=5, guidance=3.0), _gens(4), "cpu")
    assert unet_calls[0] == 5 and guided.nfe == 10  # both branches in one batch: 5 forward calls, 10 evaluations
    expected = _reference(model, images, masks, 4, "aias", 5, key="tiny/crack", guidance=3.0)
    torch.testing.assert_close(guided.images, expected, atol=1e-5, rtol=0)
    plain = synthesize(model, images, masks, ["tiny/crack"], SynthesisConfig(nfe=5), _gens(4), "cpu")
    assert (guided.images - plain.images).abs().max() > 1e-4
    one = synthesize(model, images, masks, ["tiny/crack"], SynthesisConfig(nfe=5, guidance=1.0), _gens(4), "cpu")
    assert torch.equal(one.images, plain.images)


@pytest.mark.parametrize("sampler", ["aias", "ddim"])
def test_clipped_and_early_farm_loops_match_reference(model, sampler):
    """clip_x0 clamps ẑ0 (and so ε̂) before each step; farm_min_t mixes with FARM only at t >= it."""
    images, masks = _inputs(1)
    cfg = SynthesisConfig(sampler=sampler, nfe=5, clip_x0=0.05, farm_min_t=600)
    out = _run(model, cfg, seeds=(4,), images=images, masks=masks)
    expected = _reference(model, images, masks, 4, sampler, 5, clip_x0=0.05, farm_min_t=600)
    torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)
    plain = _run(model, SynthesisConfig(sampler=sampler, nfe=5), seeds=(4,), images=images, masks=masks)
    assert (out.images - plain.images).abs().max() > 1e-4


def test_farm_min_t_skips_farm_below_it(model, monkeypatch):
    farm_calls = _count_calls(monkeypatch, model.farm)
    _run(model, SynthesisConfig(nfe=10, farm_min_t=800))  # grid 999, 874, 749, …: FARM at the first two only
    assert farm_calls[0] == 2


def test_keyed_farm_gets_each_samples_key(monkeypatch):
    cfg = tiny_fast_config()
    cfg.farm = dataclasses.replace(cfg.farm, num_keys=len(cfg.prompt_encoder.keys))
    model = FastLDM.from_scratch(cfg, seed=0).eval()
    seen = []
    original = model.farm.forward
    monkeypatch.setattr(model.farm, "forward", lambda *a: seen.append(a[3].tolist()) or original(*a))
    images, masks = _inputs(2)
    synthesize(model, images, masks, ["tiny/scratch", "good"], SynthesisConfig(nfe=3), _gens(1, 2), "cpu")
    assert seen == [[2, 0]]  # one FARM call (K = 1 segment), the keys' indices in the conditioner
    with pytest.raises(ValueError, match=r"unknown key\(s\)"):
        model.farm_estimate(torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 8, 8), torch.tensor([5]), ["tiny/dent"])


def test_context_farm_gets_the_normal_images_background(monkeypatch):
    """A context FARM reads the clean background of the image being painted: synthesis passes z_bg = E(x_n)."""
    cfg = tiny_fast_config()
    cfg.farm = dataclasses.replace(cfg.farm, context=True)
    model = FastLDM.from_scratch(cfg, seed=0).eval()
    seen = []
    original = model.farm.forward
    monkeypatch.setattr(model.farm, "forward", lambda *a: seen.append(a[4]) or original(*a))
    images, masks = _inputs(2)
    synthesize(model, images, masks, ["tiny/scratch", "good"], SynthesisConfig(nfe=3), _gens(1, 2), "cpu")
    assert len(seen) == 1  # one FARM call (K = 1 segment)
    with torch.no_grad():
        torch.testing.assert_close(seen[0], model.encode(images).float())


def test_guidance_needs_the_normal_key():
    model = FastLDM.from_scratch(tiny_fast_config(keys=("tiny/a", "tiny/b")), seed=0).eval()
    images, masks = _inputs(1)
    with pytest.raises(ValueError, match="'good'"):
        synthesize(model, images, masks, ["tiny/a"], SynthesisConfig(nfe=3, guidance=2.0), _gens(1), "cpu")


def test_residual_paste_keeps_the_input_where_the_sampler_returns_the_background(model, monkeypatch):
    """x̂ = x_n + D(z) − D(z_bg): with z = z_bg at the end, M holds the input image itself, not its reconstruction."""
    images, masks = _inputs(1)
    monkeypatch.setattr(synthesis, "_denoise", lambda model, sched, cfg, z, z_bg, *rest: (z_bg.clone(), 0))
    residual = _run(model, SynthesisConfig(nfe=5), seeds=(4,), images=images, masks=masks)
    torch.testing.assert_close(residual.images, images, atol=1e-5, rtol=0)
    replaced = _run(model, SynthesisConfig(nfe=5, paste="replace"), seeds=(4,), images=images, masks=masks)
    inside = masks.expand_as(images) > 0
    assert (replaced.images[inside] - images[inside]).abs().mean() > 1e-2  # the decoder's reconstruction differs


def test_smooth_paste_adds_the_change_blurred_at_the_masks_scale_and_keeps_the_background(model, monkeypatch):
    """paste="smooth": x̂ = x_n + G_σ ∗ (M ⊙ (D(z) − D(z_bg))), σ = k · r(M), inside M only; outside M bit-exact."""
    images, masks = _inputs(2)
    final: dict[str, torch.Tensor] = {}

    def denoise(model, sched, cfg, z, z_bg, *rest):
        final["z"] = z_bg + 0.5 * torch.randn_like(z_bg, generator=torch.Generator().manual_seed(0))
        return final["z"].clone(), 0

    monkeypatch.setattr(synthesis, "_denoise", denoise)
    residual = _run(model, SynthesisConfig(nfe=5), images=images, masks=masks)
    smooth = _run(model, SynthesisConfig(nfe=5, paste="smooth", smooth_scale=0.5), images=images, masks=masks)
    outside = masks.expand_as(images) == 0
    assert torch.equal(smooth.images[outside], images[outside])
    with torch.no_grad():
        delta = model.decode(final["z"]) - model.decode(model.encode(images))
    expected = torch.empty_like(images)
    for i in range(2):  # the masks are 16 × 16 and 15 × 17 rectangles: 8 erosions empty each, σ = 0.5 · 8 = 4 px
        assert smooth_paste.half_thickness(masks[i : i + 1]).item() == 8
        r = torch.arange(-12, 13, dtype=torch.float32)
        g = torch.exp(-0.5 * (r / 4.0) ** 2)
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :]).expand(3, 1, 25, 25)
        blurred = torch.nn.functional.conv2d(delta[i : i + 1] * masks[i : i + 1], kernel, padding=12, groups=3)
        expected[i] = (images[i] + blurred[0]).clamp(-1, 1)
    inside = ~outside
    torch.testing.assert_close(smooth.images[inside], expected[inside], atol=1e-5, rtol=0)
    assert not torch.allclose(smooth.images[inside], residual.images[inside], atol=1e-3)  # the grain of Δ is gone


def test_half_thickness_counts_erosions_and_a_frame_filling_mask_stops():
    m = torch.zeros(4, 1, 12, 12)
    m[0, :, 5:7, 1:11] = 1  # a 2-px line: one erosion empties it
    m[1, :, 2:9, 2:9] = 1  # 7 × 7 square: 4
    m[3] = 1  # fills the frame: the border does not erode, so the count stops at the frame's side
    assert smooth_paste.half_thickness(m).tolist() == [1, 4, 0, 12]
    delta = torch.ones(4, 1, 12, 12)
    out = smooth_paste.smooth_change(delta, m, 0.5)
    assert torch.equal(out[2], torch.zeros(1, 12, 12))  # an empty mask: no change at all
    assert out[1, 0, 5, 5] > out[1, 0, 2, 2] > 0  # the change fades inside M towards its edge


def test_smooth_max_sigma_caps_the_blur_of_wide_masks_only():
    """σ = min(k · r, σ_max): a wide mask is blurred at σ_max (and keeps more of a fine pattern than at k · r), a
    mask with k · r below the cap is blurred exactly as without it."""
    m = torch.zeros(2, 1, 40, 40)
    m[0, :, 4:36, 4:36] = 1  # r = 16: k · r = 8 > 3
    m[1, :, 10:14, 10:30] = 1  # r = 2: k · r = 1 < 3
    stripes = torch.tensor([1.0, -1.0]).repeat(20).view(1, 1, 1, 40).expand(2, 1, 40, 40)  # period 2 px
    coarse = torch.sin(torch.arange(40.0) * 2 * math.pi / 16).view(1, 1, 1, 40).expand(2, 1, 40, 40)  # period 16
    for delta in (stripes, coarse):
        capped = smooth_paste.smooth_change(delta, m, 0.5, max_sigma=3.0)
        free = smooth_paste.smooth_change(delta, m, 0.5)
        assert torch.equal(capped[1], free[1])  # below the cap: the same blur
    wide = (slice(None), slice(12, 28), slice(12, 28))  # the patch's centre, away from its fading edge
    capped = smooth_paste.smooth_change(coarse, m, 0.5, max_sigma=3.0)[0][wide].abs().mean()
    free = smooth_paste.smooth_change(coarse, m, 0.5)[0][wide].abs().mean()
    assert capped > 0.25 > 0.05 > free  # a two-cell pattern (mean |sin| 0.64): half kept at σ = 3, gone at σ = 8
    assert smooth_paste.smooth_change(stripes, m, 0.5, max_sigma=3.0)[0][wide].abs().max() < 1e-3  # a fine one: gone


def test_smooth_min_radius_keeps_thin_masks_change_unsmoothed_and_smooths_thick_ones():
    """r < r_min: M ⊙ Δ exactly (the residual paste's change); r ≥ r_min: G_σ ∗ (M ⊙ Δ), as with r_min = 0."""
    m = torch.zeros(3, 1, 12, 12)
    m[0, :, 5:7, 1:11] = 1  # r = 1
    m[1, :, 2:9, 2:9] = 1  # r = 4
    m[2, :, 3:6, 3:6] = 1  # r = 2: at the floor, smoothed
    delta = torch.randn(3, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    routed = smooth_paste.smooth_change(delta, m, 0.5, min_radius=2)
    everywhere = smooth_paste.smooth_change(delta, m, 0.5)
    assert torch.equal(routed[0], delta[0] * m[0])
    assert torch.equal(routed[1:], everywhere[1:])
    assert not torch.allclose(everywhere[0], delta[0] * m[0])  # without the floor the line is blurred


def test_routed_smooth_paste_equals_the_residual_paste_for_masks_below_the_floor(model, monkeypatch):
    """Synthesis with paste="smooth" and a floor above every mask's half-thickness writes the residual paste's bytes."""
    images, masks = _inputs(2)

    def denoise(model, sched, cfg, z, z_bg, *rest):
        return z_bg + 0.5 * torch.randn_like(z_bg, generator=torch.Generator().manual_seed(0)), 0

    monkeypatch.setattr(synthesis, "_denoise", denoise)
    residual = _run(model, SynthesisConfig(nfe=5), images=images, masks=masks)
    routed = _run(model, SynthesisConfig(nfe=5, paste="smooth", smooth_min_radius=9), images=images, masks=masks)
    smoothed = _run(model, SynthesisConfig(nfe=5, paste="smooth", smooth_min_radius=8), images=images, masks=masks)
    assert torch.equal(routed.images, residual.images)  # r = 8 < 9: both masks keep their change
    assert not torch.allclose(smoothed.images, residual.images, atol=1e-3)  # r = 8 >= 8: smoothed


# --------------------------------------------------------------------------------------------------- NFE and paths
@pytest.mark.parametrize(
    ("sampler", "nfe"),
    [("aias", 3), ("aias", 10), ("ddim", 5), ("plms", 5), ("ddpm", 10), ("dpmpp", 5), ("unipc", 5)],
)
def test_unet_calls_equal_nfe(model, monkeypatch, sampler, nfe):
    unet_calls = _count_calls(monkeypatch, model.unet)
    farm_calls = _count_calls(monkeypatch, model.farm)
    out = _run(model, SynthesisConfig(sampler=sampler, nfe=nfe), seeds=(1, 2))
    assert unet_calls[0] == nfe
    assert out.nfe == nfe
    # AIAS skips FARM on the refinement tail t = 1, 0; the baselines mix at every t
    assert farm_calls[0] == (nfe - 2 if sampler == "aias" else nfe)
    assert torch.isfinite(out.images).all()


def test_without_farm_never_calls_farm_and_differs(model, monkeypatch):
    with_farm = _run(model, SynthesisConfig(nfe=5))
    farm_calls = _count_calls(monkeypatch, model.farm)
    without = _run(model, SynthesisConfig(nfe=5, use_farm=False))
    assert farm_calls[0] == 0
    assert (with_farm.images - without.images).abs().max() > 1e-4


def test_bg_window_zero_disables_reinjection(model, monkeypatch):
    draws = [0]
    original = synthesis._randn

    def spy(*args, **kwargs):
        draws[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(synthesis, "_randn", spy)
    # grid [999, 874, 749, 624, 500, 375, 250, 125, 1, 0]: t_e in (250, 750) for 749, 624, 500, 375
    on = _run(model, SynthesisConfig(nfe=10))
    draws_on, draws[0] = draws[0], 0
    off = _run(model, SynthesisConfig(nfe=10, bg_window=(0, 0)))
    start, zeta, xi = 1, 8, 10
    assert draws[0] == start + zeta + xi
    assert draws_on == start + zeta + xi + 4
    assert (on.images - off.images).abs().max() > 1e-4


@pytest.mark.parametrize("start", ["noise", "noised_background"])
def test_start_latent(model, monkeypatch, start):
    images, masks = _inputs(2)
    seen = _farm_inputs(model, monkeypatch)
    out = _run(model, SynthesisConfig(nfe=5, start=start), seeds=(1, 2), images=images, masks=masks)
    z_first, t_first = seen[0]
    assert t_first == 999
    noise = torch.stack([torch.randn(z_first.shape[1:], generator=g) for g in _gens(1, 2)])
    if start == "noise":
        expected = noise
    else:
        with torch.no_grad():
            z_bg = model.encode(images)
        ab = AIASScheduler().alpha_bar(999)
        expected = math.sqrt(ab) * z_bg + math.sqrt(1 - ab) * noise
        assert (expected - noise).abs().max() > 1e-3
    torch.testing.assert_close(z_first, expected, atol=1e-6, rtol=0)
    outside = masks.expand_as(images) == 0
    assert torch.equal(out.images[outside], images[outside])
    assert torch.isfinite(out.images).all()


def test_release_coefficients_run_and_differ_from_exact(model):
    exact = _run(model, SynthesisConfig(nfe=10, coefficients="exact"))
    release = _run(model, SynthesisConfig(nfe=10, coefficients="release"))
    assert torch.isfinite(release.images).all()
    assert (exact.images - release.images).abs().max() > 1e-4


def test_single_channel_model(model_gray):
    images, masks = _inputs(2, c=1)
    out = _run(model_gray, SynthesisConfig(nfe=4), images=images, masks=masks)
    assert out.images.shape == (2, 1, 32, 32)
    assert to_uint8(out.images).shape == (2, 32, 32, 1)
    outside = masks == 0
    assert torch.equal(out.images[outside], images[outside])


def test_latent_mask_empty_for_one_pixel_mask(model):
    images, _ = _inputs(1)
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 13, 17] = 1.0
    bilinear = _run(model, SynthesisConfig(nfe=3, mask_downsample="bilinear"), seeds=(1,), images=images, masks=mask)
    anyway = _run(model, SynthesisConfig(nfe=3, mask_downsample="any"), seeds=(1,), images=images, masks=mask)
    assert bilinear.latent_mask_empty.tolist() == [True]
    assert anyway.latent_mask_empty.tolist() == [False]
    assert torch.equal(bilinear.masks, mask)
    outside = mask.expand_as(images) == 0
    assert torch.equal(anyway.images[outside], images[outside])


def test_default_mask_rule_is_the_one_the_model_was_trained_with(model):
    images, _ = _inputs(1)
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 13, 17] = 1.0
    trained = model.config.mask_downsample
    try:
        for rule, vanishes in (("any", False), ("bilinear", True)):
            model.config.mask_downsample = rule
            out = _run(model, SynthesisConfig(nfe=3), seeds=(1,), images=images, masks=mask)
            assert out.latent_mask_empty.tolist() == [vanishes]
    finally:
        model.config.mask_downsample = trained


def test_model_mode_is_restored(model):
    model.train()
    try:
        _run(model, SynthesisConfig(nfe=3), seeds=(1,), images=_inputs(1)[0], masks=_inputs(1)[1])
        assert model.training
    finally:
        model.eval()


# ---------------------------------------------------------------------------------------------- config and inputs
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sampler": "euler"}, "sampler"),
        ({"nfe": 2}, "nfe"),
        ({"sampler": "plms", "nfe": 2}, "nfe"),
        ({"sampler": "ddpm", "nfe": 1001}, "nfe"),
        ({"nfe": 10.0}, "nfe"),
        ({"coefficients": "approx"}, "coefficients"),
        ({"spacing": "cosine"}, "spacing"),
        ({"bg_window": (750, 250)}, "bg_window"),
        ({"bg_window": (0, 2000)}, "bg_window"),
        ({"bg_window": (1, 2, 3)}, "bg_window"),
        ({"start": "image"}, "start"),
        ({"mask_downsample": "nearest"}, "mask_downsample"),
        ({"batch_size": 0}, "batch_size"),
        ({"use_farm": "yes"}, "use_farm"),
        ({"paste": "blend"}, "paste"),
        ({"smooth_scale": 0.0}, "smooth_scale"),
        ({"smooth_scale": float("inf")}, "smooth_scale"),
        ({"smooth_scale": True}, "smooth_scale"),
        ({"smooth_min_radius": -1}, "smooth_min_radius"),
        ({"smooth_min_radius": 2.5}, "smooth_min_radius"),
        ({"smooth_min_radius": True}, "smooth_min_radius"),
        ({"smooth_max_sigma": 0.0}, "smooth_max_sigma"),
        ({"smooth_max_sigma": float("nan")}, "smooth_max_sigma"),
        ({"smooth_max_sigma": True}, "smooth_max_sigma"),
        ({"guidance": -1.0}, "guidance"),
        ({"guidance": float("nan")}, "guidance"),
        ({"guidance": True}, "guidance"),
        ({"clip_x0": 0.0}, "clip_x0"),
        ({"clip_x0": float("inf")}, "clip_x0"),
        ({"farm_min_t": 1001}, "farm_min_t"),
        ({"farm_min_t": 1.5}, "farm_min_t"),
        ({"start_t": 0}, "start_t"),
        ({"start_t": 1000}, "start_t"),
        ({"start_t": 500}, "start_t"),  # a pure-noise start belongs at t = 999
        ({"start": "reference", "start_t": 500, "sampler": "ddim"}, "start_t"),
        ({"start": "reference", "start_t": 5, "nfe": 10}, "start_t"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SynthesisConfig(**kwargs)


def test_config_round_trip():
    cfg = SynthesisConfig(sampler="ddim", nfe=50, bg_window=(0, 0), use_farm=False)
    assert from_dict(SynthesisConfig, to_dict(cfg)) == cfg
    assert from_dict(SynthesisConfig, {"bg_window": [100, 900]}).bg_window == (100, 900)
    with pytest.raises(ValueError, match="nfee"):
        from_dict(SynthesisConfig, {"nfee": 3})


def test_bad_inputs_raise(model):
    images, masks = _inputs(2)
    key = model.conditioner.keys[0]
    cfg = SynthesisConfig(nfe=3)
    with pytest.raises(ValueError, match="binary"):
        synthesize(model, images, masks * 0.5, [key] * 2, cfg, _gens(1, 2), "cpu")
    with pytest.raises(ValueError, match="generator"):
        synthesize(model, images, masks, [key] * 2, cfg, _gens(1), "cpu")
    with pytest.raises(ValueError, match="images must be"):
        synthesize(model, images[:, :1], masks, [key] * 2, cfg, _gens(1, 2), "cpu")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        synthesize(model, images * 3, masks, [key] * 2, cfg, _gens(1, 2), "cpu")
    with pytest.raises(ValueError, match="float16"):
        synthesize(model, images, masks, [key] * 2, cfg, _gens(1, 2), "cpu", dtype=torch.float16)


# ---------------------------------------------------------------------------------------------- reference start
def test_reference_start_noises_the_reference_latent_to_start_t(model, monkeypatch):
    images, masks = _inputs(2)
    references = images.clone()
    references[masks.expand_as(images) > 0] *= -0.5  # another image inside M
    seen = _farm_inputs(model, monkeypatch)
    cfg = SynthesisConfig(nfe=5, start="reference", start_t=600)
    key = model.conditioner.keys[0]
    out = synthesize(model, images, masks, [key] * 2, cfg, _gens(1, 2), "cpu", references=references)
    assert [t for _, t in seen] == [600, 400, 200]  # K = 3 segments from 600 down to 1; FARM skips the tail
    noise = torch.stack([torch.randn(seen[0][0].shape[1:], generator=g) for g in _gens(1, 2)])
    with torch.no_grad():
        z_ref = model.encode(references)
    ab = AIASScheduler().alpha_bar(600)
    torch.testing.assert_close(seen[0][0], math.sqrt(ab) * z_ref + math.sqrt(1 - ab) * noise, atol=1e-5, rtol=0)
    outside = masks.expand_as(images) == 0
    assert torch.equal(out.images[outside], images[outside])  # x_ref only starts the sampling; the paste keeps x_n
    again = synthesize(model, images, masks, [key] * 2, cfg, _gens(1, 2), "cpu", references=references)
    assert torch.equal(out.images, again.images)


def test_reference_start_from_the_input_itself_is_the_noised_background_start(model):
    images, masks = _inputs(2)
    key = model.conditioner.keys[0]
    ref = SynthesisConfig(nfe=5, start="reference", start_t=700)
    bg = SynthesisConfig(nfe=5, start="noised_background", start_t=700)
    a = synthesize(model, images, masks, [key] * 2, ref, _gens(3, 4), "cpu", references=images.clone())
    b = synthesize(model, images, masks, [key] * 2, bg, _gens(3, 4), "cpu")
    torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=0)


def test_references_are_given_exactly_with_a_reference_start(model):
    images, masks = _inputs(2)
    key = model.conditioner.keys[0]
    with pytest.raises(ValueError, match="references missing"):
        synthesize(model, images, masks, [key] * 2, SynthesisConfig(nfe=3, start="reference"), _gens(1, 2), "cpu")
    with pytest.raises(ValueError, match="references given"):
        synthesize(model, images, masks, [key] * 2, SynthesisConfig(nfe=3), _gens(1, 2), "cpu", references=images)
    cfg = SynthesisConfig(nfe=3, start="reference")
    with pytest.raises(ValueError, match="shape"):
        synthesize(model, images, masks, [key] * 2, cfg, _gens(1, 2), "cpu", references=images[:1])
    with pytest.raises(ValueError, match=r"references must be floating point in \[-1, 1\]"):
        synthesize(model, images, masks, [key] * 2, cfg, _gens(1, 2), "cpu", references=images * 3)


# ------------------------------------------------------------------------------------------ samplers and helpers
def test_make_scheduler_grids():
    assert make_scheduler(SynthesisConfig(nfe=10)).timesteps.tolist() == [999, 874, 749, 624, 500, 375, 250, 125, 1, 0]
    assert make_scheduler(SynthesisConfig(sampler="ddim", nfe=5)).timesteps.tolist() == [999, 799, 599, 399, 199]
    late = SynthesisConfig(nfe=10, start="reference", start_t=500)
    assert make_scheduler(late).timesteps.tolist() == [500, 437, 375, 312, 250, 188, 125, 63, 1, 0]
    assert make_scheduler(SynthesisConfig(sampler="plms", nfe=5)).timesteps.tolist() == [999, 749, 749, 499, 249]
    ddpm = make_scheduler(SynthesisConfig(sampler="ddpm", nfe=1000))
    assert ddpm.timesteps[0] == 999 and ddpm.timesteps[-1] == 0 and len(ddpm.timesteps) == 1000
    # all samplers share the FAST schedule: ᾱ_999 of scaled_linear(0.00085, 0.012)
    ab = AIASScheduler().alpha_bar(999)
    assert float(ddpm.alphas_cumprod[999]) == pytest.approx(ab, rel=1e-5)
    assert ab == pytest.approx(0.0046601, rel=1e-4)


def test_plms_target_timesteps_follow_diffusers(monkeypatch):
    sched = make_scheduler(SynthesisConfig(sampler="plms", nfe=5))
    landed = []
    original = sched._get_prev_sample

    def spy(sample, timestep, prev_timestep, model_output):
        landed.append(int(prev_timestep))
        return original(sample, timestep, prev_timestep, model_output)

    monkeypatch.setattr(sched, "_get_prev_sample", spy)
    predicted = []
    z = torch.zeros(1, 4, 2, 2)
    for t in sched.timesteps.tolist():
        predicted.append(target_timestep("plms", sched, t))
        z = sched.step(torch.ones_like(z), t, z).prev_sample
    assert predicted == landed == [749, 749, 499, 249, -1]


@pytest.mark.parametrize("sampler", ["dpmpp", "unipc"])
def test_multistep_solvers_land_on_the_next_grid_entry_and_recover_an_exact_x0(sampler):
    """With the exact ε of a fixed z_0 at every step, a data-prediction solver's x̂_0 is z_0 at every step, so it
    ends on z_0 itself (σ = 0), whatever its order; target_timestep names the grid entry each step lands on."""
    sched = make_scheduler(SynthesisConfig(sampler=sampler, nfe=5))
    assert sched.timesteps.tolist() == [999, 799, 599, 399, 199]
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64)
    landed = []
    for t in sched.timesteps.tolist():
        landed.append(target_timestep(sampler, sched, t))
        ab = float(sched.alphas_cumprod[t])
        eps = (z - math.sqrt(ab) * z0) / math.sqrt(1 - ab)
        z = sched.step(eps, t, z).prev_sample
    assert landed == [799, 599, 399, 199, -1]
    torch.testing.assert_close(z, z0, atol=1e-6, rtol=0)


def test_aias_step_takes_caller_noise():
    sched = AIASScheduler()
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z, z_mix, eps, xi = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(4))
    out = sched.step(eps, 999, z, model_input=z_mix, variance_noise=xi)
    pi, sigma, var = sched.segment_coefficients(999, 874)
    ab = sched.alpha_bar(999)
    x0 = (z_mix - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    torch.testing.assert_close(out.prev_sample, pi * z + sigma * x0 + math.sqrt(var) * xi, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.pred_original_sample, x0, atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        sched.step(eps, 999, z, variance_noise=xi[:1])


def test_uint8_conversions():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).reshape(1, 1, 2, 3)
    assert to_uint8(x).reshape(-1).tolist() == [0, 0, 128, 191, 255, 255]
    rgb = torch.zeros(2, 3, 4, 5)
    rgb[:, 1] = 1.0
    u8 = to_uint8(rgb)
    assert u8.shape == (2, 4, 5, 3) and u8.dtype == np.uint8
    assert u8[..., 1].min() == 255 and u8[..., 0].max() == 128
    m = torch.zeros(1, 1, 2, 2)
    m[0, 0, 1, 0] = 1
    assert masks_to_uint8(m).tolist() == [[[0, 0], [255, 0]]]
    with pytest.raises(ValueError):
        masks_to_uint8(torch.zeros(1, 2, 2, 2))


def test_a_pixel_mask_model_paints_by_the_pixels_of_its_mask():
    """An ``inpaint_px`` UNet reads M itself: one more pixel in an already masked latent cell changes what is
    painted on the pixels both masks share, and the background stays bit-exact."""
    model = tiny_fast_ldm(image_channels=3, seed=0, inpaint="inpaint_px").eval()
    f = model.downsample_factor
    images, _ = _inputs(1)
    line = torch.zeros(1, 1, 32, 32)
    line[:, :, 2 * f : 6 * f, 3 * f] = 1.0  # a one-pixel line at the left edge of a latent column
    wider = line.clone()
    wider[:, :, 3 * f, 3 * f + 1] = 1.0  # one pixel more, in a cell the line already marks
    assert torch.equal(model.latent_mask(line, "any"), model.latent_mask(wider, "any"))
    cfg = SynthesisConfig(nfe=5)
    a = synthesize(model, images, line, ["tiny/crack"], cfg, _gens(4), "cpu").images
    b = synthesize(model, images, wider, ["tiny/crack"], cfg, _gens(4), "cpu").images
    shared = line.expand_as(images) > 0
    assert (a[shared] - b[shared]).abs().max() > 1e-4
    assert torch.equal(a[~shared], images[~shared])
    plain = tiny_fast_ldm(image_channels=3, seed=0, inpaint=True).eval()  # a cell-mask UNet cannot tell them apart
    pa = synthesize(plain, images, line, ["tiny/crack"], cfg, _gens(4), "cpu").images
    pb = synthesize(plain, images, wider, ["tiny/crack"], cfg, _gens(4), "cpu").images
    assert torch.equal(pa[shared], pb[shared])

"""Tests of the AIAS scheduler: segment maths against independent derivations, grids, diffusers parity, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fast_core.configbase import from_dict, to_dict
from fast_core.schedulers import AIASConfig, AIASScheduler, AIASSchedulerOutput

GRID_10 = [999, 874, 749, 624, 500, 375, 250, 125, 1, 0]
T = 1000


def _betas() -> np.ndarray:
    """β_t = linspace(√0.00085, √0.012, 1000)², float64, built here independently of the scheduler."""
    return np.linspace(math.sqrt(0.00085), math.sqrt(0.012), T, dtype=np.float64) ** 2


def _segments(grid: list[int]) -> list[tuple[int, int]]:
    """(t_s, t_e) pairs of a grid, including the last step to −1."""
    return list(zip(grid, [*grid[1:], -1], strict=True))


def _recursion(t_s: int, t_e: int) -> tuple[float, float, float]:
    """Compose the one-step posteriors k = t_s … t_e+1 step by step (FAST_SPEC §2 recursion)."""
    beta = _betas()
    alpha_bar = np.cumprod(1.0 - beta)
    pi, sigma, var = 1.0, 0.0, 0.0
    for k in range(t_s, t_e, -1):
        ab_k = alpha_bar[k]
        ab_prev = alpha_bar[k - 1] if k > 0 else 1.0
        a = math.sqrt(1.0 - beta[k]) * (1.0 - ab_prev) / (1.0 - ab_k)
        b = math.sqrt(ab_prev) * beta[k] / (1.0 - ab_k)
        s2 = beta[k] * (1.0 - ab_prev) / (1.0 - ab_k)
        pi, sigma, var = a * pi, a * sigma + b, a * a * var + s2
    return pi, sigma, var


def _marginal(t_s: int, t_e: int) -> tuple[float, float, float]:
    """q(z_{t_e} | z_{t_s}, z_0) by conditioning the joint Gaussian of (z_{t_e}, z_{t_s}) given z_0 (per coordinate).

    Forward chain: z_{t_e} = √ᾱ_{t_e} z_0 + √(1−ᾱ_{t_e}) ε₁ and z_{t_s} = √c z_{t_e} + √(1−c) ε₂ with
    c = ∏_{j=t_e+1}^{t_s} α_j. Joint covariance C = [[1−ᾱ_{t_e}, √c(1−ᾱ_{t_e})], [·, 1−ᾱ_{t_s}]]; the conditional
    mean is μ_e + C_es/C_ss (z_s − μ_s) and the conditional variance C_ee − C_es²/C_ss.
    """
    alpha = 1.0 - _betas()
    c = float(np.prod(alpha[t_e + 1 : t_s + 1]))
    ab_e = float(np.prod(alpha[: t_e + 1])) if t_e >= 0 else 1.0
    ab_s = ab_e * c
    cov = np.array([[1.0 - ab_e, math.sqrt(c) * (1.0 - ab_e)], [math.sqrt(c) * (1.0 - ab_e), 1.0 - ab_s]])
    gain = cov[0, 1] / cov[1, 1]  # coefficient of z_{t_s}
    mean_z0 = math.sqrt(ab_e) - gain * math.sqrt(ab_s)  # coefficient of z_0
    var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    return gain, mean_z0, var


def _scheduler(nfe: int = 10, **kwargs: object) -> AIASScheduler:
    s = AIASScheduler(**kwargs)
    s.set_timesteps(nfe)
    return s


# ---------------------------------------------------------------------------------------------- segment maths
@pytest.mark.parametrize(("spacing", "nfe"), [("uniform", 10), ("uniform", 50), ("quadratic", 12), ("logsnr", 20)])
def test_closed_form_equals_recursion_and_marginal(spacing: str, nfe: int) -> None:
    s = _scheduler(nfe, spacing=spacing)
    for t_s, t_e in _segments(s.timesteps.tolist()):
        closed = s.segment_coefficients(t_s, t_e)
        for other in (_recursion(t_s, t_e), _marginal(t_s, t_e)):
            np.testing.assert_allclose(closed, other, rtol=0, atol=1e-12, err_msg=f"{t_s}->{t_e}")


def test_custom_grid_segments_match_marginal() -> None:
    s = AIASScheduler()
    s.set_timesteps(timesteps=[700, 650, 300, 2, 1])
    assert s.timesteps.tolist() == [700, 650, 300, 2, 1, 0]
    for t_s, t_e in _segments(s.timesteps.tolist()):
        np.testing.assert_allclose(s.segment_coefficients(t_s, t_e), _marginal(t_s, t_e), rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "logsnr"])
def test_first_timestep_places_the_boundaries_below_it(spacing: str) -> None:
    s = AIASScheduler(spacing=spacing)
    s.set_timesteps(10, first_timestep=400)
    grid = s.timesteps.tolist()
    assert grid[0] == 400 and grid[-2:] == [1, 0] and len(grid) == 10
    assert all(a > b for a, b in zip(grid[:-1], grid[1:], strict=False))
    for t_s, t_e in _segments(grid):
        np.testing.assert_allclose(s.segment_coefficients(t_s, t_e), _marginal(t_s, t_e), rtol=0, atol=1e-12)
    full = AIASScheduler(spacing=spacing)
    full.set_timesteps(10, first_timestep=999)
    assert full.timesteps.tolist() == _scheduler(10, spacing=spacing).timesteps.tolist()


def test_first_timestep_errors() -> None:
    s = AIASScheduler()
    with pytest.raises(ValueError, match="first_timestep must be an integer in \\[9, 999\\]"):
        s.set_timesteps(10, first_timestep=8)
    with pytest.raises(ValueError, match="first_timestep"):
        s.set_timesteps(10, first_timestep=1000)
    with pytest.raises(ValueError, match="first_timestep goes with num_inference_steps"):
        s.set_timesteps(timesteps=[700, 1], first_timestep=700)


@pytest.mark.parametrize("nfe", [3, 10, 50])
def test_identities(nfe: int) -> None:
    s = _scheduler(nfe)
    for t_s, t_e in _segments(s.timesteps.tolist()):
        pi, sigma, var = s.segment_coefficients(t_s, t_e)
        ab_s, ab_e = s.alpha_bar(t_s), s.alpha_bar(t_e)
        assert abs(pi * math.sqrt(ab_s) + sigma - math.sqrt(ab_e)) < 1e-12
        assert abs(pi**2 * (1.0 - ab_s) + var - (1.0 - ab_e)) < 1e-12


def test_reference_values() -> None:
    s = AIASScheduler()
    np.testing.assert_allclose(s.segment_coefficients(999, 874), (0.49585, 0.10192, 0.73684), atol=5e-6)
    np.testing.assert_allclose(s.segment_coefficients(125, 1), (0.01148, 0.98849, 0.00169), atol=5e-6)
    assert s.segment_coefficients(0, -1) == (0.0, 1.0, 0.0)


def test_release_form_documented_deviations() -> None:
    exact, release = AIASScheduler(), AIASScheduler(coefficients="release")
    deficits = []
    for t_s, t_e in _segments(GRID_10):
        pe, se, ve = exact.segment_coefficients(t_s, t_e)
        pr, sr, vr = release.segment_coefficients(t_s, t_e)
        assert abs(pe - pr) < 1e-12  # Π is unaffected
        if t_s - t_e == 1:  # single posteriors (the tail): both forms agree
            np.testing.assert_allclose((pr, sr, vr), (pe, se, ve), rtol=0, atol=1e-12)
        else:
            assert sr < se and vr > ve
        deficits.append(1.0 - sr / se)
    assert 0.06 < max(deficits) < 0.09  # Σ up to ~7.5 % low, worst on the first segment
    assert max(deficits) == deficits[0]
    _, _, v_release = release.segment_coefficients(125, 1)
    _, _, v_exact = exact.segment_coefficients(125, 1)
    assert abs(v_release - 0.049) < 1e-3
    assert 25.0 < v_release / v_exact < 35.0


# ---------------------------------------------------------------------------------------------- grids and args
def test_grid_10_and_nfe_counts() -> None:
    assert _scheduler(10).timesteps.tolist() == GRID_10
    assert _scheduler(3).timesteps.tolist() == [999, 1, 0]
    for nfe in (3, 10, 50):
        s = _scheduler(nfe)
        assert len(s.timesteps) == nfe == s.num_inference_steps
        assert s.timesteps.dtype == torch.long
    s = _scheduler(10)
    assert [s.prev_timestep(t) for t in GRID_10] == [*GRID_10[1:], -1]
    assert s.prev_timestep(torch.tensor(125)) == 1


@pytest.mark.parametrize("spacing", ["quadratic", "logsnr"])
def test_nonuniform_grids(spacing: str) -> None:
    s = _scheduler(12, spacing=spacing)
    grid = s.timesteps.tolist()
    bounds = grid[:-1]
    assert len(grid) == 12 and bounds[0] == 999 and bounds[-1] == 1 and grid[-1] == 0
    assert all(b > c for b, c in zip(grid[:-1], grid[1:], strict=False))
    gaps = [b - c for b, c in zip(bounds[:-1], bounds[1:], strict=False)]
    assert gaps[-1] < gaps[0] / 5  # denser at low t than uniform (whose gaps are all ~99.8)
    k = len(bounds) - 1
    if spacing == "quadratic":
        assert bounds == [round(1 + 998 * (1 - i / k) ** 2) for i in range(k + 1)]
    else:
        ab = np.cumprod(1.0 - _betas())
        lam = np.log(ab / (1.0 - ab))
        targets = np.linspace(lam[999], lam[1], k + 1)
        for t, target in zip(bounds, targets, strict=True):
            err = abs(lam[t] - target)
            assert err <= abs(lam[t - 1] - target) and (t == 999 or err <= abs(lam[t + 1] - target))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_inference_steps": 2}, ">= 3"),
        ({"num_inference_steps": 0}, ">= 3"),
        ({}, "exactly one"),
        ({"num_inference_steps": 10, "timesteps": [999, 1]}, "exactly one"),
        ({"timesteps": [999, 500, 750, 1]}, "strictly decreasing"),
        ({"timesteps": [1200, 500, 1]}, r"within \[1, 999\]"),
        ({"timesteps": [999, 500, 0]}, r"within \[1, 999\]"),
        ({"timesteps": [999, 500, 2]}, "end at 1"),
        ({"timesteps": [999, 500.5, 1]}, "integers"),
        ({"num_inference_steps": 1001}, "too many"),
    ],
)
def test_bad_set_timesteps_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AIASScheduler().set_timesteps(**kwargs)


def test_other_bad_args() -> None:
    with pytest.raises(ValueError, match="too many.*quadratic"):
        AIASScheduler(spacing="quadratic").set_timesteps(50)
    with pytest.raises(ValueError, match="'exact', 'release'"):
        AIASScheduler(coefficients="paper")
    with pytest.raises(ValueError, match="'uniform', 'quadratic', 'logsnr'"):
        AIASScheduler(spacing="cosine")
    with pytest.raises(ValueError, match="nfe"):
        AIASConfig(nfe=2)
    with pytest.raises(ValueError, match="set_timesteps"):
        AIASScheduler().step(torch.zeros(1), 999, torch.zeros(1))
    s = _scheduler(10)
    with pytest.raises(ValueError, match="not on the current grid"):
        s.step(torch.zeros(1), 998, torch.zeros(1))
    with pytest.raises(ValueError, match="invalid"):
        s.segment_coefficients(100, 100)
    with pytest.raises(ValueError, match="same shape"):
        s.step(torch.zeros(2), 999, torch.zeros(3))


# ---------------------------------------------------------------------------------------------- step
def test_step_formula_and_model_input() -> None:
    s = _scheduler(10)
    g = torch.Generator().manual_seed(1)
    z, zm, eps = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = s.step(eps, 250, z, torch.Generator().manual_seed(7), model_input=zm)
    assert isinstance(out, AIASSchedulerOutput)
    ab = s.alpha_bar(250)
    x0 = (zm - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    xi = torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    pi, sigma, var = _marginal(250, 125)
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.prev_sample, pi * z + sigma * x0 + math.sqrt(var) * xi, rtol=0, atol=1e-12)


def test_last_step_draws_no_noise() -> None:
    s = _scheduler(10)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    z, eps = torch.randn(1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 4, 4, 4, dtype=torch.float64)
    out = s.step(eps, 0, z, g)
    assert torch.equal(g.get_state(), state)
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample, rtol=0, atol=1e-12)


def test_matches_diffusers_ddpm_respaced() -> None:
    # diffusers builds its schedule in float32 (FAST_SPEC §2), so agreement holds to ~1e-5 (relative to the size of
    # ẑ_0, which reaches ~70 at t = 999), not float64 precision. Same noise: both draw ξ from equally seeded generators.
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        variance_type="fixed_small",
    )
    ref.set_timesteps(timesteps=GRID_10)
    s = _scheduler(10)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(GRID_10):
        z = torch.randn(2, 4, 8, 8, generator=g)
        eps = torch.randn(2, 4, 8, 8, generator=g)
        ours = s.step(eps, t, z, torch.Generator().manual_seed(100 + i))
        theirs = ref.step(eps, t, z, generator=torch.Generator().manual_seed(100 + i))
        tol = 1e-5 * max(1.0, float(theirs.pred_original_sample.abs().max()))
        torch.testing.assert_close(ours.pred_original_sample, theirs.pred_original_sample, rtol=0, atol=tol)
        torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, rtol=0, atol=tol)

    # With diffusers' float32 table swapped for our float64 ᾱ, the two steps are the same formula to float64 precision.
    ref.alphas_cumprod = s.alphas_cumprod.clone()
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    for i, t in enumerate(GRID_10):
        z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        ours = s.step(eps, t, z, torch.Generator().manual_seed(200 + i))
        theirs = ref.step(eps, t, z, generator=torch.Generator().manual_seed(200 + i))
        torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, rtol=0, atol=1e-12)


@pytest.mark.parametrize("coefficients", ["exact", "release"])
def test_oracle_loop_recovers_z0(coefficients: str) -> None:
    s = _scheduler(10, coefficients=coefficients)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    for t in s.timesteps:
        ab = s.alpha_bar(int(t))
        eps = (z - math.sqrt(ab) * z0) / math.sqrt(1 - ab)  # oracle: the exact noise of z relative to z0
        z = s.step(eps, t, z, g).prev_sample
    torch.testing.assert_close(z, z0, rtol=0, atol=1e-5)


def test_same_seed_same_bytes_and_config_round_trip() -> None:
    s = _scheduler(8, coefficients="release", spacing="logsnr")
    rebuilt = AIASScheduler(**s.config)
    rebuilt.set_timesteps(8)
    assert rebuilt.timesteps.tolist() == s.timesteps.tolist()
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = int(s.timesteps[2])
    a = s.step(eps, t, z, torch.Generator().manual_seed(5)).prev_sample
    b = rebuilt.step(eps, t, z, torch.Generator().manual_seed(5)).prev_sample
    c = s.step(eps, t, z, torch.Generator().manual_seed(6)).prev_sample
    assert a.dtype == torch.float32
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not torch.equal(a, c)


def test_from_config_and_dict_round_trip() -> None:
    cfg = from_dict(AIASConfig, {"nfe": 12, "spacing": "quadratic", "coefficients": "release"})
    s = AIASScheduler.from_config(cfg)
    assert len(s.timesteps) == 12 and s.config["spacing"] == "quadratic" and s.config["coefficients"] == "release"
    assert from_dict(AIASConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(AIASConfig, {"steps": 10})


def test_schedule_tables() -> None:
    s = AIASScheduler()
    assert s.alphas_cumprod.dtype == torch.float64 and len(s.alphas_cumprod) == T
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1.0 - _betas()), rtol=1e-14)
    assert s.alpha_bar(-1) == 1.0
    linear = AIASScheduler(beta_schedule="linear")
    np.testing.assert_allclose(linear.betas.numpy(), np.linspace(0.00085, 0.012, T), rtol=1e-12)


def test_add_noise() -> None:
    s = AIASScheduler()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 10, -1])
    out = s.add_noise(x0, noise, t)
    ab = np.cumprod(1.0 - _betas())
    for i, ti in enumerate([999, 10]):
        expected = math.sqrt(ab[ti]) * x0[i] + math.sqrt(1.0 - ab[ti]) * noise[i]
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-12)
    assert torch.equal(out[2], x0[2])
    torch.testing.assert_close(s.add_noise(x0, noise, 500), s.add_noise(x0, noise, torch.full((3,), 500)))
    with pytest.raises(ValueError, match=r"\[-1, 999\]"):
        s.add_noise(x0, noise, 1000)

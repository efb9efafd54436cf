"""Tests for FARM and the Adaptor: shapes, parameter counts, the gating equation, identity modes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fast_core.configbase import from_dict, to_dict
from fast_core.models.adaptor import Adaptor, AdaptorConfig
from fast_core.models.farm import FARM, FARMConfig, sinusoidal_table
from fast_core.schedulers.scheduling_aias import AIASScheduler


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _half_mask(b: int, size: int) -> torch.Tensor:
    m = torch.zeros(b, 1, size, size)
    m[:, :, : size // 2, : size // 3] = 1.0
    return m


# FARM


def test_farm_parameter_count_matches_spec() -> None:
    n = _n_params(FARM(FARMConfig()))
    assert n == 1_863_144
    assert abs(n - 1.86e6) / 1.86e6 < 0.05


@pytest.mark.parametrize("size", [32, 16])
def test_farm_output_shape(size: int) -> None:
    torch.manual_seed(0)
    farm = FARM(FARMConfig(latent_size=size))
    z = torch.randn(3, 4, size, size)
    out = farm(z, _half_mask(3, size), torch.tensor([0, 500, 999]))
    assert out.shape == (3, 4, size, size)
    assert torch.isfinite(out).all()
    assert farm.soft_mask(torch.tensor([0, 999])).shape == (2, 1, size // 4, size // 4)


def test_farm_time_table_is_sinusoidal_and_trainable() -> None:
    farm = FARM(FARMConfig())
    table = sinusoidal_table(1000, 128)
    assert torch.equal(farm.time_embed.weight.detach(), table)
    assert farm.time_embed.weight.requires_grad
    # row t = [sin(t f_i), cos(t f_i)], f_i = 10000^(-i/64)
    assert table[7, 0].item() == pytest.approx(math.sin(7.0), abs=1e-6)
    assert table[7, 64].item() == pytest.approx(math.cos(7.0), abs=1e-6)
    assert table[999, 1].item() == pytest.approx(math.sin(999.0 * 10000 ** (-1 / 64)), abs=1e-5)


def test_farm_soft_mask_in_open_unit_interval() -> None:
    torch.manual_seed(0)
    farm = FARM(FARMConfig())
    with torch.no_grad():
        farm.time_mask[-1].bias.fill_(3.0)  # push the logits away from 0; sigmoid must stay strictly inside (0, 1)
        g = farm.soft_mask(torch.arange(0, 1000, 37))
    assert g.shape == (28, 1, 8, 8)
    assert (g > 0).all() and (g < 1).all()
    assert g.min() > 0.5  # the bias moved it, so the values are the sigmoid of the MLP output
    assert g.std() > 0  # it depends on the timestep and position


def test_farm_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    farm = FARM(FARMConfig(latent_size=16, widths=(8, 16, 32), time_dim=16))
    t = torch.tensor([3, 400, 999])
    out = farm(torch.randn(3, 4, 16, 16), _half_mask(3, 16), t)
    (out - torch.randn_like(out)).square().mean().backward()
    for name, p in farm.named_parameters():
        assert p.grad is not None, name
        grad = p.grad[t] if name == "time_embed.weight" else p.grad
        assert grad.abs().sum() > 0, name
    unused = torch.ones(1000, dtype=torch.bool)
    unused[t] = False
    assert farm.time_embed.weight.grad[unused].abs().sum() == 0  # only the looked-up rows learn


def test_farm_soft_mask_only_acts_outside_the_mask() -> None:
    """u = h3 ⊙ (m4 + (1 − m4) g_t) + b_t: with m = 1 everywhere g_t drops out; with m = 0 it matters."""
    torch.manual_seed(0)
    farm = FARM(FARMConfig(latent_size=16, widths=(8, 16, 32), time_dim=16)).eval()
    z, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    ones, zeros = torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    with torch.no_grad():
        before_ones, before_zeros = farm(z, ones, t), farm(z, zeros, t)
        farm.time_mask[-1].weight.mul_(-3.0)
        farm.time_mask[-1].bias.add_(1.0)
        after_ones, after_zeros = farm(z, ones, t), farm(z, zeros, t)
    torch.testing.assert_close(after_ones, before_ones, rtol=0, atol=1e-6)
    assert (after_zeros - before_zeros).abs().max() > 1e-3


def test_farm_bottleneck_equation() -> None:
    """The decoder receives exactly u = h3 ⊙ (m4 + (1 − m4) g_t) + b_t, m4 the max-pooled mask."""
    torch.manual_seed(0)
    farm = FARM(FARMConfig(latent_size=16, widths=(8, 16, 32), time_dim=16)).eval()
    seen: dict[str, torch.Tensor] = {}
    farm.enc_proj.register_forward_hook(lambda mod, inp, out: seen.update(h3=out))
    farm.dec_proj.register_forward_hook(lambda mod, inp, out: seen.update(u=inp[0]))
    z, m, t = torch.randn(2, 4, 16, 16), _half_mask(2, 16), torch.tensor([5, 700])
    with torch.no_grad():
        farm(z, m, t)
        m4 = torch.nn.functional.max_pool2d(m, 4)
        g = farm.soft_mask(t)
        bias = farm.time_bias(farm.time_embed(t))[:, :, None, None]
    assert 0 < m4.mean() < 1
    torch.testing.assert_close(seen["u"], seen["h3"] * (m4 + (1 - m4) * g) + bias, rtol=1e-6, atol=1e-6)


def test_farm_mask_pool_modes() -> None:
    thin = torch.zeros(1, 1, 16, 16)
    thin[..., 5, :] = 1.0  # a one-cell-thin line
    m4_max = FARM(FARMConfig(latent_size=16, mask_pool="max"))._pool_mask(thin, 4)
    m4_bil = FARM(FARMConfig(latent_size=16, mask_pool="bilinear"))._pool_mask(thin, 4)
    assert m4_max.shape == m4_bil.shape == (1, 1, 4, 4)
    assert torch.equal(m4_max[0, 0, 1], torch.ones(4)) and m4_max.sum() == 4
    assert m4_bil.max() < 1.0  # bilinear keeps coverage, not presence


def test_farm_rejects_wrong_inputs() -> None:
    farm = FARM(FARMConfig(latent_size=32))
    m, t = torch.zeros(2, 1, 32, 32), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="latent_size"):
        farm(torch.zeros(2, 4, 16, 16), torch.zeros(2, 1, 16, 16), t)
    with pytest.raises(ValueError, match="divisible by 4"):
        farm(torch.zeros(2, 4, 30, 30), torch.zeros(2, 1, 30, 30), t)
    with pytest.raises(ValueError, match="latent_channels"):
        farm(torch.zeros(2, 3, 32, 32), m, t)
    with pytest.raises(ValueError, match="mask m"):
        farm(torch.zeros(2, 4, 32, 32), torch.zeros(2, 32, 32), t)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        farm(torch.zeros(2, 4, 32, 32), m, torch.tensor([1, 1000]))
    with pytest.raises(ValueError, match="integer"):
        farm(torch.zeros(2, 4, 32, 32), m, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="multiple of 4"):
        FARMConfig(latent_size=30)
    with pytest.raises(ValueError, match="mask_pool"):
        FARMConfig(mask_pool="nearest")


def test_keyed_farm_starts_as_the_key_blind_one_and_learns_per_key() -> None:
    """num_keys > 0: the same initial weights as the spec's FARM plus a zero key embedding, so the first output equals
    the key-blind one; after a step on one key the two keys' outputs differ. Without key_ids a keyed FARM refuses."""
    cfg = FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8)
    torch.manual_seed(0)
    blind = FARM(cfg).eval()
    torch.manual_seed(0)
    keyed = FARM(FARMConfig(**{**to_dict(cfg), "num_keys": 3}))
    z, m, t = torch.randn(2, 4, 8, 8), torch.ones(2, 1, 8, 8), torch.tensor([10, 500])
    keyed.eval()
    torch.testing.assert_close(keyed(z, m, t, torch.tensor([0, 2])), blind(z, m, t), atol=0, rtol=0)
    keyed.train()
    opt = torch.optim.SGD(keyed.parameters(), lr=1.0)
    keyed(z, m, t, torch.tensor([1, 1])).pow(2).mean().backward()
    opt.step()
    keyed.eval()
    a, b = keyed(z, m, t, torch.tensor([1, 1])), keyed(z, m, t, torch.tensor([0, 0]))
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="key_ids"):
        keyed(z, m, t)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        keyed(z, m, t, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_keys"):
        FARMConfig(num_keys=-1)


def test_residual_farm_corrects_the_linear_estimate() -> None:
    """residual: ẑ0_fg = m ⊙ (√ᾱ_t z_t + √(1−ᾱ_t) F), F being the spec FARM with the same weights (the ᾱ table is
    derived, not saved, so the state dicts match); ᾱ is FAST's training schedule. At t = 0 it is almost m ⊙ z_t."""
    cfg = FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8)
    torch.manual_seed(0)
    plain = FARM(cfg).eval()
    res = FARM(FARMConfig(**{**to_dict(cfg), "residual": True})).eval()
    res.load_state_dict(plain.state_dict(), strict=True)
    z, m, t = torch.randn(3, 4, 8, 8), _half_mask(3, 8), torch.tensor([0, 400, 999])
    ab = AIASScheduler().alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    want = m * (ab.sqrt() * z + (1 - ab).sqrt() * plain(z, m, t))
    torch.testing.assert_close(res(z, m, t), want)
    assert float((res(z, m, t)[0] - m[0] * z[0]).abs().max()) < 0.1  # √(1−ᾱ_0) ≈ 0.03
    assert float(res(z, m, t)[:, :, 4:].abs().max()) == 0.0  # nothing outside the mask


def test_farm_skips_feed_the_encoder_features_to_the_decoder() -> None:
    """skips: the decoder's inputs at h/2 and h end with the encoder's h₂ and h₁ (read by forward hooks); a spec
    FARM's weights do not load into a skip FARM (strict)."""
    cfg = FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8, skips=True)
    farm = FARM(cfg).eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        farm.enc1.register_forward_hook(lambda mod, inp, out: seen.__setitem__("h1", out)),
        farm.enc2.register_forward_hook(lambda mod, inp, out: seen.__setitem__("h2", out)),
        farm.dec1.register_forward_hook(lambda mod, inp, out: seen.__setitem__("d1_in", inp[0])),
        farm.dec2.register_forward_hook(lambda mod, inp, out: seen.__setitem__("d2_in", inp[0])),
    ]
    farm(torch.randn(2, 4, 8, 8), _half_mask(2, 8), torch.tensor([3, 900]))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen["d2_in"][:, -16:], seen["h2"], atol=0, rtol=0)
    torch.testing.assert_close(seen["d1_in"][:, -8:], seen["h1"], atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        farm.load_state_dict(FARM(FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8)).state_dict())
    with pytest.raises(ValueError, match="skips must be true or false"):
        FARMConfig(skips=1)  # type: ignore[arg-type]


def test_context_farm_reads_the_background_outside_the_mask_only() -> None:
    """context: the first block reads z_t ‖ m ‖ (1 − m) ⊙ z_bg (2C + 1 channels). Changing z_bg outside the mask
    changes ẑ0_fg, inside it changes nothing; a spec FARM ignores z_bg; a context FARM refuses to run without it."""
    cfg = FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8, context=True)
    torch.manual_seed(0)
    farm = FARM(cfg).eval()
    assert farm.enc1[0].in_channels == 9
    z, m, t = torch.randn(2, 4, 8, 8), _half_mask(2, 8), torch.tensor([10, 900])
    z_bg = torch.randn(2, 4, 8, 8)
    base = farm(z, m, t, z_bg=z_bg)
    torch.testing.assert_close(farm(z, m, t, z_bg=z_bg + 5.0 * m), base, atol=0, rtol=0)
    assert not torch.equal(farm(z, m, t, z_bg=z_bg + 3.0 * (1 - m) * torch.randn_like(z_bg)), base)
    spec = FARM(FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8)).eval()
    torch.testing.assert_close(spec(z, m, t, z_bg=z_bg), spec(z, m, t), atol=0, rtol=0)
    with pytest.raises(ValueError, match="reads the background"):
        farm(z, m, t)
    with pytest.raises(ValueError, match="reads the background"):
        farm(z, m, t, z_bg=z_bg[:, :2])
    with pytest.raises(ValueError, match="context must be true or false"):
        FARMConfig(context="yes")  # type: ignore[arg-type]


def test_pixel_mask_farm_reads_the_folded_mask_where_it_reads_m() -> None:
    """mask_detail k: the first block and the decoder's last two layers read m ‖ detail (k more channels each); a
    different detail gives a different estimate; a spec FARM has none of those inputs; a bad k or detail is refused."""
    cfg = FARMConfig(widths=(8, 16, 16), time_dim=16, latent_size=8, mask_detail=4)
    torch.manual_seed(0)
    farm = FARM(cfg).eval()
    assert (farm.enc1[0].in_channels, farm.dec1[0].in_channels, farm.dec_out.in_channels) == (4 + 4, 16 + 1 + 4, 8 + 5)
    z, m, t = torch.randn(2, 4, 8, 8), _half_mask(2, 8), torch.tensor([10, 900])
    left, right = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    left[:, 0], right[:, 3] = m[:, 0], m[:, 0]  # the same cells, other pixels inside them
    assert not torch.equal(farm(z, m, t, detail=left), farm(z, m, t, detail=right))
    with pytest.raises(ValueError, match="reads the pixel mask"):
        farm(z, m, t)
    with pytest.raises(ValueError, match="reads the pixel mask"):
        farm(z, m, t, detail=left[:, :2])
    with pytest.raises(ValueError, match="mask_detail must be an integer >= 0"):
        FARMConfig(mask_detail=-1)


def test_farm_config_round_trip() -> None:
    cfg = from_dict(FARMConfig, {"widths": [8, 16, 32], "latent_size": 16, "mask_pool": "bilinear"})
    assert cfg.widths == (8, 16, 32)
    assert from_dict(FARMConfig, to_dict(cfg)) == cfg


# Adaptor


def test_adaptor_parameter_count_matches_spec() -> None:
    n = _n_params(Adaptor(AdaptorConfig()))
    assert n == 1_113_092
    assert abs(n - 1.11e6) / 1.11e6 < 0.05
    assert _n_params(Adaptor(AdaptorConfig(mode="residual_zero_init"))) == n
    assert _n_params(Adaptor(AdaptorConfig(mode="none"))) == 0


@pytest.mark.parametrize("size", [32, 16])
def test_adaptor_replace_shape_and_effect(size: int) -> None:
    torch.manual_seed(0)
    ad = Adaptor(AdaptorConfig(mode="replace"))
    eps = torch.randn(2, 4, size, size)
    out = ad(eps, _half_mask(2, size))
    assert out.shape == eps.shape
    assert (out - eps).abs().max() > 1e-2  # replaces eps; random init, so far from the identity


def test_adaptor_none_is_identity() -> None:
    ad = Adaptor(AdaptorConfig(mode="none"))
    eps = torch.randn(2, 4, 8, 8)
    assert ad(eps, torch.ones(2, 1, 8, 8)) is eps


@pytest.mark.parametrize("train", [True, False])
def test_adaptor_residual_zero_init_is_exact_identity(train: bool) -> None:
    torch.manual_seed(0)
    ad = Adaptor(AdaptorConfig(mode="residual_zero_init")).train(train)
    eps = torch.randn(2, 4, 16, 16)
    assert torch.equal(ad(eps, _half_mask(2, 16)), eps)


def test_adaptor_residual_zero_init_learns() -> None:
    torch.manual_seed(0)
    ad = Adaptor(AdaptorConfig(mode="residual_zero_init", widths=(8, 8, 8, 8, 8)))
    eps, m = torch.randn(2, 4, 8, 8), _half_mask(2, 8)
    (ad(eps, m) - torch.zeros_like(eps)).square().mean().backward()
    last = ad.net[-1]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    with torch.no_grad():
        for p in ad.parameters():
            p -= 0.1 * p.grad if p.grad is not None else 0.0
    ad.eval()
    assert (ad(eps, m) - eps).abs().max() > 1e-4


def test_adaptor_rejects_wrong_inputs() -> None:
    ad = Adaptor(AdaptorConfig())
    with pytest.raises(ValueError, match="latent_channels"):
        ad(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="mask m"):
        ad(torch.zeros(1, 4, 8, 8), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="'none', 'replace', 'residual_zero_init'"):
        AdaptorConfig(mode="residual")

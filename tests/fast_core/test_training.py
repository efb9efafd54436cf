"""Tests of the training steps: the FAST loss formula, learning on a fixed batch, frozen weights, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fast_core.models.ldm import FastLDM
from fast_core.schedulers.scheduling_aias import AIASScheduler
from fast_core.training import (
    eps_loss,
    fast_training_step,
    loss_t_weight,
    min_snr_weight,
    sample_timesteps,
    unet_training_step,
    vae_training_step,
)
from tests.helpers.tiny_models import tiny_fast_config, tiny_fast_ldm, tiny_ldmbert_components

KEYS = ["tiny/crack", "tiny/scratch", "tiny/crack", "good"]


def _batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)  # smooth images (bilinear up from 8×8), which a tiny VAE can learn
    x = F.interpolate(torch.rand(b, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False) * 2 - 1
    M = torch.zeros(b, 1, 32, 32)
    for i in range(b):
        M[i, :, 4 + 2 * i : 16 + 2 * i, 8:24] = 1
    return x, M


def _train(step, params, n: int, lr: float, part: str = "loss") -> list[float]:
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(n):
        loss, parts = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts[part])
    return losses


def _first_last(losses: list[float]) -> tuple[float, float]:
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def test_fast_loss_matches_the_formula() -> None:
    model = tiny_fast_ldm().eval()  # eval: BatchNorm uses running stats, so a second pass gives the same numbers
    x, M = _batch()
    loss, parts = fast_training_step(
        model, x, M, KEYS, torch.Generator().manual_seed(7), lambda_eps=2.0, lambda_farm=5.0
    )

    g = torch.Generator().manual_seed(7)  # replay the draws: t first, then ε
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(4, 4, 8, 8, generator=g)
    ab = AIASScheduler().alphas_cumprod[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        z0 = model.encode(x)
        m = model.latent_mask(M)
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        z0_fg = model.farm(z_t, m, t)
        z_mix = (1 - m) * z_t + m * (ab.sqrt() * z0_fg + (1 - ab).sqrt() * eps)
        eps_pred = model.adaptor(model.unet(z_mix, t, encoder_hidden_states=model.conditioner(KEYS)).sample, m)
    loss_eps = F.mse_loss(eps_pred, eps)
    loss_farm = F.mse_loss(z0_fg, m * z0)
    assert parts["loss_eps"] == pytest.approx(float(loss_eps), rel=1e-5)
    assert parts["loss_farm"] == pytest.approx(float(loss_farm), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(2.0 * float(loss_eps) + 5.0 * float(loss_farm), rel=1e-5)
    assert float(m.sum()) > 0  # the masks reach the latent, so the FARM term is not trivially m ⊙ z0 = 0


def test_context_farm_step_reads_the_clean_background_and_learns() -> None:
    """A context FARM's training input is z_t ‖ m ‖ (1 − m) ⊙ z_0: the step's FARM term equals the formula with z_bg
    = z_0, and it falls on a fixed batch as the spec FARM's does."""
    cfg = tiny_fast_config()
    cfg.farm = dataclasses.replace(cfg.farm, context=True)
    model = FastLDM.from_scratch(cfg, seed=0).eval()
    x, M = _batch()
    _, parts = fast_training_step(model, x, M, KEYS, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # replay the draws: t first, then ε
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(4, 4, 8, 8, generator=g)
    ab = AIASScheduler().alphas_cumprod[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        z0, m = model.encode(x), model.latent_mask(M)
        z0_fg = model.farm(ab.sqrt() * z0 + (1 - ab).sqrt() * eps, m, t, z_bg=z0)
    assert parts["loss_farm"] == pytest.approx(float(F.mse_loss(z0_fg, m * z0)), rel=1e-5)

    torch.manual_seed(0)
    model = FastLDM.from_scratch(cfg, seed=0).train()
    x, M = _batch(8)
    g = torch.Generator().manual_seed(0)
    losses = _train(
        lambda: fast_training_step(model, x, M, KEYS * 2, g), model.trainable_parameters(), 40, 3e-3, "loss_farm"
    )
    first, last = _first_last(losses)
    assert last < 0.2 * first, (first, last)


def test_same_seed_same_loss_bytes() -> None:
    x, M = _batch()
    a, _ = fast_training_step(tiny_fast_ldm(seed=3), x, M, KEYS, torch.Generator().manual_seed(11))
    b, _ = fast_training_step(tiny_fast_ldm(seed=3), x, M, KEYS, torch.Generator().manual_seed(11))
    c, _ = fast_training_step(tiny_fast_ldm(seed=3), x, M, KEYS, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    t1 = sample_timesteps(1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert int(t1.min()) >= 0 and int(t1.max()) <= 999 and t1.dtype == torch.long


def test_fast_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = tiny_fast_ldm(seed=0).train()
    x, M = _batch(8)
    keys = KEYS * 2
    g = torch.Generator().manual_seed(0)
    parts: list[dict[str, float]] = []

    def step() -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = fast_training_step(model, x, M, keys, g)
        parts.append(metrics)
        return loss, metrics

    losses = _train(step, model.trainable_parameters(), 40, 3e-3)
    first, last = _first_last(losses)
    # the ε term has a floor near 1 (the Adaptor sees only the frozen random UNet's output), so the total falls
    # by ~20 %; the FARM term falls by more than an order of magnitude
    assert last < 0.85 * first, (first, last)
    farm_first, farm_last = _first_last([p["loss_farm"] for p in parts])
    assert farm_last < 0.2 * farm_first, (farm_first, farm_last)


def test_fast_step_changes_only_fast_parameters(tmp_path: Path) -> None:
    # the textual-inversion variant: the frozen base includes a text encoder (LDMBert) besides the VAE and UNet
    model = FastLDM.from_base(tiny_ldmbert_components(tmp_path), tiny_fast_config()).train()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("vae.", "unet.", "conditioner."))}
    learned = {k: v.clone() for k, v in model.fast_state_dict().items() if v.is_floating_point()}
    assert "conditioner.token_vectors" in learned
    x, M = _batch()
    g = torch.Generator().manual_seed(0)
    _train(lambda: fast_training_step(model, x, M, KEYS, g), model.trainable_parameters(), 3, 1e-2)
    for name, p in model.named_parameters():
        if name.startswith(("vae.", "unet.", "conditioner.text_encoder.")):
            assert p.grad is None, name
    after = model.state_dict()
    for k, v in frozen.items():
        if k != "conditioner.token_vectors":
            assert torch.equal(after[k], v), k
    changed = [k for k, v in learned.items() if not torch.equal(after[k], v)]
    assert "conditioner.token_vectors" in changed
    assert any(k.startswith("farm.") for k in changed) and any(k.startswith("adaptor.") for k in changed)


def test_unet_step_reduces_loss() -> None:
    torch.manual_seed(0)
    model = tiny_fast_ldm(seed=1)
    params = model.configure_stage("base")
    assert {id(p) for p in model.unet.parameters()} <= {id(p) for p in params}
    model.train()
    x, _ = _batch(8)
    keys = KEYS * 2
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    losses = _train(lambda: unet_training_step(model, x, keys, g), params, 30, 2e-3)
    first, last = _first_last(losses)
    assert last < 0.8 * first, (first, last)
    assert all(torch.equal(v, model.vae.state_dict()[k]) for k, v in vae_before.items())


def test_vae_step_reduces_loss() -> None:
    torch.manual_seed(0)
    vae = tiny_fast_ldm(seed=2).vae.train()
    vae.requires_grad_(True)
    x, _ = _batch(4)
    g = torch.Generator().manual_seed(2)
    losses = _train(lambda: vae_training_step(vae, x, g, kl_weight=1e-6), list(vae.parameters()), 30, 3e-3)
    first, last = _first_last(losses)
    assert last < 0.9 * first, (first, last)
    _, parts = vae_training_step(vae, x, g)
    assert parts["loss_kl"] > 0 and parts["loss_rec"] > 0


def test_batch_size_mismatch_is_an_error() -> None:
    model = tiny_fast_ldm()
    x, M = _batch()
    with pytest.raises(ValueError, match="batch sizes differ"):
        fast_training_step(model, x, M, KEYS[:3], torch.Generator())
    with pytest.raises(ValueError, match="3 keys"):
        unet_training_step(model, x, KEYS[:3], torch.Generator())


# ------------------------------------------------------------------------------------ foreground-weighted ε-loss
def test_eps_loss_weights_anomaly_cells() -> None:
    g = torch.Generator().manual_seed(3)
    pred, eps = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    m = torch.zeros(2, 1, 6, 6)
    m[:, :, 1:3, 2:5] = 1
    assert torch.equal(eps_loss(pred, eps, m, 0.0), F.mse_loss(pred, eps))  # λ_fg = 0: FAST_SPEC §6 exactly
    assert torch.equal(eps_loss(pred, eps, None, 4.0), F.mse_loss(pred, eps))  # no mask: the plain mean
    sq = (pred - eps).pow(2)
    fg, bg = sq[m.expand_as(sq) > 0], sq[m.expand_as(sq) == 0]
    want = (5.0 * fg.sum() + bg.sum()) / (5.0 * fg.numel() + bg.numel())  # w = 1 + 4·m
    assert float(eps_loss(pred, eps, m, 4.0)) == pytest.approx(float(want), rel=1e-6)


def test_fg_weight_shifts_the_loss_to_the_mask() -> None:
    model = tiny_fast_ldm().eval()
    x, M = _batch()
    plain, _ = fast_training_step(model, x, M, KEYS, torch.Generator().manual_seed(7))
    same, _ = fast_training_step(model, x, M, KEYS, torch.Generator().manual_seed(7), fg_weight=0.0)
    weighted, parts = fast_training_step(model, x, M, KEYS, torch.Generator().manual_seed(7), fg_weight=9.0)
    assert torch.equal(plain, same)
    assert float(weighted.detach()) != pytest.approx(float(plain.detach()))
    g = torch.Generator().manual_seed(7)  # replay: the weighted ε term is eps_loss over the same draws
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(4, 4, 8, 8, generator=g)
    ab = AIASScheduler().alphas_cumprod[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        z0, m = model.encode(x), model.latent_mask(M)
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        z0_fg = model.farm(z_t, m, t)
        z_mix = (1 - m) * z_t + m * (ab.sqrt() * z0_fg + (1 - ab).sqrt() * eps)
        eps_pred = model.predict_eps(z_mix, t, KEYS, m)
    assert parts["loss_eps"] == pytest.approx(float(eps_loss(eps_pred, eps, m, 9.0)), rel=1e-5)

    base, _ = unet_training_step(model, x, KEYS, torch.Generator().manual_seed(5))
    w_base, _ = unet_training_step(model, x, KEYS, torch.Generator().manual_seed(5), M=M, fg_weight=9.0)
    assert float(w_base.detach()) != pytest.approx(float(base.detach()))
    with pytest.raises(ValueError, match="needs one mask M per image"):
        unet_training_step(model, x, KEYS, torch.Generator(), fg_weight=1.0)


def test_inpaint_unet_step_needs_masks_and_learns() -> None:
    torch.manual_seed(0)
    model = tiny_fast_ldm(seed=1, inpaint=True)
    params = model.configure_stage("base")
    model.train()
    x, M = _batch(8)
    keys = KEYS * 2
    g = torch.Generator().manual_seed(1)
    with pytest.raises(ValueError, match="inpaint UNet needs one mask M per image"):
        unet_training_step(model, x, keys, g)
    losses = _train(lambda: unet_training_step(model, x, keys, g, M=M), params, 30, 2e-3)
    first, last = _first_last(losses)
    assert last < 0.8 * first, (first, last)
    fast_params = model.configure_stage("fast")  # the FAST step feeds the clean latent as the UNet's background
    model.zero_grad(set_to_none=True)
    loss, _ = fast_training_step(model, x, M, keys, torch.Generator().manual_seed(2), fg_weight=5.0)
    loss.backward()
    assert all(p.grad is not None for p in model.adaptor.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.unet.parameters()) and len(fast_params) > 0


def test_a_pixel_mask_unet_trains_on_the_pixels_of_its_masks() -> None:
    """``inpaint_px``: the base and FAST steps feed M itself, folded into the latent grid (f² more input channels),
    so masks with the same latent cells but other pixels give other losses, and those channels get gradients."""
    model = tiny_fast_ldm(seed=1, inpaint="inpaint_px")
    model.configure_stage("base")
    model.train()
    x, M = _batch(4)
    keys = KEYS
    loss, _ = unet_training_step(model, x, keys, torch.Generator().manual_seed(1), M=M)
    loss.backward()
    c = model.latent_channels
    assert model.unet.conv_in.weight.grad[:, 2 * c + 1 :].abs().sum() > 0  # the folded mask is an input
    same_cells = M.clone()
    same_cells[:, :, 10, 12] = 0  # one pixel fewer, inside a cell that stays masked
    assert torch.equal(model.latent_mask(M), model.latent_mask(same_cells))
    with torch.no_grad():
        a, _ = unet_training_step(model, x, keys, torch.Generator().manual_seed(1), M=M)
        b, _ = unet_training_step(model, x, keys, torch.Generator().manual_seed(1), M=same_cells)
        assert float(a) != pytest.approx(float(b))
        model.configure_stage("fast")
        fa, _ = fast_training_step(model, x, M, keys, torch.Generator().manual_seed(2))
        fb, _ = fast_training_step(model, x, same_cells, keys, torch.Generator().manual_seed(2))
        assert float(fa) != pytest.approx(float(fb))


def test_a_v_prediction_base_step_is_the_v_loss_and_learns() -> None:
    torch.manual_seed(0)
    model = tiny_fast_ldm(seed=1, prediction="v_prediction").eval()
    x, _ = _batch(4)
    loss, _ = unet_training_step(model, x, KEYS, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws: t first, then ε
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(4, 4, 8, 8, generator=g)
    with torch.no_grad():
        z0 = model.encode(x).float()
        ab = AIASScheduler().alphas_cumprod[t].view(-1, 1, 1, 1).float()
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        v_hat = model.unet(z_t, t, encoder_hidden_states=model.conditioner(KEYS)).sample
    v = ab.sqrt() * eps - (1 - ab).sqrt() * z0  # the v target
    torch.testing.assert_close(loss.detach(), F.mse_loss(v_hat, v), rtol=1e-4, atol=1e-6)
    # min-SNR-γ gives the same ε weight in both parameterisations (Hang et al. 2023)
    tt = torch.tensor([0, 100, 999])
    assert torch.equal(loss_t_weight(tt, 5.0, "v_prediction"), min_snr_weight(tt, 5.0))
    assert loss_t_weight(tt, None, "epsilon") is None
    params = model.configure_stage("base")
    model.train()
    x, _ = _batch(8)
    losses = _train(lambda: unet_training_step(model, x, KEYS * 2, g), params, 30, 2e-3)
    first, last = _first_last(losses)
    assert last < 0.8 * first, (first, last)

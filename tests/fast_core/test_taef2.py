"""TAEF2, the pretrained first stage: strict loading, the licence travels, pickles with code are refused, and the
architecture really fits the published weights (reconstruction of real images, independent of the loading code).

The fit check: an autoencoder only reconstructs real photographs at 35+ dB when every layer computes what it was
trained to compute. The same weights in a module with two blocks exchanged (same shapes, so a strict load still
passes) fall far below that, so the PSNR floor tests the architecture, not just the key names.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_core.models.base import load_base_model, save_base_model
from fast_core.models.ldm import FastLDM, tiny_config, with_taef2
from fast_core.models.taef2 import TAEF2, TAEF2Config
from tests.helpers.tiny_models import write_taef2_folder

SHARED = Path(__file__).resolve().parents[3] / "shared"
PUBLISHED = SHARED / "models" / "taef2"


@pytest.fixture(scope="module")
def published() -> Path:
    if not (PUBLISHED / "taef2_encoder.pth").is_file():
        pytest.skip(f"the published TAEF2 weights are not in {PUBLISHED}")
    return PUBLISHED


def real_crops(n: int = 8) -> torch.Tensor:
    """n 128² grey crops of real Magnetic Tile normal images in [−1, 1]: (n, 1, 128, 128)."""
    paths = sorted((SHARED / "data" / "magnetic_tile" / "magnetic_tile" / "train" / "good").glob("*.png"))[:n]
    if len(paths) < n:
        pytest.skip("the real Magnetic Tile images are not there")
    crops = []
    for p in paths:
        a = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        a = np.pad(a, ((0, max(0, 128 - a.shape[0])), (0, max(0, 128 - a.shape[1]))), mode="reflect")[:128, :128]
        crops.append(a)
    return torch.from_numpy(np.stack(crops))[:, None] / 127.5 - 1.0


def psnr(model: FastLDM | TAEF2, x: torch.Tensor) -> float:
    """Median PSNR (dB, images in [0, 1]) of decode(encode(x))."""
    with torch.no_grad():
        if isinstance(model, TAEF2):
            rec = model.decode_unscaled(model.encode_unscaled(x))
        else:
            rec = model.decode(model.encode(x))
    mse = ((rec - x) / 2).pow(2).mean(dim=(1, 2, 3))
    return float(torch.median(10 * torch.log10(1 / mse)))


def test_published_weights_reconstruct_real_images_and_swapped_blocks_do_not(published: Path) -> None:
    x = real_crops()
    model = TAEF2.from_folder(published, TAEF2Config(image_channels=1))
    assert sum(p.numel() for p in model.parameters()) == 1_338_528 + 1_338_499
    assert not any(p.requires_grad for p in model.parameters())
    good = psnr(model, x)
    assert good > 33.0, good  # 36–40 dB measured on these crops
    with torch.no_grad():
        z = model.encode_unscaled(x)
    assert z.shape == (8, 32, 16, 16) and 0.5 < float(z.std()) < 0.9  # the README's 0.71

    swapped = TAEF2.from_folder(published, TAEF2Config(image_channels=1))
    enc = swapped.encoder
    state3, state4 = enc[3].state_dict(), enc[7].state_dict()
    enc[3].load_state_dict(state4, strict=True)
    enc[7].load_state_dict(state3, strict=True)
    assert psnr(swapped, x) < good - 10


def test_grey_and_rgb_round_trip_shapes_and_range(tmp_path: Path) -> None:
    folder = write_taef2_folder(tmp_path / "taef2")
    for channels in (1, 3):
        model = TAEF2.from_folder(folder, TAEF2Config(image_channels=channels))
        x = torch.rand(2, channels, 32, 48) * 2 - 1
        with torch.no_grad():
            z = model.encode_unscaled(x)
            rec = model.decode_unscaled(z)
        assert z.shape == (2, 32, 4, 6) and rec.shape == x.shape
        assert rec.min() >= -1 and rec.max() <= 1


def test_saved_copy_carries_licence_and_gives_same_outputs(tmp_path: Path) -> None:
    model = TAEF2.from_folder(write_taef2_folder(tmp_path / "src"), TAEF2Config(image_channels=3, scaling_factor=1.3))
    copy = TAEF2.from_folder(model.save(tmp_path / "copy"))
    assert (tmp_path / "copy" / "LICENSE").read_text() == (tmp_path / "src" / "LICENSE").read_text()
    assert copy.config == model.config and not list((tmp_path / "copy").glob("*.pth"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(copy.encode_unscaled(x), model.encode_unscaled(x))


def test_missing_licence_is_refused(tmp_path: Path) -> None:
    folder = write_taef2_folder(tmp_path / "taef2")
    (folder / "LICENSE").unlink()
    with pytest.raises(FileNotFoundError, match="LICENSE is missing; the weights' licence must travel"):
        TAEF2.from_folder(folder)


def test_pickle_carrying_code_is_refused_and_never_run(tmp_path: Path) -> None:
    folder = write_taef2_folder(tmp_path / "taef2")
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):  # unpickling would call os.system
            return (os.system, (f"touch {marker}",))

    (folder / "taef2_encoder.pth").write_bytes(pickle.dumps({"0.weight": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="not a plain tensor file .* it was not executed"):
        TAEF2.from_folder(folder)
    assert not marker.exists()


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    folder = write_taef2_folder(tmp_path / "taef2")
    state = torch.load(folder / "taef2_decoder.pth", weights_only=True)
    state["99.weight"] = state.pop("19.weight")
    torch.save(state, folder / "taef2_decoder.pth")
    with pytest.raises(ValueError, match=r"decoder\) does not match the TAEF2 layers; missing \['19.weight'\]"):
        TAEF2.from_folder(folder)


def test_fast_ldm_on_taef2_encodes_saves_and_reloads(tmp_path: Path) -> None:
    cfg = with_taef2(tiny_config(keys=("good", "tiny/crack"), image_channels=1), image_size=32)
    assert cfg.latent_channels == 32 and cfg.farm.latent_size == cfg.unet.sample_size == 4
    first = TAEF2.from_folder(write_taef2_folder(tmp_path / "taef2"))
    cfg.taef2.scaling_factor = 1.4
    model = FastLDM.from_scratch(cfg, first_stage=first, seed=0)
    assert model.downsample_factor == 8 and model.image_channels == 1 and model.scaling_factor == 1.4
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert torch.allclose(z, first.encode_unscaled(x) * 1.4)
        assert model.decode(z).shape == x.shape
        m = model.latent_mask(torch.ones(2, 1, 32, 32))
        assert model.predict_eps(z, torch.tensor(10), ["good", "tiny/crack"], m).shape == z.shape

    base = save_base_model(model.base_components(), tmp_path / "base")
    assert (base / "taef2" / "LICENSE").is_file() and not (base / "vqvae").exists()
    model.save_fast(tmp_path / "fast")
    loaded = FastLDM.load_fast(tmp_path / "fast", load_base_model(base))
    assert loaded.config.first_stage == "taef2" and loaded.scaling_factor == 1.4
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), z)


def test_a_latent_shift_centres_encode_and_decode_inverts_it_through_save_and_reload(tmp_path: Path) -> None:
    cfg = with_taef2(tiny_config(keys=("good", "tiny/crack"), image_channels=1), image_size=32)
    mu = tuple(float(v) for v in torch.linspace(-1.0, 1.0, 32))
    cfg.taef2 = dataclasses.replace(cfg.taef2, scaling_factor=1.4, latent_shift=mu)
    first = TAEF2.from_folder(write_taef2_folder(tmp_path / "taef2"))
    model = FastLDM.from_scratch(cfg, first_stage=first, seed=0)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    mu_t = torch.tensor(mu).view(1, -1, 1, 1)
    with torch.no_grad():
        e = first.encode_unscaled(x)
        z = model.encode(x)
        assert torch.allclose(z, (e - mu_t) * 1.4)  # z = s · (E(x) − μ)
        assert torch.allclose(model.decode(z), first.decode_unscaled(e), atol=1e-6)  # D(z / s + μ) = D(E(x))
        # the denoiser's "don't know" ẑ0 = 0 decodes as D(μ), not D(0)
        zero = torch.zeros(1, 32, 4, 4)
        assert torch.allclose(model.decode(zero), first.decode_unscaled(zero + mu_t), atol=1e-6)
        assert not torch.allclose(model.decode(zero), first.decode_unscaled(zero), atol=1e-3)

    base = save_base_model(model.base_components(), tmp_path / "base")
    loaded = load_base_model(base)
    assert loaded.vae.config.latent_shift == mu
    model.save_fast(tmp_path / "fast")
    with torch.no_grad():
        assert torch.equal(FastLDM.load_fast(tmp_path / "fast", loaded).encode(x), z)


@pytest.mark.parametrize("shift", [(0.0,) * 31, (float("nan"),) * 32], ids=["one channel short", "not finite"])
def test_a_latent_shift_needs_one_finite_value_per_channel(shift: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="TAEF2Config.latent_shift must be 32 finite numbers"):
        TAEF2Config(latent_shift=shift)


def test_taef2_config_without_weights_is_an_error() -> None:
    cfg = with_taef2(tiny_config(), image_size=32)
    with pytest.raises(ValueError, match="needs the loaded TAEF2 weights"):
        FastLDM.from_scratch(cfg)
    with pytest.raises(ValueError, match="image_size must be a multiple of 32"):
        with_taef2(tiny_config(), image_size=40)

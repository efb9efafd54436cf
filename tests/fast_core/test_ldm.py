"""Tests of the FAST LDM wrapper and base-model I/O: round trips, corrupt files, shapes, latent masks, presets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from fast_core.configbase import from_dict, to_dict
from fast_core.models.base import load_base_model, save_base_model
from fast_core.models.farm import inpaint_input
from fast_core.models.ldm import FastLDM, FastModelConfig, full_config, model_preset
from fast_core.schedulers.scheduling_aias import AIASScheduler
from tests.helpers.tiny_models import (
    TINY_KEYS,
    tiny_base_components,
    tiny_base_model_dir,
    tiny_fast_config,
    tiny_fast_ldm,
    tiny_ldmbert_components,
)


def _images(b: int = 2, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _square_mask(b: int = 2, size: int = 32) -> torch.Tensor:
    M = torch.zeros(b, 1, size, size)
    M[:, :, 8:20, 12:24] = 1
    return M


def _rewrapped(model: FastLDM, config: FastModelConfig, scheduler_config: dict | None = None) -> FastLDM:
    """``model``'s parts wrapped again under another ``config`` (the constructor's consistency checks run)."""
    return FastLDM(
        vae=model.vae,
        unet=model.unet,
        conditioner=model.conditioner,
        farm=model.farm,
        adaptor=model.adaptor,
        config=config,
        scheduler_config=scheduler_config,
    )


@torch.no_grad()
def _base_outputs(components, tokens=None) -> dict[str, torch.Tensor]:
    x = _images()
    z = components.vae.encode(x).latent_dist.mean  # (2, 4, 8, 8)
    t = torch.tensor([3, 700])
    if components.prompt_encoder is not None:
        context = components.prompt_encoder(["good", "tiny/crack"])
    else:
        context = components.text_encoder(tokens)[0]
    return {
        "z": z,
        "x_rec": components.vae.decode(z).sample,
        "context": context,
        "eps": components.unet(z, t, encoder_hidden_states=context).sample,
    }


def test_scratch_base_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    components = tiny_base_components(seed=1)
    path = save_base_model(components, tmp_path / "base")
    index = json.loads((path / "model_index.json").read_text())
    assert index["prompt_encoder"] == ["fast_core", "LearnedPromptEncoder"] and "bert" not in index
    assert (path / "prompt_encoder" / "model.safetensors").is_file()
    loaded = load_base_model(path)
    assert loaded.kind == "scratch"
    before, after = _base_outputs(components), _base_outputs(loaded)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # a different seed gives different weights, so the comparison above can fail
    other = _base_outputs(tiny_base_components(seed=2))
    assert not torch.equal(before["eps"], other["eps"])


def test_ldmbert_base_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    components = tiny_ldmbert_components(tmp_path, seed=0)
    path = save_base_model(components, tmp_path / "base")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "LDMTextToImagePipeline"
    assert index["bert"] == ["latent_diffusion", "LDMBertModel"] and index["tokenizer"][1] == "BertTokenizer"
    loaded = load_base_model(path)
    assert loaded.kind == "pretrained_text"
    ids = components.tokenizer("Anomaly defect crack")["input_ids"]
    assert ids == loaded.tokenizer("Anomaly defect crack")["input_ids"]
    assert 1 not in ids  # no [UNK]: the vocabulary survived the round trip
    tokens = torch.tensor([ids, ids])
    before, after = _base_outputs(components, tokens), _base_outputs(loaded, tokens)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # the FAST model on top: same textual-inversion conditioner from the directory and from the components
    cfg = tiny_fast_config()
    a = FastLDM.from_base(components, cfg, seed=5).eval()
    b = FastLDM.from_base(path, cfg, seed=5).eval()
    keys = ["tiny/crack", "good"]
    assert a.conditioner(keys).shape == (2, 16, 16)
    assert torch.equal(a.conditioner(keys), b.conditioner(keys))


def test_save_fast_load_fast_round_trip(tmp_path: Path) -> None:
    model = tiny_fast_ldm(seed=0)
    model.train()
    with torch.no_grad():  # move every FAST tensor away from its seed-0 init, and update the BN running stats
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        z = torch.randn(2, 4, 8, 8)
        m = torch.zeros(2, 1, 8, 8)
        m[:, :, 2:5, 2:6] = 1
        model.farm(z, m, torch.tensor([10, 500]))
        model.adaptor(z, m)
    model.eval()
    base = save_base_model(model.base_components(), tmp_path / "base")
    model.save_fast(tmp_path / "fast")
    assert json.loads((tmp_path / "fast" / "fast_config.json").read_text())["mask_downsample"] == "bilinear"

    loaded = FastLDM.load_fast(tmp_path / "fast", base).eval()
    fresh = tiny_fast_ldm(seed=0).eval()
    t = torch.tensor([10, 500])
    keys = ["tiny/crack", "good"]
    with torch.no_grad():
        expected = model.predict_eps(z, t, keys, m)
        assert torch.equal(loaded.predict_eps(z, t, keys, m), expected)
        assert torch.equal(loaded.farm(z, m, t), model.farm(z, m, t))
        assert not torch.allclose(fresh.predict_eps(z, t, keys, m), expected)
    state = model.fast_state_dict()
    assert any(k.startswith("conditioner.") for k in state)
    assert not any(k.startswith(("vae.", "unet.")) for k in state)


def test_load_fast_names_mismatched_tensors(tmp_path: Path) -> None:
    model = tiny_fast_ldm()
    base = save_base_model(model.base_components(), tmp_path / "base")
    model.save_fast(tmp_path / "fast")
    gray_base = save_base_model(tiny_base_components(image_channels=1), tmp_path / "gray_base")
    with pytest.raises(ValueError, match="trained on a base with vae"):
        FastLDM.load_fast(tmp_path / "fast", gray_base)
    cfg_path = tmp_path / "fast" / "fast_config.json"
    data = json.loads(cfg_path.read_text())
    data["adaptor"]["widths"] = [8, 16, 16, 16, 12]
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"adaptor\.net\.12\.weight"):
        FastLDM.load_fast(tmp_path / "fast", base)
    data["adaptor"]["bogus"] = 1
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bogus"):
        FastLDM.load_fast(tmp_path / "fast", base)


def test_truncated_safetensors_is_named(tmp_path: Path) -> None:
    path = tiny_base_model_dir(tmp_path)
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.safetensors"):
        load_base_model(path)


def test_missing_subfolder_and_files_are_named(tmp_path: Path) -> None:
    path = tiny_base_model_dir(tmp_path)
    shutil.rmtree(path / "prompt_encoder")
    with pytest.raises(FileNotFoundError, match="prompt_encoder"):
        load_base_model(path)
    shutil.rmtree(path / "vqvae")
    with pytest.raises(FileNotFoundError, match="vqvae"):
        load_base_model(path)
    (path / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_base_model(path)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    path = tiny_base_model_dir(tmp_path)
    (path / "vqvae" / "diffusion_pytorch_model.safetensors").unlink()
    (path / "vqvae" / "diffusion_pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="(?i)convert them to safetensors"):
        load_base_model(path)


def test_incompatible_noise_schedule_is_refused(tmp_path: Path) -> None:
    path = tiny_base_model_dir(tmp_path)
    cfg_path = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["beta_end"] = 0.02
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="beta_end"):
        load_base_model(path)


def test_a_base_that_predicts_neither_eps_nor_v_is_refused(tmp_path: Path) -> None:
    path = tiny_base_model_dir(tmp_path)
    cfg_path = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["prediction_type"] == "epsilon"
    cfg["prediction_type"] = "sample"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'prediction_type': 'sample'"):
        load_base_model(path)


@pytest.mark.parametrize("channels", [1, 3])
def test_encode_decode_shapes(channels: int) -> None:
    model = tiny_fast_ldm(image_channels=channels).eval()
    assert model.image_channels == channels and model.downsample_factor == 4
    x = _images(3, channels)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (3, 4, 8, 8)
        assert torch.equal(z, model.encode(x))  # the posterior mean: deterministic
        expected = model.vae.encode(x).latent_dist.mean * model.scaling_factor
        assert torch.allclose(z, expected)
        x_rec = model.decode(z)
    assert x_rec.shape == (3, channels, 32, 32)
    assert float(x_rec.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="image_channels"):
        model.encode(_images(1, 4 - channels))
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(_images(1, channels, size=30))


def test_latent_mask_thin_line_bilinear_vs_any() -> None:
    model = tiny_fast_ldm()
    M = torch.zeros(1, 1, 32, 32)
    M[:, :, :, 8] = 1  # a one-pixel vertical line on a cell boundary (column 8 = 2·f)
    assert float(model.latent_mask(M, "bilinear").sum()) == 0.0
    any_mask = model.latent_mask(M, "any")
    assert any_mask.shape == (1, 1, 8, 8)
    assert float(any_mask.sum()) == 8.0 and float(any_mask[0, 0, :, 2].sum()) == 8.0
    square = _square_mask(1)  # rows 8..19, cols 12..23: 3×3 cells exactly
    for mode in ("bilinear", "any"):
        m = model.latent_mask(square, mode)
        assert float(m.sum()) == 9.0 and float(m[0, 0, 2:5, 3:6].sum()) == 9.0
    assert torch.equal(model.latent_mask(M), model.latent_mask(M, "bilinear"))  # the config default
    with pytest.raises(ValueError, match="'bilinear', 'any'"):
        model.latent_mask(M, "nearest")


def test_stage_parameters() -> None:
    model = tiny_fast_ldm()
    fast = {id(p) for p in model.trainable_parameters()}
    expected = {id(p) for p in [*model.conditioner.parameters(), *model.farm.parameters(), *model.adaptor.parameters()]}
    assert fast == expected
    assert not any(p.requires_grad for p in [*model.vae.parameters(), *model.unet.parameters()])
    base = {id(p) for p in model.configure_stage("base")}
    assert base == {id(p) for p in [*model.conditioner.parameters(), *model.unet.parameters()]}
    assert model.configure_stage("frozen") == []
    with pytest.raises(ValueError, match="'fast', 'base', 'frozen'"):
        model.configure_stage("all")


def test_predict_eps_checks_keys() -> None:
    model = tiny_fast_ldm().eval()
    z, m = torch.randn(2, 4, 8, 8), torch.zeros(2, 1, 8, 8)
    assert model.predict_eps(z, torch.tensor([1, 2]), ["good", "tiny/scratch"], m).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="2 latents"):
        model.predict_eps(z, torch.tensor([1, 2]), ["good"], m)
    with pytest.raises(ValueError, match="known keys"):
        model.predict_eps(z, torch.tensor([1, 2]), ["good", "tiny/dent"], m)


def test_presets_and_config_round_trip() -> None:
    for name in ("tiny", "cpu_small", "full"):
        cfg = model_preset(name, keys=list(TINY_KEYS))
        assert from_dict(FastModelConfig, to_dict(cfg)) == cfg
        assert cfg.prompt_encoder.keys == list(TINY_KEYS) == cfg.textual_inversion.keys
    small = model_preset("cpu_small")
    assert 128 // small.vae.downsample_factor == small.farm.latent_size == small.unet.sample_size == 32
    assert small.prompt_encoder.dim == small.unet.cross_attention_dim
    full = full_config()
    assert full.unet.block_out_channels == (320, 640, 1280, 1280) and full.unet.cross_attention_dim == 1280
    assert full.vae.block_out_channels == (128, 256, 512, 512) and full.vae.scaling_factor == 0.18215
    assert 256 // full.vae.downsample_factor == full.farm.latent_size == 32
    with pytest.raises(ValueError, match="valid presets: tiny, cpu_small, full"):
        model_preset("huge")
    with pytest.raises(ValueError, match="mask_downsample"):
        from_dict(FastModelConfig, {"mask_downsample": "nearest"})
    with pytest.raises(ValueError, match="latent_channels"):
        from_dict(FastModelConfig, {"farm": {"latent_channels": 3}})


@torch.no_grad()
def test_inpaint_unet_sees_the_mask_and_the_background_outside_it(tmp_path: Path) -> None:
    model = tiny_fast_ldm(seed=0, inpaint=True).eval()
    assert model.inpaint and model.unet.config.in_channels == 2 * 4 + 1
    z, z_bg = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:5, 2:6] = 1
    t, keys = torch.tensor([10, 500]), ["tiny/crack", "good"]
    eps = model.predict_eps(z, t, keys, m, z_bg)
    assert eps.shape == z.shape
    inside_changed = z_bg + 5.0 * m  # the background under the mask is not an input ...
    assert torch.equal(model.predict_eps(z, t, keys, m, inside_changed), eps)
    outside_changed = z_bg + 5.0 * (1 - m)  # ... what surrounds it is
    assert not torch.allclose(model.predict_eps(z, t, keys, m, outside_changed), eps)
    assert not torch.allclose(model.predict_eps(z, t, keys, torch.zeros_like(m), z_bg), eps)
    with pytest.raises(ValueError, match="inpaint UNet needs the latent mask"):
        model.unet_eps(z, t, keys)
    # the conditioning travels with the saved base: a loaded UNet with 2C + 1 inputs is an inpaint one again
    base = save_base_model(model.base_components(), tmp_path / "base")
    model.save_fast(tmp_path / "fast")
    loaded = FastLDM.load_fast(tmp_path / "fast", base).eval()
    assert loaded.inpaint and torch.equal(loaded.predict_eps(z, t, keys, m, z_bg), eps)
    plain = tiny_fast_ldm(seed=0).eval()
    assert not plain.inpaint and plain.unet.config.in_channels == 4
    assert torch.equal(plain.predict_eps(z, t, keys, m, z_bg), plain.predict_eps(z, t, keys, m))  # z_bg unused


def test_a_unet_whose_inputs_disagree_with_the_config_is_refused() -> None:
    plain = tiny_base_components(seed=0)
    for conditioning, width in (("inpaint", 9), ("inpaint_px", 9 + 4 * 4)):
        with pytest.raises(
            ValueError, match=f"with conditioning='{conditioning}' on 4-channel latents at 1/4 it must be {width}"
        ):
            FastLDM(
                vae=plain.vae,
                unet=plain.unet,
                conditioner=plain.prompt_encoder,
                farm=tiny_fast_ldm().farm,
                adaptor=tiny_fast_ldm().adaptor,
                config=tiny_fast_config(inpaint=conditioning),
            )


@torch.no_grad()
def test_a_v_prediction_unet_is_read_as_the_eps_it_implies_and_travels_with_the_base(tmp_path: Path) -> None:
    model = tiny_fast_ldm(seed=0, inpaint=True, prediction="v_prediction").eval()
    assert model.config.unet.prediction == "v_prediction"
    assert model.base_components().scheduler_config["prediction_type"] == "v_prediction"
    z, z_bg = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:5, 2:6] = 1
    t, keys = torch.tensor([999, 40]), ["tiny/crack", "good"]
    v = model.unet(inpaint_input(z, m, z_bg), t, encoder_hidden_states=model.conditioner(keys)).sample
    ab = AIASScheduler().alphas_cumprod[t].view(-1, 1, 1, 1).float()
    eps = model.unet_eps(z, t, keys, m, z_bg)
    assert eps.dtype == torch.float32
    torch.testing.assert_close(eps, (1 - ab).sqrt() * z + ab.sqrt() * v)  # ε̂ = √(1−ᾱ_t) z_t + √ᾱ_t v̂
    assert not torch.allclose(eps, v)
    # the prediction type is the saved base's scheduler prediction_type: a loaded model reads v again
    base = save_base_model(model.base_components(), tmp_path / "base")
    assert json.loads((base / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    model.save_fast(tmp_path / "fast")
    loaded = FastLDM.load_fast(tmp_path / "fast", base).eval()
    assert loaded.config.unet.prediction == "v_prediction"
    assert torch.equal(loaded.predict_eps(z, t, keys, m, z_bg), model.predict_eps(z, t, keys, m, z_bg))
    # an ε model of the same weights returns the network's output as it is
    plain = tiny_fast_ldm(seed=0, inpaint=True).eval()
    assert torch.equal(plain.unet_eps(z, t, keys, m, z_bg), v)
    with pytest.raises(ValueError, match="config.unet.prediction is 'epsilon' but the scheduler config says"):
        _rewrapped(model, tiny_fast_config(inpaint=True), scheduler_config=model.scheduler_config)


@torch.no_grad()
def test_pixel_mask_unet_knows_where_inside_a_cell_the_defect_lies(tmp_path: Path) -> None:
    model = tiny_fast_ldm(seed=0, inpaint="inpaint_px").eval()
    f = model.downsample_factor
    assert model.inpaint and model.pixel_mask_input and model.unet.config.in_channels == 2 * 4 + 1 + f * f
    z, z_bg = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    left, right = torch.zeros(2, 1, 8 * f, 8 * f), torch.zeros(2, 1, 8 * f, 8 * f)
    left[:, :, 2 * f : 5 * f, 3 * f] = 1  # a one-pixel line at the left edge of latent column 3 ...
    right[:, :, 2 * f : 5 * f, 4 * f - 1] = 1  # ... and at its right edge: the same latent mask
    m = model.latent_mask(left, "any")
    assert torch.equal(m, model.latent_mask(right, "any")) and m.sum() == 2 * 3
    t, keys = torch.tensor([10, 500]), ["tiny/crack", "good"]
    eps = model.predict_eps(z, t, keys, m, z_bg, left)
    assert eps.shape == z.shape
    assert not torch.allclose(model.predict_eps(z, t, keys, m, z_bg, right), eps)  # the pixels are an input
    with pytest.raises(ValueError, match="reads the pixel mask .* needs M"):
        model.predict_eps(z, t, keys, m, z_bg)
    with pytest.raises(ValueError, match="reads the pixel mask .* needs M"):
        model.unet_eps(z, t, keys, m, z_bg, left[:, :, :f])
    # the conditioning travels with the saved base (in = 2C + 1 + f² channels), checked against the first stage's f
    base = save_base_model(model.base_components(), tmp_path / "base")
    model.save_fast(tmp_path / "fast")
    loaded = FastLDM.load_fast(tmp_path / "fast", base).eval()
    assert loaded.pixel_mask_input and torch.equal(loaded.predict_eps(z, t, keys, m, z_bg, left), eps)
    assert not tiny_fast_ldm(seed=0, inpaint=True).pixel_mask_input


@torch.no_grad()
def test_a_pixel_mask_farm_gets_the_folded_mask_from_the_model() -> None:
    cfg = tiny_fast_config(inpaint="inpaint_px")
    f = FastLDM.from_scratch(cfg).downsample_factor
    cfg.farm = dataclasses.replace(cfg.farm, mask_detail=f * f)
    model = FastLDM.from_scratch(cfg, seed=0).eval()
    z, t, keys = torch.randn(1, 4, 8, 8), torch.tensor([500]), ["tiny/crack"]
    line, moved = torch.zeros(1, 1, 8 * f, 8 * f), torch.zeros(1, 1, 8 * f, 8 * f)
    line[..., 2 * f : 5 * f, 3 * f] = 1
    moved[..., 2 * f : 5 * f, 4 * f - 1] = 1  # the same latent cells
    m = model.latent_mask(line, "any")
    assert not torch.equal(model.farm_estimate(z, m, t, keys, z, line), model.farm_estimate(z, m, t, keys, z, moved))
    with pytest.raises(ValueError, match="reads the pixel mask .* needs M"):
        model.farm_estimate(z, m, t, keys, z)
    cfg.farm = dataclasses.replace(cfg.farm, mask_detail=3)
    with pytest.raises(ValueError, match=f"FARM reads 3 folded pixel-mask channels; at 1/{f} it must be 0 or {f * f}"):
        FastLDM.from_scratch(cfg)


@torch.no_grad()
def test_a_key_embedding_unet_gets_the_key_in_its_timestep_embedding_and_travels_with_the_base(
    tmp_path: Path,
) -> None:
    """UNetConfig.key_embedding: num_class_embeds = number of keys, class label = the key's row in the prompt encoder;
    the saved base's UNet config carries it, so a loaded model reads the key the same way."""
    cfg = tiny_fast_config(inpaint=True)
    cfg.unet = dataclasses.replace(cfg.unet, key_embedding=True)
    model = FastLDM.from_scratch(cfg, seed=0).eval()
    assert model.unet.config.num_class_embeds == len(TINY_KEYS)
    z, z_bg = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:5, 2:6] = 1
    t, keys = torch.tensor([500, 500]), ["tiny/crack", "good"]
    context = model.conditioner(keys)
    labels = torch.tensor(model.conditioner.key_indices(keys))
    direct = model.unet(inpaint_input(z, m, z_bg), t, encoder_hidden_states=context, class_labels=labels).sample
    torch.testing.assert_close(model.unet_eps(z, t, keys, m, z_bg), direct)
    # only the class label differs: the same tokens with another key's embedding give another ε̂
    swapped = model.unet(
        inpaint_input(z, m, z_bg), t, encoder_hidden_states=context, class_labels=labels.flip(0)
    ).sample
    assert not torch.allclose(swapped, direct)
    base = save_base_model(model.base_components(), tmp_path / "base")
    assert json.loads((base / "unet" / "config.json").read_text())["num_class_embeds"] == len(TINY_KEYS)
    model.save_fast(tmp_path / "fast")
    loaded = FastLDM.load_fast(tmp_path / "fast", base).eval()
    assert loaded.config.unet.key_embedding
    assert torch.equal(loaded.unet_eps(z, t, keys, m, z_bg), direct)
    # a config that disagrees with the UNet is refused by name
    with pytest.raises(ValueError, match="key_embedding is False but the UNet has num_class_embeds=3"):
        _rewrapped(model, tiny_fast_config(inpaint=True))
    with pytest.raises(ValueError, match="key_embedding must be true or false"):
        dataclasses.replace(cfg.unet, key_embedding="yes")

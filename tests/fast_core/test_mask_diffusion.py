"""The mask diffusion model: shapes, config checks, frames, exact save/load, determinism, keys, and learning a toy
set."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fast_core.masks.diffusion import (
    MaskDiffusionConfig,
    MaskDiffusionModel,
    mask_training_step,
    sample_masks,
)

KEYS = ("toy/disc", "toy/bar")
S = 16


def _cfg(**kw: object) -> MaskDiffusionConfig:
    base: dict[str, object] = {"keys": KEYS, "image_size": S, "block_out_channels": (16, 32), "norm_num_groups": 8}
    return MaskDiffusionConfig(**{**base, **kw})  # type: ignore[arg-type]


def _gens(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def _discs(n: int, seed: int) -> torch.Tensor:
    """(n, 1, S, S) {0, 1} discs of radius 2.5..4 at random centres."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(5, S - 5, 2)
        r = rng.uniform(2.5, 4.0)
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return torch.tensor(np.stack(out)[:, None], dtype=torch.float32)


def _disagreement(masks: np.ndarray) -> float:
    """Fraction of 4-neighbour pixel pairs with different values: ≈ 0.5 for thresholded noise, small for blobs."""
    return float((np.mean(masks[:, :, 1:] != masks[:, :, :-1]) + np.mean(masks[:, 1:] != masks[:, :-1])) / 2)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Training runs on one thread (the machine is shared); the previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_shapes_and_config_checks() -> None:
    model = MaskDiffusionModel(_cfg())
    eps = model(torch.zeros(3, 1, S, S), torch.tensor([0, 500, 999]), ["toy/disc", "toy/bar", "toy/disc"])
    assert eps.shape == (3, 1, S, S) and model.keys == list(KEYS)
    out = sample_masks(model, ["toy/bar", "toy/disc"], _gens(2), nfe=4)
    assert out.shape == (2, S, S) and out.dtype == np.bool_
    with pytest.raises(ValueError, match="x_t must be"):
        model(torch.zeros(1, 1, 8, 8), torch.tensor([0]), ["toy/disc"])
    with pytest.raises(ValueError, match="divisible by 4"):
        _cfg(image_size=18, block_out_channels=(8, 16, 16))
    with pytest.raises(ValueError, match="norm_num_groups = 8 must divide"):
        _cfg(block_out_channels=(12, 16))
    with pytest.raises(ValueError, match="keys is empty"):
        _cfg(keys=())
    with pytest.raises(ValueError, match="duplicates: toy/disc"):
        _cfg(keys=("toy/disc", "toy/disc"))


def test_unknown_keys_fail() -> None:
    model = MaskDiffusionModel(_cfg())
    with pytest.raises(ValueError, match="unknown key.*'toy/hole'; known: toy/disc, toy/bar"):
        sample_masks(model, ["toy/hole"], _gens(1))
    with pytest.raises(ValueError, match="unknown key"):
        mask_training_step(model, _discs(1, 0), ["toy/hole"], torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="2 keys but 1 generators"):
        sample_masks(model, ["toy/disc"] * 2, _gens(1))
    with pytest.raises(ValueError, match="only 0 and 1"):
        mask_training_step(model, _discs(1, 0) * 0.5, ["toy/disc"], None)


def test_box_frame_needs_real_side_fractions_for_every_key() -> None:
    sides = {"toy/disc": [0.02, 0.05], "toy/bar": [0.9]}
    cfg = _cfg(frame="box", box_sides=sides)
    assert cfg.frame == "box" and cfg.box_sides == sides
    assert _cfg().frame == "image" and _cfg().box_sides == {}  # the dataclass default: configs saved before frames
    with pytest.raises(ValueError, match="needs the real side fractions.*none for toy/disc, toy/bar"):
        _cfg(frame="box")
    with pytest.raises(ValueError, match="none for toy/bar"):
        _cfg(frame="box", box_sides={"toy/disc": [0.1], "toy/bar": []})
    with pytest.raises(ValueError, match="not in keys: toy/hole"):
        _cfg(frame="box", box_sides={**sides, "toy/hole": [0.1]})
    with pytest.raises(ValueError, match=r"box_sides\['toy/bar'\] must hold finite numbers > 0"):
        _cfg(frame="box", box_sides={**sides, "toy/bar": [0.1, -0.2]})
    with pytest.raises(ValueError, match="box_sides is given but frame = 'image'"):
        _cfg(box_sides=sides)
    with pytest.raises(ValueError, match="frame = 'crop' is not one of"):
        _cfg(frame="crop")


def test_stretch_frame_needs_real_box_records_and_round_trips(tmp_path: Path) -> None:
    records = {"toy/disc": [[0.02, 0.03, 0.8]], "toy/bar": [[0.01, 0.9, 1.0], [0.9, 0.012, 0.3]]}
    cfg = _cfg(frame="stretch", box_records=records)
    assert cfg.box_records == records and cfg.box_sides == {}
    loaded = MaskDiffusionModel.load(MaskDiffusionModel(cfg, seed=2).save(tmp_path / "stretch"))
    assert loaded.config == cfg and loaded.config.box_records["toy/bar"] == [[0.01, 0.9, 1.0], [0.9, 0.012, 0.3]]
    with pytest.raises(ValueError, match=r"needs the real box records \(box_records\).*none for toy/disc, toy/bar"):
        _cfg(frame="stretch")
    with pytest.raises(ValueError, match=r"box_records\['toy/bar'\] must hold \[a, b, fill\] triples"):
        _cfg(frame="stretch", box_records={**records, "toy/bar": [[0.1, 0.2]]})
    with pytest.raises(ValueError, match=r"box_records\['toy/bar'\] must hold"):
        _cfg(frame="stretch", box_records={**records, "toy/bar": [[0.1, float("nan"), 0.5]]})
    with pytest.raises(ValueError, match="box_sides is given but frame = 'stretch'"):
        _cfg(frame="stretch", box_records=records, box_sides={"toy/disc": [0.1], "toy/bar": [0.2]})
    with pytest.raises(ValueError, match="box_records is given but frame = 'box'"):
        _cfg(frame="box", box_sides={"toy/disc": [0.1], "toy/bar": [0.2]}, box_records=records)


def test_box_frame_round_trips_and_an_old_config_loads_as_image(tmp_path: Path) -> None:
    box = MaskDiffusionModel(_cfg(frame="box", box_sides={"toy/disc": [0.03], "toy/bar": [0.5, 1.25]}), seed=2)
    loaded = MaskDiffusionModel.load(box.save(tmp_path / "box"))
    assert loaded.config == box.config and loaded.config.box_sides["toy/bar"] == [0.5, 1.25]
    # a config.json written before frames existed has neither field: it is a whole-mask ("image") model
    folder = MaskDiffusionModel(_cfg(), seed=2).save(tmp_path / "old")
    data = json.loads((folder / "config.json").read_text())
    for name in ("frame", "box_sides"):
        del data[name]
    (folder / "config.json").write_text(json.dumps(data))
    old = MaskDiffusionModel.load(folder)
    assert old.config.frame == "image" and old.config.box_sides == {}


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = MaskDiffusionModel(_cfg(), seed=3)
    folder = model.save(tmp_path / "mask_model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = MaskDiffusionModel.load(folder)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x, t = torch.randn(2, 1, S, S, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t, list(KEYS)), loaded(x, t, list(KEYS)))
    assert np.array_equal(sample_masks(model, list(KEYS), _gens(2)), sample_masks(loaded, list(KEYS), _gens(2)))
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        MaskDiffusionModel.load(folder)
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        MaskDiffusionModel.load(tmp_path / "nothing")


def test_determinism_and_batch_independence() -> None:
    state = torch.random.get_rng_state()
    a, b = MaskDiffusionModel(_cfg(), seed=1), MaskDiffusionModel(_cfg(), seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # init leaves the global RNG alone
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(MaskDiffusionModel(_cfg(), seed=2).parameters()), next(a.parameters()))
    M = _discs(4, 0)
    la, _ = mask_training_step(a, M, ["toy/disc"] * 4, torch.Generator().manual_seed(5))
    lb, _ = mask_training_step(b, M, ["toy/disc"] * 4, torch.Generator().manual_seed(5))
    assert la.item() == lb.item()
    keys = ["toy/disc", "toy/bar", "toy/disc"]
    batch = sample_masks(a, keys, _gens(3, 10))
    assert np.array_equal(batch, sample_masks(b, keys, _gens(3, 10)))
    for i, key in enumerate(keys):  # a sample depends only on its own generator
        assert np.array_equal(batch[i], sample_masks(a, [key], _gens(1, 10 + i))[0])


def test_learns_toy_discs() -> None:
    """50 AdamW steps on discs: the loss on a fixed batch falls, and samples are blobs rather than noise."""
    data = _discs(64, 0)
    model = MaskDiffusionModel(_cfg(), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    keys = ["toy/disc"] * 16

    def eval_loss() -> float:
        with torch.no_grad():
            return mask_training_step(model, data[:16], keys, torch.Generator().manual_seed(123))[0].item()

    untrained = sample_masks(model, keys, _gens(16))
    before = eval_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        batch = data[torch.randint(0, len(data), (16,), generator=g)]
        loss, metrics = mask_training_step(model, batch, keys, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert np.isfinite(metrics["loss"])
    after = eval_loss()
    assert after < before / 3, (before, after)
    samples = sample_masks(model, keys, _gens(16))
    assert _disagreement(untrained) > 0.35  # an untrained model gives thresholded noise
    assert _disagreement(samples) < 0.25, _disagreement(samples)
    assert 0.02 < samples.mean() < 0.6, samples.mean()  # data: ≈ 0.13 of the pixels

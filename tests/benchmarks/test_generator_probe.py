"""The generator probe on a tiny published model: its figures follow their definitions and reach the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import generator_probe
from benchmarks.probe_cells import cell_contrast
from benchmarks.probe_pairs import _polarity
from fast_core.data.transforms import decode_png
from fast_core.synthesis_config import SynthesisConfig
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import publish_tiny_model, tiny_fast_ldm


def test_probe_figures_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 6}, n_good=2)
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1)
    out = tmp_path / "probe.json"
    argv = [str(root), f"tiny={model}", "--images", "8", "--threads", "1", "--json", str(out)]
    argv += ["--pairs", "2", "--sheets", str(tmp_path / "sheets"), "--cells"]
    assert generator_probe.main(argv) == 0
    row = json.loads(out.read_text())["tiny"]
    for c in row["cell_contrast"].values():  # painted on themselves: the real side is the probed windows' own
        assert c["n"] >= 1 and (c["ratio"] is None or c["ratio"] == pytest.approx(c["painted"] / c["real"], abs=0.02))
    gate = row["ring_contrast"]["per_defect_type"]
    assert set(gate) == {"tiny/crack", "tiny/scratch"} and row["ring_contrast"]["rejected"] == {}
    for v in gate.values():
        assert v["real_median"] > 0 and v["painted_median"] >= 0
        assert v["ratio"] == pytest.approx(v["painted_median"] / v["real_median"], rel=0.01)
        g = v["grain"]
        assert g["real_median"] > 0 and g["ratio"] == pytest.approx(g["painted_median"] / g["real_median"], rel=0.01)
        s = v["polarity"]
        assert s["real_median"] is not None and s["painted_median"] is not None
        assert s["passes"] == (s["same_sign_share"] is None or s["same_sign_share"] >= 0.5)
        assert v["passes"] == (0.5 <= v["ratio"] <= 2.0 and 0.5 <= g["ratio"] <= 2.0 and s["passes"])
    sheet = decode_png((tmp_path / "sheets" / "tiny_sheet.png").read_bytes())
    assert sheet.shape[0] == 4 * 96 + 3 * 2  # real and painted rows for each of the two types
    assert row["images"] == 3  # ⌊3/3⌋ crack + ⌊6/3⌋ scratch training-third images
    assert row["prompt_gain_fg"] == pytest.approx(1 - row["mse_fg_unet_key"] / row["mse_fg_unet_good"])
    assert 0 < row["latent_fg_fraction"] < 1 and row["farm_rel_err_fg"] > 0 < row["farm_rel_err_fg_low_t"]
    assert row["x0_rel_err_fg_high_t"] > 0 < row["x0_rel_err_bg_high_t"]
    assert all(row[f"mse_{part}_{p}"] > 0 for part in ("fg", "bg") for p in ("unet_key", "unet_good", "fast"))
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "| tiny | tiny/crack |" in printed and "Cell contrast" in printed


def test_key_swap_paints_every_types_masks_under_every_key_with_the_same_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key-swap: each type's masks under each defect key; under a mask's own key the pairs are the gate's own
    (the same rows, seeds and path), so that cell equals the gate's painted median; the spreads are max − min."""
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 6}, n_good=2)
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1)
    out = tmp_path / "probe.json"
    argv = [str(root), f"tiny={model}", "--images", "2", "--threads", "1", "--json", str(out), "--pairs", "2"]
    assert generator_probe.main([*argv, "--key-swap"]) == 0
    row = json.loads(out.read_text())["tiny"]
    swap, gate = row["key_swap"], row["ring_contrast"]["per_defect_type"]
    keys = ["tiny/crack", "tiny/scratch"]
    assert sorted(swap["signed"]) == keys and all(sorted(v) == keys for v in swap["signed"].values())
    for t in keys:
        assert swap["signed"][t][t] == pytest.approx(gate[t]["polarity"]["painted_median"], abs=0.01)
        values = list(swap["signed"][t].values())
        assert swap["key_spread"][t] == pytest.approx(max(values) - min(values), abs=0.011)
    for k in keys:
        values = [swap["signed"][t][k] for t in keys]
        assert swap["type_spread"][k] == pytest.approx(max(values) - min(values), abs=0.011)
    assert len({swap["signed"]["tiny/crack"][k] for k in keys}) == 2  # the key changes the paint of random weights
    printed = capsys.readouterr().out
    assert "| tiny: mask type ↓, painted as → | tiny/crack | tiny/scratch | key spread |" in printed
    assert generator_probe.main(argv) == 0 and "key_swap" not in json.loads(out.read_text())["tiny"]  # opt-in


def test_window_model_is_probed_in_windows(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3}, n_good=2, size=(50, 70))
    x, M, keys = generator_probe.load_probe_batch(str(root), 32, 1, 4, frame="window")
    assert x.shape == (1, 1, 32, 32) and M.shape == (1, 1, 32, 32) and M.sum() > 0 and keys == ["tiny/crack"]
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1, frame="window")
    out = tmp_path / "probe.json"
    argv = [str(root), model, "--images", "4", "--threads", "1", "--pairs", "1", "--json", str(out)]
    assert generator_probe.main(argv) == 0
    first = json.loads(out.read_text())[model]["ring_contrast"]["per_defect_type"]["tiny/crack"]
    assert first["real_median"] > 0
    # the pairs can be painted another way: guided and without FARM (same real side, other painted side)
    assert generator_probe.main([*argv, "--guidance", "3", "--no-farm"]) == 0
    other = json.loads(out.read_text())[model]["ring_contrast"]["per_defect_type"]["tiny/crack"]
    assert other["real_median"] == first["real_median"] and other["painted_median"] != first["painted_median"]
    with pytest.raises(SystemExit):
        generator_probe.main([*argv, "--guidance", "-1"])
    with pytest.raises(SystemExit):
        generator_probe.main([*argv, "--paste", "smooth", "--smooth-min-radius", "-1"])
    with pytest.raises(SystemExit):
        generator_probe.main([*argv, "--paste", "smooth", "--smooth-max-sigma", "0"])
    # routed: a floor above every mask's half-thickness keeps the residual paste's change, so the same figures
    assert generator_probe.main([*argv, "--paste", "smooth", "--smooth-min-radius", "1000"]) == 0
    routed = json.loads(out.read_text())[model]["ring_contrast"]["per_defect_type"]["tiny/crack"]
    assert routed == first


def test_probe_needs_training_images(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 2}, n_good=2)  # ⌊2/3⌋ = 0
    with pytest.raises(ValueError, match="no training-third anomaly image"):
        generator_probe.load_probe_batch(str(root), 32, 1, 4)


def test_the_polarity_gate_fails_bright_blots_where_real_defects_are_dark_pits() -> None:
    dark = [-30.0, -25.0, -12.0]
    assert _polarity(dark, [-9.0, -14.0, 3.0])["passes"]  # two of three dark, like the real ones
    bright = _polarity(dark, [11.8, 6.0, -2.0])  # ring contrast alone would pass these (0.4-1x)
    assert bright == {"real_median": -25.0, "painted_median": 6.0, "same_sign_share": 0.333, "passes": False}
    faint = _polarity([1.0, -2.0, 3.0], [20.0])  # real median within POLARITY_MIN of 0: no sign to keep
    assert faint["same_sign_share"] is None and faint["passes"]


def test_cell_contrast_compares_the_mask_with_the_rest_of_its_cells() -> None:
    """A one-pixel dark line (grey 25.5) on a flat grey 127.5 surface: its cells' other pixels are the surface, so the
    real cell contrast is exactly −102; a mask too small to compare is skipped; the painted side is D(z) on M."""
    torch.set_num_threads(1)
    model = tiny_fast_ldm(image_channels=1, seed=0, inpaint="inpaint_px").eval()
    model.config.mask_downsample = "any"
    x, M = torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    M[0, :, 8:20, 5] = 1
    x[0][M[0] > 0] = -0.8
    M[1, :, 8, 5] = 1  # one pixel: fewer than MIN_PX
    rows = cell_contrast(model, x, M, ["tiny/crack", "tiny/scratch"], SynthesisConfig(nfe=3, use_farm=False))
    assert set(rows) == {"tiny/crack"} and rows["tiny/crack"]["n"] == 1 and rows["tiny/crack"]["real"] == -102.0
    assert rows["tiny/crack"]["ratio"] == pytest.approx(rows["tiny/crack"]["painted"] / -102.0, abs=0.01)

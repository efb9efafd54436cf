"""The generator probe on a tiny published model: its figures follow their definitions and reach the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import generator_probe
from fast_core.data.transforms import decode_png
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import publish_tiny_model


def test_probe_figures_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 6}, n_good=2)
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1)
    out = tmp_path / "probe.json"
    argv = [str(root), f"tiny={model}", "--images", "8", "--threads", "1", "--json", str(out)]
    argv += ["--pairs", "2", "--sheets", str(tmp_path / "sheets")]
    assert generator_probe.main(argv) == 0
    row = json.loads(out.read_text())["tiny"]
    gate = row["ring_contrast"]["per_defect_type"]
    assert set(gate) == {"tiny/crack", "tiny/scratch"} and row["ring_contrast"]["rejected"] == {}
    for v in gate.values():
        assert v["real_median"] > 0 and v["painted_median"] >= 0
        assert v["ratio"] == pytest.approx(v["painted_median"] / v["real_median"], rel=0.01)
        g = v["grain"]
        assert g["real_median"] > 0 and g["ratio"] == pytest.approx(g["painted_median"] / g["real_median"], rel=0.01)
        assert v["passes"] == (0.5 <= v["ratio"] <= 2.0 and 0.5 <= g["ratio"] <= 2.0)
    sheet = decode_png((tmp_path / "sheets" / "tiny_sheet.png").read_bytes())
    assert sheet.shape[0] == 4 * 96 + 3 * 2  # real and painted rows for each of the two types
    assert row["images"] == 3  # ⌊3/3⌋ crack + ⌊6/3⌋ scratch training-third images
    assert row["prompt_gain_fg"] == pytest.approx(1 - row["mse_fg_unet_key"] / row["mse_fg_unet_good"])
    assert 0 < row["latent_fg_fraction"] < 1 and row["farm_rel_err_fg"] > 0 < row["farm_rel_err_fg_low_t"]
    assert row["x0_rel_err_fg_high_t"] > 0 < row["x0_rel_err_bg_high_t"]
    assert all(row[f"mse_{part}_{p}"] > 0 for part in ("fg", "bg") for p in ("unet_key", "unet_good", "fast"))
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "| tiny | tiny/crack |" in printed


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


def test_probe_needs_training_images(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 2}, n_good=2)  # ⌊2/3⌋ = 0
    with pytest.raises(ValueError, match="no training-third anomaly image"):
        generator_probe.load_probe_batch(str(root), 32, 1, 4)

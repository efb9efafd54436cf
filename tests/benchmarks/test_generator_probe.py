"""The generator probe on a tiny published model: its figures follow their definitions and reach the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import generator_probe
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import publish_tiny_model


def test_probe_figures_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 6}, n_good=2)
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1)
    out = tmp_path / "probe.json"
    argv = [str(root), f"tiny={model}", "--images", "8", "--threads", "1", "--json", str(out)]
    assert generator_probe.main(argv) == 0
    row = json.loads(out.read_text())["tiny"]
    assert row["images"] == 3  # ⌊3/3⌋ crack + ⌊6/3⌋ scratch training-third images
    assert row["prompt_gain_fg"] == pytest.approx(1 - row["mse_fg_unet_key"] / row["mse_fg_unet_good"])
    assert 0 < row["latent_fg_fraction"] < 1 and row["farm_rel_err_fg"] > 0
    assert all(row[f"mse_{part}_{p}"] > 0 for part in ("fg", "bg") for p in ("unet_key", "unet_good", "fast"))
    assert "| tiny |" in capsys.readouterr().out


def test_probe_needs_training_images(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 2}, n_good=2)  # ⌊2/3⌋ = 0
    with pytest.raises(ValueError, match="no training-third anomaly image"):
        generator_probe.load_probe_batch(str(root), 32, 1, 4)

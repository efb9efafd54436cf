"""``curves.png``: the Pillow renderer of a run's loss curves (pipelines.train.curves), without Ray."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image

from pipelines.train.curves import EMA_COLOUR, PANEL_HEIGHT, RAW_COLOUR, WIDTH, ema, render_curves, stage_series


def synthetic_metrics() -> list[dict]:
    """Records as metrics.jsonl holds them: a decaying noisy loss for vae (log-range), fast, and one mask record."""
    rng = random.Random(0)
    records = []
    for stage, n, scale in (("vae", 30, 10.0), ("fast", 20, 0.2)):
        for k in range(1, n + 1):
            loss = scale * math.exp(-k / 4) + 0.01 * rng.random()
            records.append({"stage": stage, "step": 10 * k, "loss": loss, "loss_avg": loss, "lr": 1e-4})
    records.append({"stage": "mask", "step": 5, "loss": 0.3})
    return records


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_same_metrics_give_the_same_bytes_in_any_record_order() -> None:
    records = synthetic_metrics()
    png = render_curves(records)
    assert render_curves(synthetic_metrics()) == png
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    assert render_curves(shuffled) == png  # panels in stage order, points sorted by step
    changed = [dict(r) for r in records]
    changed[5]["loss"] *= 1.5
    assert render_curves(changed) != png
    assert render_curves(records, smoothing=0.5) != png


def test_a_valid_png_with_one_panel_per_stage_and_both_lines() -> None:
    png = render_curves(synthetic_metrics())
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < 200_000
    image = decode(png)
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == (WIDTH, 3 * PANEL_HEIGHT)  # vae, fast, mask
    pixels = np.asarray(image)
    for i in range(3):
        panel = pixels[i * PANEL_HEIGHT : (i + 1) * PANEL_HEIGHT].reshape(-1, 3)
        colours = {tuple(c) for c in np.unique(panel, axis=0)}
        assert EMA_COLOUR in colours and RAW_COLOUR in colours  # smoothed and raw drawn in every panel
        assert (panel == 255).all(axis=1).mean() > 0.5  # mostly white background
    assert decode(render_curves([])).size == (WIDTH, PANEL_HEIGHT)  # no records yet: one panel saying so


def test_series_order_duplicates_and_non_finite_losses() -> None:
    records = [
        {"stage": "fast", "step": 2, "loss": 0.5},
        {"stage": "fast", "step": 1, "loss": 0.9},
        {"stage": "base", "step": 1, "loss": float("nan")},
        {"stage": "fast", "step": 2, "loss": 0.4},  # the later record of a step wins
        {"stage": "zeta", "step": 1, "loss": 1.0},
        {"step": 3, "loss": 1.0},  # no stage: left out
    ]
    series = stage_series(records)
    assert list(series) == ["base", "fast", "zeta"]  # known stages in training order, then the others
    assert series["fast"][0].tolist() == [1.0, 2.0] and series["fast"][1].tolist() == [0.9, 0.4]
    assert series["base"][0].size == 0
    assert decode(render_curves(records)).size == (WIDTH, 3 * PANEL_HEIGHT)


def test_ema_is_debiased_and_checks_its_weight() -> None:
    assert ema([1.0, 0.0, 0.0], 0.5).round(4).tolist() == [1.0, 0.3333, 0.1429]
    assert ema([3.0, 1.0], 0.0).tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="smoothing"):
        render_curves([], smoothing=1.0)

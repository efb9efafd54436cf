"""The window level (fast_core.data.window_level): b, g = L / b, and the change carried back divided by g."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_core.data.window_level import background_mean, from_level, level_gain, scale_uint8, to_level


def test_background_mean_leaves_the_mask_out_pools_the_channels_and_falls_back_to_the_whole_window() -> None:
    window = np.full((3, 16, 16), 100, np.uint8)
    window[0] = 40  # channels pooled: (40 + 100 + 100) / 3 = 80 outside the mask
    window[:, 4:8, 4:8] = 0
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    assert background_mean(window, mask) == pytest.approx(80.0)
    assert background_mean(window) == pytest.approx(80.0 * 240 / 256)
    nearly_full = np.ones((16, 16), np.uint8)
    nearly_full[0, :10] = 0  # 10 pixels outside, fewer than MIN_BACKGROUND_PX: the whole window's mean
    assert background_mean(window, nearly_full) == pytest.approx(float(window.mean()))


def test_level_gain_floors_the_background_and_uint8_scaling_rounds_and_clips() -> None:
    assert level_gain(80.0, 160.0) == 0.5 and level_gain(80.0, 40.0) == 2.0
    assert level_gain(80.0, 0.0) == 80.0  # a black window: b is floored at 1
    scaled = scale_uint8(np.array([[[100, 201, 255, 3]]], np.uint8), 1.5)
    assert scaled.tolist() == [[[150, 255, 255, 4]]] and scaled.dtype == np.uint8


def test_the_change_made_at_the_level_comes_back_divided_by_the_gain_and_the_rest_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(64, 100, (2, 1, 8, 8), generator=g).float()  # g = 2 and a change of −60 clip none
    x = pixels / 127.5 - 1.0
    gain = torch.tensor([0.5, 2.0], dtype=torch.float64)
    level = to_level(x, gain)
    torch.testing.assert_close(level[1], (2.0 * pixels[1]) / 127.5 - 1.0)  # p' = g p
    torch.testing.assert_close(level[0], (0.5 * pixels[0]) / 127.5 - 1.0)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:5, 3:6] = True
    painted = torch.where(mask, level - 30.0 / 127.5, level)  # the model darkens the mask by 30 levels
    out = from_level(x, level, painted, gain)
    assert torch.equal(out[~mask], x[~mask])  # outside the mask: the window itself, bit for bit
    change = (out - x) * 127.5
    torch.testing.assert_close(change[0][mask[0]], torch.full((9,), -60.0), atol=1e-3, rtol=0)  # −30 / 0.5
    torch.testing.assert_close(change[1][mask[1]], torch.full((9,), -15.0), atol=1e-3, rtol=0)  # −30 / 2
    assert float(from_level(x, level, level - 3.0, gain).min()) == -1.0  # clamped to the pixel range

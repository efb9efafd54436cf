"""Image/mask ↔ tensor conversions and deterministic PNG coding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_core.data.transforms import decode_png, encode_png, to_model_image, to_model_mask


def test_image_range_channels_and_resize() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x = to_model_image(rgb, 16, 3)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert to_model_image(rgb, 16, 1).shape == (1, 16, 16)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    same = to_model_image(grey, 16, 1)  # no resize: exact affine map
    assert torch.allclose(same[0], torch.from_numpy(grey.astype(np.float32)) / 127.5 - 1)
    assert torch.equal(to_model_image(grey, 16, 3)[0], to_model_image(grey, 16, 3)[2])
    with pytest.raises(ValueError, match="channels"):
        to_model_image(grey, 16, 2)
    with pytest.raises(ValueError, match="uint8"):
        to_model_image(grey.astype(np.float32), 16, 1)


def test_mask_stays_binary() -> None:
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[5:17, 9:12] = 255
    m = to_model_mask(mask, 13)
    assert m.shape == (1, 13, 13) and set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() > 0
    assert torch.equal(to_model_mask(mask, 30)[0], torch.from_numpy(mask > 0).float())
    with pytest.raises(ValueError, match="shape"):
        to_model_mask(np.zeros((2, 2, 3), np.uint8), 4)


def test_png_round_trip_is_exact_and_deterministic() -> None:
    rng = np.random.default_rng(1)
    for arr in (rng.integers(0, 256, (9, 7), dtype=np.uint8), rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)):
        data = encode_png(arr)
        assert data == encode_png(arr.copy())
        assert np.array_equal(decode_png(data), arr)
    assert decode_png(encode_png(np.array([[True, False]]))).tolist() == [[255, 0]]
    assert decode_png(encode_png(arr), "L").shape == (9, 7)


def test_decode_png_rejects_garbage_and_truncation() -> None:
    data = encode_png(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="not a readable image"):
        decode_png(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        decode_png(data[: len(data) // 2])

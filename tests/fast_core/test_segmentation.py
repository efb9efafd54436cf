"""The downstream segmenter: smp-equal architectures, loss, augmentation, batch schedule, training, inference, I/O."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fast_core.evaluation import SegmentationMetrics
from fast_core.segmentation import (
    AugmentConfig,
    BatchSchedule,
    SegTrainConfig,
    augment_batch,
    build_segmenter,
    count_parameters,
    load_segmenter,
    predict_proba,
    save_segmenter,
    segmentation_loss,
    sliding_window_proba,
    train_segmenter,
    train_step,
)
from fast_core.segmentation.inference import model_memory_format
from fast_core.segmentation.training import images_from_uint8

# smp 0.3.x: sum(p.numel() for p in smp.Unet("resnet18", encoder_weights=None, in_channels=C, classes=1).parameters())
SMP_PARAMS = {("unet", 3): 14_328_209, ("fpn", 3): 13_047_233, ("unet", 1): 14_321_937, ("fpn", 1): 13_040_961}
NO_AUGMENT = AugmentConfig(hflip=0, vflip=0, rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def bright_squares(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 1, S, S) dark noise with one bright square each, and the bool (n, S, S) masks of the squares."""
    rng = np.random.default_rng(seed)
    images = rng.integers(40, 90, (n, 1, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        s = int(rng.integers(size // 8, size // 3))
        y, x = rng.integers(0, size - s, 2)
        images[i, 0, y : y + s, x : x + s] = 220
        masks[i, y : y + s, x : x + s] = True
    return images, masks


@pytest.mark.parametrize(("arch", "channels"), sorted(SMP_PARAMS))
def test_shapes_and_parameter_counts_match_smp(arch: str, channels: int) -> None:
    model = build_segmenter(arch, channels, seed=0)
    assert count_parameters(model) == SMP_PARAMS[(arch, channels)]
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, channels, 64, 96))
    assert out.shape == (2, 1, 64, 96)


def test_bad_arguments_fail_clearly() -> None:
    with pytest.raises(ValueError, match="'unet', 'fpn'"):
        build_segmenter("segformer", 3)
    with pytest.raises(ValueError, match="1 or 3"):
        build_segmenter("unet", 2)
    with pytest.raises(ValueError, match="multiples of 32"):
        build_segmenter("unet", 1, seed=0)(torch.zeros(1, 1, 48, 64))
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError, match="world_size"):
        BatchSchedule(10, 5, seed=0, rank=0, world_size=2)


def test_seeded_initialisation_is_reproducible() -> None:
    a, b, c = (build_segmenter("fpn", 1, seed=s).state_dict() for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.conv1.weight"], c["encoder.conv1.weight"])


def test_loss_hand_computed() -> None:
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    loss, parts = segmentation_loss(torch.zeros_like(target), target)
    # p = 0.5 everywhere: BCE = ln 2; Dice = 1 − (2·1 + 1) / (2 + 2 + 1) = 0.4
    assert parts["bce"] == pytest.approx(math.log(2))
    assert parts["dice"] == pytest.approx(0.4)
    assert float(loss) == pytest.approx(math.log(2) + 0.4)
    _, weighted = segmentation_loss(torch.zeros_like(target), target, bce_weight=0.0, dice_weight=2.0)
    assert weighted["loss"] == pytest.approx(0.8)


def test_augmentation_keeps_pairs_aligned_and_binary() -> None:
    images, masks = bright_squares(8, 64, seed=1)
    m = torch.from_numpy(masks)[:, None].float()
    x = 2 * m - 1  # image == mask pattern, so geometry mismatches would show
    gen = torch.Generator().manual_seed(0)
    xa, ma = augment_batch(x, m, AugmentConfig(brightness=0, contrast=0), gen)
    assert set(ma.unique().tolist()) <= {0.0, 1.0}
    agree = ((xa > 0) == (ma > 0.5)).float().mean()
    assert agree > 0.97
    assert not torch.equal(ma, m)  # something moved
    # only a certain horizontal flip: exactly mirrored
    xf, mf = augment_batch(x, m, AugmentConfig(**{**vars(NO_AUGMENT), "hflip": 1.0}), torch.Generator())
    assert torch.equal(xf, x.flip(-1)) and torch.equal(mf, m.flip(-1))
    xi, mi = augment_batch(x, m, NO_AUGMENT, torch.Generator())
    assert torch.equal(xi, x) and torch.equal(mi, m)
    # same generator seed → same result
    xb, mb = augment_batch(x, m, AugmentConfig(), torch.Generator().manual_seed(5))
    xc, mc = augment_batch(x, m, AugmentConfig(), torch.Generator().manual_seed(5))
    assert torch.equal(xb, xc) and torch.equal(mb, mc)
    assert float(xb.min()) >= -1 and float(xb.max()) <= 1


def test_batch_schedule_covers_epochs_and_splits_over_workers() -> None:
    sched = BatchSchedule(10, 4, seed=7)
    stream = torch.cat([sched.indices(k) for k in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert torch.equal(BatchSchedule(10, 4, seed=7).indices(3), sched.indices(3))  # stateless per step
    parts = [BatchSchedule(10, 4, seed=7, rank=r, world_size=2).indices(3) for r in (0, 1)]
    assert sorted(torch.cat(parts).tolist()) == sorted(sched.indices(3).tolist())
    assert not torch.equal(BatchSchedule(10, 4, seed=8).indices(0), sched.indices(0))


def test_train_step_reduces_loss_fpn() -> None:
    images, masks = bright_squares(4, 32, seed=2)
    x, m = images_from_uint8(images), torch.from_numpy(masks)[:, None].float()
    model = build_segmenter("fpn", 1, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [train_step(model, opt, x, m)["loss"] for _ in range(8)]
    assert losses[-1] < losses[0] * 0.8


def test_unet_learns_bright_squares() -> None:
    images, masks = bright_squares(48, 32, seed=3)
    test_images, test_masks = bright_squares(16, 32, seed=4)
    model = build_segmenter("unet", 1, seed=0)
    cfg = SegTrainConfig(steps=40, batch_size=8, lr=3e-3, seed=0, log_every=10)
    history = train_segmenter(model, images, masks, cfg)
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    probs = predict_proba(model, images_from_uint8(test_images), batch_size=8)
    metrics = SegmentationMetrics()
    metrics.update(probs[:, 0] >= 0.5, test_masks)
    assert metrics.compute()["overall"]["anomaly_iou"] > 0.5


def test_training_is_deterministic() -> None:
    images, masks = bright_squares(6, 32, seed=5)
    cfg = SegTrainConfig(steps=3, batch_size=4, seed=1, log_every=3)
    states = []
    for _ in range(2):
        model = build_segmenter("unet", 1, seed=0)
        train_segmenter(model, images, masks, cfg)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_channels_last_is_the_same_maths_in_another_layout() -> None:
    """NHWC logits and gradients equal NCHW ones up to rounding; training leaves an NHWC model, same losses.

    The gradients are compared in float64: in float32 the two layouts' summation orders differ by up to ~1 % in the
    first convolution's gradient on some CPUs (oneDNN picks other kernels), which says nothing about the maths."""
    images, masks = bright_squares(4, 32, seed=6)
    x, m = images_from_uint8(images).double(), torch.from_numpy(masks)[:, None].double()
    outputs = {}
    for nhwc in (False, True):
        model = build_segmenter("unet", 1, seed=0).double()
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        model.to(memory_format=fmt)
        loss, _ = segmentation_loss(model(x.contiguous(memory_format=fmt)), m)
        loss.backward()
        outputs[nhwc] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.allclose(outputs[True][0], outputs[False][0], atol=1e-10)
    for name, grad in outputs[False][1].items():
        assert float((outputs[True][1][name] - grad).norm()) <= 1e-8 * float(grad.norm()) + 1e-12, name
    histories = {}
    for nhwc in (False, True):
        model = build_segmenter("unet", 1, seed=0)
        cfg = SegTrainConfig(steps=3, batch_size=4, seed=1, log_every=1, channels_last=nhwc, augment=NO_AUGMENT)
        histories[nhwc] = [h["loss"] for h in train_segmenter(model, images, masks, cfg)]
        assert model_memory_format(model) == (torch.channels_last if nhwc else torch.contiguous_format)
        probs = predict_proba(model, x.float())  # inputs follow the weights' layout
        assert probs.shape == (4, 1, 32, 32)
    # float32 training: three optimiser steps carry the layouts' rounding into the weights (~0.1 % seen by step 3);
    # the exact maths is the float64 check above, this one that the two training runs track each other
    assert histories[True] == pytest.approx(histories[False], rel=1e-2)


def test_inference_padding_sliding_window_and_io(tmp_path: Path) -> None:
    model = build_segmenter("unet", 3, seed=0).eval()
    x = torch.rand(2, 3, 40, 50) * 2 - 1
    probs = predict_proba(model, x, batch_size=1)
    assert probs.shape == (2, 1, 40, 50) and float(probs.min()) >= 0 and float(probs.max()) <= 1
    whole = sliding_window_proba(model, x[0], tile=64)  # one window covering the image
    assert torch.allclose(whole, probs[0], atol=1e-6)
    tiled = sliding_window_proba(model, x[0], tile=32, stride=16)
    assert tiled.shape == (1, 40, 50) and float(tiled.min()) >= 0 and float(tiled.max()) <= 1
    loaded = load_segmenter(save_segmenter(model, tmp_path / "seg"))
    assert torch.equal(predict_proba(loaded, x, batch_size=1), probs)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_segmenter(tmp_path / "nothing")

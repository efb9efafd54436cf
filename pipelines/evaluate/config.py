"""Settings of ``fastgen evaluate``: which training set, the segmenter and its budget, the test set, the output.

One config trains one segmenter and tests it. A benchmark compares training sets by running the same config with
only ``train_sources`` changed, so seed, budget (``steps`` × ``batch_size``), augmentation and resolution are equal
across methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fast_core.configbase import check_choices
from fast_core.data.layout import Layout
from fast_core.segmentation.models import OUTPUT_STRIDE, Arch, Encoder
from fast_core.segmentation.training import AugmentConfig, LrSchedule, SegTrainConfig
from pipelines.storage import StorageConfig

SourceKind = Literal["synthetic", "real_third"]
#: ``native``: every image at its own pixel size, training on crops, whole-image inference; ``resize``: every image
#: resized to ``image_size`` × ``image_size`` for training and testing.
Resolution = Literal["native", "resize"]
#: Synthetic pairs in ``native`` mode: ``source`` resizes each pair back to the size of the normal image it was
#: painted on (a synthesizer works at its model's square size); ``stored`` keeps the stored size.
SyntheticGeometry = Literal["source", "stored"]


@dataclass(kw_only=True)
class TrainSource:
    """One part of the training set.

    ``synthetic``: the pairs of a synthesized dataset version at ``uri`` (DESIGN §4; ``_SUCCESS`` must exist).
    ``real_third``: the real anomaly images of the generator-training third (first ⌊n/3⌋ per defect type) of
    ``dataset_root``, with their ground-truth masks.
    """

    kind: SourceKind
    uri: str | None = None  # synthetic: the dataset version (local dir or s3://); real_third: must be unset
    max_pairs: int | None = None  # keep at most this many pairs of this source (the first ones in sample order)
    pairs_per_key: int | None = None  # keep at most this many pairs per category/defect key (first in sample order)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.kind == "synthetic" and not self.uri:
            raise ValueError("TrainSource(kind='synthetic') needs uri: the synthesized dataset version")
        if self.kind == "real_third" and self.uri is not None:
            raise ValueError("TrainSource(kind='real_third') takes no uri (it reads dataset_root)")
        for name in ("max_pairs", "pairs_per_key"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainSource.{name} = {getattr(self, name)} must be >= 1")

    def describe(self) -> str:
        """``"synthetic:<uri>"`` or ``"real_third"``."""
        return f"synthetic:{self.uri}" if self.kind == "synthetic" else "real_third"


@dataclass(kw_only=True)
class ScalingSettings:
    """Ray Train scaling of the segmenter training."""

    num_workers: int = 1  # data-parallel workers (DDP when > 1); batch_size must split evenly over them
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # CPUs reserved per worker; on CPU also its torch threads (rounded up)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"scaling.num_workers = {self.num_workers} must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"scaling.cpus_per_worker = {self.cpus_per_worker} must be > 0")


@dataclass(kw_only=True)
class EvaluateConfig:
    """``fastgen evaluate``: train the segmenter on ``train_sources`` + normal images, test on the real test set."""

    dataset_root: str  # MVTec-layout root (local dir or s3://, copied locally): real third, train/good, test set
    out: str  # output folder (local or s3://): metrics.json, predictions.png, config.resolved.yaml, segmenter/
    train_sources: list[TrainSource]  # e.g. [{kind: synthetic, uri: ...}, {kind: real_third}]
    layout: Layout = "mvtec"  # dataset_root layout
    categories: list[str] | None = None  # only these categories (training pairs of others are dropped); None: all
    seed: int = 0  # model initialisation, batch order, augmentation and the choice of normal images
    steps: int = 2000  # optimiser steps
    batch_size: int = 16  # global batch
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    lr_schedule: LrSchedule = "cosine"  # "constant" or "cosine"
    resolution: Resolution = "native"  # "native" (own pixel size, crops) or "resize" (everything at image_size)
    crop_size: int = 128  # native: training crop side c (multiple of 32); images smaller than c are reflect-padded
    defect_crop_fraction: float = 0.5  # native: probability a defect image's crop is forced onto the defect
    synthetic_geometry: SyntheticGeometry = "source"  # native: synthetic pairs back at their normal image's size
    inference_tile: int = 1024  # native: images with a side above this are predicted by overlapping tiles
    image_size: int = 256  # resize: segmenter input side S, every image/mask resized to S × S (multiple of 32)
    in_channels: int = 3  # 1 (grey) or 3 (RGB): images are converted to this (grey repeated for 3)
    encoder: Encoder = "efficientnet_lite0"  # "efficientnet_lite0" (3 channels) or "resnet18"
    pretrained: bool = True  # efficientnet_lite0: start from the packaged ImageNet weights (never downloaded)
    arch: Arch = "unet"  # "unet" or "fpn" decoder
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normal_fraction: float = 0.2  # fraction of the training set that is normal train/good images with empty masks
    threshold: float = 0.5  # a pixel is predicted anomalous when its probability >= threshold
    eval_batch_size: int = 16  # inference batch
    channels_last: bool = True  # NHWC segmenter for training and testing (same maths; ~1.4× faster on CPU)
    num_preview: int = 6  # test images in predictions.png (image | truth | prediction rows)
    log_every: int = 50  # training log/report interval in steps
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    storage: StorageConfig = field(default_factory=StorageConfig)  # for s3:// URIs
    ray_storage_path: str | None = None  # Ray Train run folder (shared storage on a multi-node cluster); None: temp

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.dataset_root:
            raise ValueError("EvaluateConfig.dataset_root is empty; give the MVTec-layout dataset root")
        if not self.out:
            raise ValueError("EvaluateConfig.out is empty; give an output folder")
        if not self.train_sources:
            raise ValueError("EvaluateConfig.train_sources is empty; give at least one (synthetic or real_third)")
        if sum(s.kind == "real_third" for s in self.train_sources) > 1:
            raise ValueError("EvaluateConfig.train_sources lists real_third more than once")
        if self.seed < 0:
            raise ValueError(f"EvaluateConfig.seed = {self.seed} must be >= 0")
        if self.image_size < OUTPUT_STRIDE or self.image_size % OUTPUT_STRIDE:
            raise ValueError(f"EvaluateConfig.image_size = {self.image_size} must be a positive multiple of 32")
        if self.in_channels not in (1, 3):
            raise ValueError(f"EvaluateConfig.in_channels = {self.in_channels} must be 1 or 3")
        if self.encoder == "efficientnet_lite0" and self.in_channels != 3:
            raise ValueError("EvaluateConfig: encoder efficientnet_lite0 needs in_channels = 3 (grey is repeated)")
        if self.pretrained and self.encoder != "efficientnet_lite0":
            raise ValueError(f"EvaluateConfig.pretrained: no pretrained weights for encoder {self.encoder!r}")
        if self.crop_size < OUTPUT_STRIDE or self.crop_size % OUTPUT_STRIDE:
            raise ValueError(f"EvaluateConfig.crop_size = {self.crop_size} must be a positive multiple of 32")
        if self.inference_tile < OUTPUT_STRIDE or self.inference_tile % OUTPUT_STRIDE:
            raise ValueError(f"EvaluateConfig.inference_tile = {self.inference_tile} must be a positive multiple of 32")
        if not 0.0 <= self.normal_fraction < 1.0:
            raise ValueError(f"EvaluateConfig.normal_fraction = {self.normal_fraction} must be in [0, 1)")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"EvaluateConfig.threshold = {self.threshold} must be in (0, 1)")
        for name in ("eval_batch_size",):
            if getattr(self, name) < 1:
                raise ValueError(f"EvaluateConfig.{name} = {getattr(self, name)} must be >= 1")
        if self.num_preview < 0:
            raise ValueError(f"EvaluateConfig.num_preview = {self.num_preview} must be >= 0")
        if self.batch_size % self.scaling.num_workers:
            raise ValueError(
                f"EvaluateConfig.batch_size = {self.batch_size} must be divisible by scaling.num_workers = "
                f"{self.scaling.num_workers}"
            )
        self.train_config()  # validates steps, batch_size, lr, weight_decay, log_every

    def train_config(self) -> SegTrainConfig:
        """The segmenter optimisation settings of this run."""
        return SegTrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            lr_schedule=self.lr_schedule,
            seed=self.seed,
            crop_size=self.crop_size if self.resolution == "native" else None,
            defect_crop_fraction=self.defect_crop_fraction,
            log_every=self.log_every,
            channels_last=self.channels_last,
            augment=self.augment,
        )

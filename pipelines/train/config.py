"""``TrainConfig``: what ``fastgen train`` trains (dataset, model preset or base, stages), how, and where it writes.

YAML keys equal the field names; :func:`pipelines.config.load_config` rejects unknown keys by name. Every check that
needs no file system runs in ``__post_init__``; :func:`check_dataset` (called by ``run_training`` before any work)
checks the dataset folder and its categories.

The run lives at ``<storage_path>/<run_name>``; the published model at ``publish_uri`` or, when that is unset,
``<storage_path>/<run_name>/model``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fast_core.configbase import check_choices
from fast_core.data.layout import Layout, find_categories
from fast_core.masks.diffusion import MaskDiffusionConfig, MaskFrame
from pipelines import storage as st
from pipelines.storage import StorageConfig

StageName = Literal["vae", "base", "fast", "mask"]
Precision = Literal["none", "bf16", "fp16"]
Preset = Literal["tiny", "cpu_small", "full"]

#: The order stages run in (a config lists a subset; it is always run in this order).
STAGE_ORDER: tuple[str, ...] = ("vae", "base", "fast", "mask")
_RUN_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _positive_int(where: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an integer >= 1, got {value!r}")


@dataclass(kw_only=True)
class DatasetConfig:
    """The training images: a local dataset folder in the MVTec (or BTAD) layout, resized to ``image_size``."""

    root: str = ""  # local folder: one category folder (train/ + test/) or a folder of them
    layout: Layout = "mvtec"  # "mvtec" or "btad"
    categories: tuple[str, ...] | None = None  # only these categories (None: every category found)
    image_size: int = 256  # S: images and masks are resized to S × S (a multiple of the VAE's factor)
    image_channels: int = 3  # 1 (grayscale: images converted to L) or 3 (RGB)
    hflip: bool = True  # augmentation: flip each training image left-right with probability 1/2 (mask with it)
    vflip: bool = False  # augmentation: flip each training image upside down with probability 1/2 (mask with it)
    # "global": whole images resized to image_size (the paper); "window": image_size² windows cut at the images' own
    # pixel size around each training-third defect and at random in normal images (FAST_SPEC §9)
    frame: Literal["global", "window"] = "global"
    windows_per_defect: int = 8  # window frame: windows per training-third defect image (random offsets)
    windows_per_normal: int = 1  # window frame: random windows per train/good image
    window_margin: float = 0.25  # window frame: side = max(⌈image_size / zoom⌉, ⌈box side · (1 + margin)⌉), resized
    window_rot90: bool = True  # window frame: turn each defect window by a random multiple of 90° (mask with it)
    # window frame [ours]: the smallest window is ⌈image_size / zoom⌉ pixels, resized up to image_size, so a small
    # defect spans zoom× more latent cells (normal windows are cut at that side too); stored with the model
    window_zoom: float = 1.0
    # window frame: flip each window (defect and normal) left-right and upside down with probability 1/2 each when it
    # is cut, once, instead of at every step (hflip/vflip); what a latent cache needs (TrainConfig.latent_cache)
    window_flips: bool = False
    # window frame [ours]: each window's grey levels are moved once as it is cut, x ← c (x − x̄) + x̄ + b with
    # c ~ U[1 − j, 1 + j] and b ~ U[−j, j] · 128 (x̄ the window's mean), so a defect's absolute level says nothing and
    # the UNet must paint it relative to the background it sees; 0 = off
    window_jitter: float = 0.0
    # window frame [ours]: each window is scaled by one gain so that its background (the pixels outside its mask) has
    # the mean grey level L of the training windows (their median), in training and synthesis alike, so a defect is
    # learned and painted relative to the background it lies on (fast_core.data.window_level); L goes with the model
    window_level: bool = False
    # An inpaint UNet's base stage: each normal image borrows a training mask (key "good") and learns to fill it with
    # normal texture (true), or keeps an empty mask, so that a mask is only ever filled with a defect (false)
    normal_masks: bool = True

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.root:
            raise ValueError("TrainConfig.dataset.root is empty; give a local dataset folder")
        if "://" in self.root and not self.root.startswith("file://"):
            raise ValueError(
                f"TrainConfig.dataset.root = {self.root!r}: dataset roots are local folders; copy the dataset first"
            )
        if self.categories is not None and not self.categories:
            raise ValueError("TrainConfig.dataset.categories is an empty list; use null for every category")
        _positive_int("TrainConfig.dataset.image_size", self.image_size)
        if self.image_channels not in (1, 3):
            raise ValueError(f"TrainConfig.dataset.image_channels must be 1 or 3, got {self.image_channels!r}")
        _positive_int("TrainConfig.dataset.windows_per_defect", self.windows_per_defect)
        if (
            isinstance(self.windows_per_normal, bool)
            or not isinstance(self.windows_per_normal, int)
            or (self.windows_per_normal < 0)
        ):
            raise ValueError(
                f"TrainConfig.dataset.windows_per_normal must be an integer >= 0, got {self.windows_per_normal!r}"
            )
        for name in ("hflip", "vflip", "window_rot90", "window_flips", "window_level", "normal_masks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.dataset.{name} must be true or false, got {getattr(self, name)!r}")
        if self.window_flips and self.frame != "window":
            raise ValueError("TrainConfig.dataset.window_flips needs frame: window (it flips windows as they are cut)")
        if not isinstance(self.window_margin, int | float) or not 0.0 <= self.window_margin <= 4.0:
            raise ValueError(f"TrainConfig.dataset.window_margin must be in [0, 4], got {self.window_margin!r}")
        zoom = self.window_zoom
        if isinstance(zoom, bool) or not isinstance(zoom, int | float) or not 1.0 <= zoom <= 8.0:
            raise ValueError(f"TrainConfig.dataset.window_zoom must be in [1, 8], got {zoom!r}")
        jitter = self.window_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0.0 <= jitter <= 0.5:
            raise ValueError(f"TrainConfig.dataset.window_jitter must be in [0, 0.5], got {jitter!r}")
        if jitter and self.frame != "window":
            raise ValueError("TrainConfig.dataset.window_jitter needs frame: window (it moves windows as they are cut)")
        if self.window_level and self.frame != "window":
            raise ValueError("TrainConfig.dataset.window_level needs frame: window (it scales windows as they are cut)")
        if self.window_zoom != 1.0 and self.frame != "window":
            raise ValueError("TrainConfig.dataset.window_zoom needs frame: window (it sets the windows' smallest side)")

    @property
    def local_root(self) -> Path:
        """``root`` without a ``file://`` prefix."""
        return Path(self.root.removeprefix("file://"))


@dataclass(kw_only=True)
class ModelConfig:
    """The model: a preset trained from scratch, or FAST on a given diffusers/CompVis base (``base_model_uri``)."""

    preset: Preset = "tiny"  # shapes of a from-scratch model (fast_core.models.ldm.model_preset)
    base_model_uri: str | None = None  # a base LDM dir (local or s3://): vae/base stages are skipped, FAST fine-tunes
    # A folder (local or s3://) with the pretrained TAEF2 first stage (taef2_encoder.pth, taef2_decoder.pth, LICENSE):
    # the first stage is then frozen, and stage "vae" only measures the latent scale s = 1 / std(E(x)) on the data.
    first_stage_uri: str | None = None
    # with first_stage_uri: stage "vae" also measures each latent channel's mean μ, and z = s · (E(x) − μ), so the
    # denoiser's "don't know" estimate ẑ0 = 0 decodes as the data's mean image, not TAEF2's flat grey D(0) [ours]
    latent_shift: bool = False
    adaptor_mode: Literal["replace", "residual_zero_init", "none"] | None = None  # override the preset's Adaptor mode
    mask_downsample: Literal["bilinear", "any"] | None = None  # override the preset's pixel → latent mask rule
    # "inpaint": the UNet also takes the latent mask and the clean background beside it (z_t ‖ m ‖ (1 − m) z_0);
    # "inpaint_px" [ours]: and the pixel mask folded into the latent grid, so it knows where in a cell the defect lies
    unet_conditioning: Literal["none", "inpaint", "inpaint_px"] | None = None  # override the preset's (none)
    # what the base UNet learns: ε (FAST_SPEC §1) or v = √ᾱ_t ε − √(1−ᾱ_t) z_0 [ours] (UNetConfig.prediction)
    unet_prediction: Literal["epsilon", "v_prediction"] | None = None  # override the preset's (epsilon)
    # the defect key also enters the UNet as a learned vector added to its timestep embedding, so it conditions every
    # ResNet block, not only the cross-attention layers (UNetConfig.key_embedding) [ours]
    unet_key_embedding: bool = False
    farm_keyed: bool = False  # a defect-aware FARM (one learned embedding per key, FARMConfig.num_keys) [ours]
    farm_skips: bool = False  # FARM's decoder also reads the encoder features at h/2 and h (FARMConfig.skips) [ours]
    # FARM corrects the linear estimate: ẑ0_fg = m ⊙ (√ᾱ_t z_t + √(1−ᾱ_t) F) (FARMConfig.residual) [ours]
    farm_residual: bool = False
    # FARM also reads the mask and the clean background beside it, z_t ‖ m ‖ (1 − m) z_0 (FARMConfig.context) [ours]
    farm_context: bool = False
    # FARM also reads the pixel mask folded into the latent grid (FARMConfig.mask_detail = f²), as an inpaint_px UNet
    # does, so its estimate can put a thin defect where it lies inside a masked cell [ours]
    farm_pixel_mask: bool = False

    def __post_init__(self) -> None:
        check_choices(self)
        if self.base_model_uri is not None and not self.base_model_uri:
            raise ValueError("TrainConfig.model.base_model_uri is empty; use null to train from scratch")
        if self.first_stage_uri is not None and not self.first_stage_uri:
            raise ValueError("TrainConfig.model.first_stage_uri is empty; use null to train a KL VAE first stage")
        for name in (
            "farm_keyed",
            "farm_skips",
            "farm_residual",
            "farm_context",
            "farm_pixel_mask",
            "latent_shift",
            "unet_key_embedding",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.model.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("unet_conditioning", "unet_prediction", "unet_key_embedding"):
            if getattr(self, name) not in (None, False) and self.base_model_uri is not None:
                raise ValueError(
                    f"TrainConfig.model.{name} applies to a base trained here; a loaded base "
                    "(base_model_uri) brings its own UNet"
                )
        if self.latent_shift and self.first_stage_uri is None:
            raise ValueError(
                "TrainConfig.model.latent_shift is measured on a pretrained first stage; set model.first_stage_uri "
                "(a KL VAE trained here keeps its latents near zero mean by its KL term)"
            )
        if self.first_stage_uri is not None and self.base_model_uri is not None:
            raise ValueError(
                "TrainConfig.model: first_stage_uri and base_model_uri are exclusive (a base has its own first stage)"
            )


@dataclass(kw_only=True)
class MaskModelSettings:
    """The mask diffusion model of stage "mask" (fast_core.masks.diffusion.MaskDiffusionConfig without the keys).

    ``frame`` says what the model learns from each training-third mask:

    * ``"stretch"`` (the default): its bounding box at its own resolution resampled to S × S along each axis on its own
      (fast_core.masks.shapes.stretched_shape; pipelines.train.mask_data), with its box record (box_h / H, box_w / W,
      stretched fill) stored per key with the model (``box_records``); the masks stage places each sample in the box
      of a real mask of similar fill, so sizes and aspects are real ones. A thin crack is a band across the square
      instead of a one-cell line. 90° turns would swap a box's sides, so ``rotate90`` must be off (the flips keep
      them). Independent of ``dataset.frame`` and ``dataset.image_size``.
    * ``"box"``: its shape at its own resolution, fast_core.masks.shapes.normalised_shape(M, S) (bounding box padded
      to a centred square, any-pooled down / nearest up to S × S), with its size kept apart as
      f = max(box_h, box_w) / √(H · W) and stored per key with the model (``box_sides``); the masks stage places each
      sample at a drawn real size.
    * ``"image"``: the whole mask as the generator's data has it (``dataset.image_size``, or a window), nearest-resized
      to S × S; defects of a few pixels vanish.
    """

    image_size: int = 64  # S of the generated masks (stretch, box: the shape's frame; image: the whole mask)
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # channels per resolution level, highest resolution first
    layers_per_block: int = 1  # ResNet blocks per level
    norm_num_groups: int = 8  # GroupNorm groups
    attention_head_dim: int = 8  # channels per attention head (lowest level only)
    # augmentation: rotate each training mask by a random multiple of 90° (plus the flips); null: on for the box and
    # image frames, off for stretch (where it must be off)
    rotate90: bool | None = None
    # "stretch": boxes stretched to S × S + real sizes and aspects; "box": shapes padded to a square + real sizes;
    # "image": whole masks resized to S × S
    frame: MaskFrame = "stretch"

    def __post_init__(self) -> None:
        check_choices(self)
        if self.frame == "stretch" and self.rotate90 is True:
            raise ValueError(
                "mask_model.rotate90 must be false with frame 'stretch': a turn swaps a stretched shape's axes but not "
                "the real box it is placed in (the flips keep both)"
            )

    @property
    def turns(self) -> bool:
        """Whether the mask stage turns its training masks by 90° multiples (``rotate90``, or the frame's default)."""
        return self.frame != "stretch" if self.rotate90 is None else self.rotate90


@dataclass(kw_only=True)
class StageConfig:
    """One stage's optimisation and bookkeeping intervals (all in optimizer steps)."""

    steps: int = 100  # optimizer steps of this stage
    batch_size: int = 8  # images per worker per step (the global batch is batch_size × num_workers)
    lr: float = 1e-4  # AdamW learning rate (after a linear warm-up: constant, or cosine-decayed, see lr_schedule)
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up; cosine ends at lr_final · lr
    lr_final: float = 0.1  # cosine: the last step's learning rate as a fraction of lr
    # EMA of the stage's weights, w̄ ← d·w̄ + (1 − d)·w after every step with d = min(ema_decay, (1 + k) / (10 + k));
    # checkpointed with the weights, and what later stages and the published model use. None: no EMA.
    ema_decay: float | None = None
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float | None = 1.0  # clip the global gradient norm to this (None: no clipping)
    checkpoint_every: int = 100  # save a checkpoint every N steps (and always at the last step)
    log_every: int = 10  # log a progress line and a metrics.jsonl record every N steps (and at the last step)
    sample_every: int | None = None  # write a sample grid every N steps (None: at every checkpoint); 0: never
    keep_checkpoints: int = 2  # checkpoints kept per stage (older ones are deleted; the stage's final one stays)

    def check(self, where: str) -> None:
        """Raise ``ValueError`` naming ``where`` and the field for any value out of range."""
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
            _positive_int(f"{where}.{name}", getattr(self, name))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"{where}.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"{where}.lr must be > 0, got {self.lr!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{where}.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.lr_final <= 1:
            raise ValueError(f"{where}.lr_final must be in [0, 1], got {self.lr_final!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"{where}.ema_decay must be in (0, 1) or null, got {self.ema_decay!r}")
        if self.weight_decay < 0:
            raise ValueError(f"{where}.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"{where}.max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}")
        if self.sample_every is not None and (
            isinstance(self.sample_every, bool) or not isinstance(self.sample_every, int) or self.sample_every < 0
        ):
            raise ValueError(f"{where}.sample_every must be an integer >= 0 or null, got {self.sample_every!r}")

    @property
    def grid_every(self) -> int:
        """Steps between sample grids (0: none)."""
        return self.checkpoint_every if self.sample_every is None else self.sample_every


@dataclass(kw_only=True)
class StagesConfig:
    """Per-stage settings; only the stages named in ``TrainConfig.stages`` run."""

    vae: StageConfig = field(default_factory=lambda: StageConfig(lr=4.5e-4))
    base: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-4))
    fast: StageConfig = field(default_factory=lambda: StageConfig(lr=1e-4))
    mask: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-4))

    def __post_init__(self) -> None:
        for name in STAGE_ORDER:
            getattr(self, name).check(f"TrainConfig.stage.{name}")
        if self.vae.ema_decay is not None:
            raise ValueError(
                "TrainConfig.stage.vae.ema_decay: the VAE stage keeps no EMA (its latent scale is measured on the "
                "trained weights); use null"
            )


@dataclass(kw_only=True)
class LossSettings:
    """ε-loss weighting of the base and FAST stages [ours] (``fast_core.training.eps_loss``):

        w = 1 + fg_weight · down(M);   loss_ε = Σ w (ε̂ − ε)² / (C · Σ w)

    0 is FAST_SPEC §6's plain mean. Defects cover a few per cent of the latent, so under the plain mean a short
    training run learns the background and barely the defect; fg_weight ≈ (1 − f)/f (f the foreground fraction)
    gives the two equal shares. Normal images (base stage) have an empty mask and keep weight 1 everywhere.

    ``snr_gamma`` γ also weights each sample's ε term by min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1 − ᾱ_t) (min-SNR-γ,
    ``fast_core.training.min_snr_weight``): the nearly clean timesteps stop dominating the gradient. null: off.
    """

    fg_weight: float = 0.0  # λ_fg ≥ 0: extra weight of anomaly latent cells in the base and FAST ε-losses
    snr_gamma: float | None = None  # γ > 0 of the min-SNR weighting of the base and FAST ε-losses; null: off

    def __post_init__(self) -> None:
        w = self.fg_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"TrainConfig.loss.fg_weight must be a finite number >= 0, got {w!r}")
        self.fg_weight = float(w)
        g = self.snr_gamma
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float) or not 0 < g < math.inf):
            raise ValueError(f"TrainConfig.loss.snr_gamma must be a number > 0 or null (off), got {g!r}")
        self.snr_gamma = None if g is None else float(g)


@dataclass(kw_only=True)
class ScalingSettings:
    """Ray Train workers: ``ScalingConfig(num_workers, use_gpu, resources_per_worker={"CPU": cpus_per_worker})``."""

    num_workers: int = 1  # data-parallel workers (DDP when > 1)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: int = 1  # logical CPUs Ray reserves per worker
    torch_threads: int | None = None  # torch intra-op threads per worker (None: cpus_per_worker)
    mixed_precision: Precision = "none"  # autocast dtype of the networks on GPU: none, bf16, fp16 (+ grad scaling)
    # Worker failures (a lost worker process or node, any error raised in a worker) Ray Train recovers from per stage
    # by restarting the workers from the stage's latest checkpoint; 0 fails at the first one. A deterministic error
    # (a NaN loss) repeats on the restart and then fails with its own message.
    max_failures: int = 1

    def __post_init__(self) -> None:
        check_choices(self)
        _positive_int("TrainConfig.scaling.num_workers", self.num_workers)
        _positive_int("TrainConfig.scaling.cpus_per_worker", self.cpus_per_worker)
        if self.torch_threads is not None:
            _positive_int("TrainConfig.scaling.torch_threads", self.torch_threads)
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"TrainConfig.scaling.max_failures must be an integer >= 0, got {self.max_failures!r}")
        if self.mixed_precision != "none" and not self.use_gpu:
            raise ValueError(
                f"TrainConfig.scaling.mixed_precision = {self.mixed_precision!r} needs use_gpu: true "
                "(on CPU train in float32: mixed_precision: none)"
            )

    @property
    def threads(self) -> int:
        """Torch threads per worker."""
        return self.torch_threads or self.cpus_per_worker


@dataclass(kw_only=True)
class FaultConfig:
    """Test-only fault injection (both null in real runs)."""

    stage: StageName | None = None  # the stage the faults apply to (None: every stage)
    stop_after_steps: int | None = None  # raise an interruption right after this step (and its checkpoint, if any)
    inject_nan_at_step: int | None = None  # make the loss NaN at this step
    kill_worker_after_step: int | None = None  # SIGKILL worker rank 0 right after this step (and its checkpoint), once

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("stop_after_steps", "inject_nan_at_step", "kill_worker_after_step"):
            if getattr(self, name) is not None:
                _positive_int(f"TrainConfig.fault.{name}", getattr(self, name))

    def applies(self, stage: str) -> bool:
        """Whether the faults apply to ``stage``."""
        return self.stage is None or self.stage == stage


@dataclass(kw_only=True)
class TrainConfig:
    """Everything ``fastgen train`` needs; see the module docstring for where outputs go."""

    run_name: str = ""  # the run's folder name under storage_path; a rerun with the same name resumes
    storage_path: str = ""  # local folder or s3://bucket/prefix holding runs (checkpoints, metrics, sample grids)
    publish_uri: str | None = None  # where the final model is published (None: <storage_path>/<run_name>/model)
    storage: StorageConfig = field(default_factory=StorageConfig)  # S3 endpoint/credentials for s3:// URIs
    dataset: DatasetConfig  # the training images
    model: ModelConfig = field(default_factory=ModelConfig)  # preset or base model
    stages: tuple[StageName, ...] = ("vae", "base", "fast")  # stages to run (always in the order vae, base, fast, mask)
    stage: StagesConfig = field(default_factory=StagesConfig)  # per-stage steps, batch size, lr, intervals
    loss: LossSettings = field(default_factory=LossSettings)  # ε-loss foreground weighting (base and FAST stages)
    mask_model: MaskModelSettings = field(default_factory=MaskModelSettings)  # shape of the stage "mask" model
    scaling: ScalingSettings = field(default_factory=ScalingSettings)  # Ray Train workers and precision
    seed: int = 0  # model initialisation, data order, augmentation, noise: same seed → same run on CPU
    grid_samples: int = 4  # samples per key / images per row in the sample grids
    grid_nfe: int = 10  # sampler steps for the base/FAST sample grids
    fault: FaultConfig = field(default_factory=FaultConfig)  # test-only fault injection
    # Encode every training image of the base and FAST stages once, when the stage starts, instead of at every step:
    # the first stage is frozen there, so z_0 = encode(x) never changes (on 2 CPU cores TAEF2's encoder is ~70 % of a
    # window step). Per-step flips would change x, so it needs dataset.hflip and vflip off (window_flips instead; a
    # mask stage in the same run then trains without flips too).
    latent_cache: bool = False

    def __post_init__(self) -> None:
        if not self.run_name or set(self.run_name) - _RUN_NAME_CHARS:
            raise ValueError(
                f"TrainConfig.run_name = {self.run_name!r} must be a non-empty name of letters, digits, '-', '_', '.'"
            )
        if not self.storage_path:
            raise ValueError("TrainConfig.storage_path is empty; give a local folder or s3://bucket/prefix")
        # Absolute local paths: Ray Train workers write checkpoints from their own working directory.
        self.storage_path = st.absolute(self.storage_path)
        st.join(self.storage_path, self.run_name)  # validates the URI form
        if self.publish_uri is not None:
            self.publish_uri = st.absolute(self.publish_uri)
            st.join(self.publish_uri, "model.json")
        for name in ("first_stage_uri", "base_model_uri"):  # read by the workers too
            uri = getattr(self.model, name)
            if uri is not None:
                setattr(self.model, name, st.absolute(uri))
        if not self.stages:
            raise ValueError(f"TrainConfig.stages is empty; name at least one of {', '.join(STAGE_ORDER)}")
        stages = tuple(self.stages)
        dupes = sorted({s for s in stages if stages.count(s) > 1})
        if dupes:
            raise ValueError(f"TrainConfig.stages lists {dupes} more than once")
        self.stages = tuple(s for s in STAGE_ORDER if s in stages)
        if self.model.base_model_uri is not None and set(self.stages) & {"vae", "base"}:
            raise ValueError(
                "TrainConfig: model.base_model_uri is set, so the base is given: remove 'vae' and 'base' from stages "
                f"(got {list(self.stages)})"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be an integer >= 0, got {self.seed!r}")
        _positive_int("TrainConfig.grid_samples", self.grid_samples)
        if not 2 <= self.grid_nfe <= 1000:
            raise ValueError(f"TrainConfig.grid_nfe must be in 2..1000, got {self.grid_nfe!r}")
        if "mask" in self.stages:  # validates the mask model's shape up front (placeholder key and size)
            size = [0.1, 0.1, 0.5] if self.mask_model.frame == "stretch" else 0.1
            mask_model_config(self, ["category/defect"], {"category/defect": [size]})
        if not isinstance(self.latent_cache, bool):
            raise ValueError(f"TrainConfig.latent_cache must be true or false, got {self.latent_cache!r}")
        if self.latent_cache and (self.dataset.hflip or self.dataset.vflip):
            raise ValueError(
                "TrainConfig.latent_cache encodes each training image once, so per-step flips (dataset.hflip, "
                "dataset.vflip) cannot apply: set both false (in the window frame, dataset.window_flips flips each "
                "window once as it is cut)"
            )
        if self.fault.stage is not None and self.fault.stage not in self.stages:
            raise ValueError(f"TrainConfig.fault.stage = {self.fault.stage!r} is not one of the stages {self.stages}")

    @property
    def run_uri(self) -> str:
        """``<storage_path>/<run_name>``: checkpoints, metrics.jsonl, samples/, stages/."""
        return st.join(self.storage_path, self.run_name)

    @property
    def mask_model_uri(self) -> str:
        """Where the trained mask diffusion model is written (stage "mask")."""
        return st.join(self.run_uri, "mask_model")

    @property
    def model_uri(self) -> str:
        """Where the final model is published."""
        return self.publish_uri or st.join(self.run_uri, "model")

    def stage_config(self, stage: str) -> StageConfig:
        """The :class:`StageConfig` of ``stage``."""
        return getattr(self.stage, stage)


def mask_model_config(
    cfg: TrainConfig, defect_keys: list[str], box_sizes: dict[str, list[Any]] | None = None
) -> MaskDiffusionConfig:
    """The :class:`MaskDiffusionConfig` of stage "mask" for ``defect_keys``; the box and stretch frames also need every
    key's real sizes ``box_sizes`` (pipelines.train.mask_data: side fractions, or [box_h, box_w] fractions), the
    image frame none.

    Raises:
        ValueError: a bad shape, or a box or stretch frame without sizes for a key.
    """
    m = cfg.mask_model
    if m.frame != "image" and box_sizes is None:
        raise ValueError(
            f"mask_model_config: mask_model.frame = {m.frame!r} needs the real masks' sizes (pipelines.train.mask_data)"
        )
    return MaskDiffusionConfig(
        keys=tuple(defect_keys),
        image_size=m.image_size,
        block_out_channels=m.block_out_channels,
        layers_per_block=m.layers_per_block,
        norm_num_groups=m.norm_num_groups,
        attention_head_dim=m.attention_head_dim,
        frame=m.frame,
        box_sides=dict(box_sizes) if m.frame == "box" and box_sizes is not None else {},
        box_records=dict(box_sizes) if m.frame == "stretch" and box_sizes is not None else {},
    )


def check_dataset(cfg: DatasetConfig) -> list[str]:
    """Check that the dataset folder exists and holds the configured categories; returns the category names."""
    return [p.name for p in find_categories(cfg.local_root, cfg.categories)]

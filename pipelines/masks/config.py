"""``MasksConfig``: what ``fastgen masks`` reads (dataset, mask model), how it makes masks, and where it writes them.

Only :meth:`MasksConfig.content` (dataset, counts, sources, size, augmentation, filters, diffusion sampling, seed,
shard size) decides the bytes of the output; compute, storage, cache and contact-sheet settings do not, so they may
change between a run and its resume. A setting added after outputs were made stays out of the content while it has
its default (:data:`LATER_DIFFUSION_FIELDS`), so those outputs keep their fingerprint and still resume.

Every check that needs no file system runs in ``__post_init__``; the checks that need the dataset (unknown
``counts.per_key`` keys, keys without usable real masks, keys the mask model lacks) run in
:func:`pipelines.masks.plan.build_plan`, still before anything is written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from fast_core.configbase import check_choices, to_dict
from fast_core.data.layout import Layout
from fast_core.masks import MaskAugmentConfig, MaskFilterConfig
from pipelines.config import without_later_defaults
from pipelines.storage import StorageConfig

#: Most masks per defect key: sample_id indices have six digits.
MAX_COUNT = 999_999
SOURCE_NAMES = ("augment", "diffusion", "real")
#: Diffusion settings added after mask outputs were made, at the value that reproduces those outputs. The first were
#: sampled from whole-mask ("image" frame) models, which the jitter does not touch, and none dropped specks; a setting
#: at this value stays out of the fingerprint, so they are still recognised (and resumed, not refused). Absent means
#: this value: never change it. (``despeckle`` defaults to true, so new outputs carry it.)
LATER_DIFFUSION_FIELDS: dict[str, object] = {"jitter": 0.15, "despeckle": False}


def _positive_int(where: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or null" if allow_none else ""
        raise ValueError(f"MasksConfig.{where} must be an integer >= 1{extra}, got {value!r}")


@dataclass(kw_only=True)
class MasksDatasetConfig:
    """The dataset whose generator-training third of real masks the generated masks derive from."""

    root: str = ""  # local dataset folder (a category folder or a folder of them)
    layout: Layout = "mvtec"  # "mvtec" or "btad"
    categories: tuple[str, ...] | None = None  # only these categories (None: every category found)

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.root:
            raise ValueError("MasksConfig.dataset.root is empty; give a local dataset folder")
        if "://" in self.root and not self.root.startswith("file://"):
            raise ValueError(
                f"MasksConfig.dataset.root = {self.root!r}: dataset roots are local folders; copy the dataset first"
            )
        if self.categories is not None and not self.categories:
            raise ValueError("MasksConfig.dataset.categories is an empty list; use null for every category")

    @property
    def local_root(self) -> str:
        """``root`` without a ``file://`` prefix."""
        return self.root.removeprefix("file://")


@dataclass(kw_only=True)
class MasksCountsConfig:
    """Masks per (category, defect type): ``per_key["<category>/<defect>"]`` where given, else ``default``."""

    default: int = 100  # 1..MAX_COUNT
    per_key: dict[str, int] = field(default_factory=dict)  # "<category>/<defect>" → masks (1..MAX_COUNT)

    def __post_init__(self) -> None:
        if not 1 <= self.default <= MAX_COUNT:
            raise ValueError(f"MasksConfig.counts.default = {self.default} must be in 1..{MAX_COUNT}")
        for key, n in self.per_key.items():
            if key.count("/") != 1 or not all(key.split("/")):
                raise ValueError(f"MasksConfig.counts.per_key: {key!r} is not of the form '<category>/<defect>'")
            if not 1 <= n <= MAX_COUNT:
                raise ValueError(f"MasksConfig.counts.per_key[{key!r}] = {n} must be in 1..{MAX_COUNT}")

    def count(self, key: str) -> int:
        """The number of masks for the defect key ``key``."""
        return self.per_key.get(key, self.default)


@dataclass(kw_only=True)
class MasksSourcesConfig:
    """Relative weights of the mask sources; each plan row draws its source with probability ``w_s / Σ w``.

    ``augment``: :func:`fast_core.masks.augment_mask` of a real training mask; ``diffusion``: a sample of the mask
    diffusion model at ``mask_model_uri``; ``real``: a copy of a real training mask (resized to the output size).
    """

    augment: float = 1.0
    diffusion: float = 0.0
    real: float = 0.0

    def __post_init__(self) -> None:
        for name in SOURCE_NAMES:
            w = getattr(self, name)
            if not w >= 0:
                raise ValueError(f"MasksConfig.sources.{name} = {w} must be >= 0")
        if self.augment + self.diffusion + self.real <= 0:
            raise ValueError("MasksConfig.sources: every weight is 0; give at least one source a weight > 0")

    def weights(self) -> dict[str, float]:
        """source → probability, in :data:`SOURCE_NAMES` order (weights normalised to sum 1)."""
        total = self.augment + self.diffusion + self.real
        return {name: getattr(self, name) / total for name in SOURCE_NAMES}


@dataclass(kw_only=True)
class MaskSamplingConfig:
    """How the mask diffusion model is sampled (AIAS, :func:`fast_core.masks.sample_masks`) and, for a box- or
    stretch-frame model, placed (:mod:`fast_core.masks.placement`: sizes f* · eᵘ · √(H · W), u ~ U(−jitter, jitter);
    with ``despeckle``, a sample's components below ``filter.min_component_px`` pixels at the drawn size are dropped
    and at most ``filter.max_components`` of the largest kept before it is trimmed and placed)."""

    nfe: int = 10  # network evaluations per sample (>= 3)
    threshold: float = 0.0  # binarisation level of x̂_0 on the [−1, 1] scale
    jitter: float = 0.15  # box/stretch frame: sizes spread around the real ones by a factor in [e^−jitter, e^jitter]
    despeckle: bool = True  # box/stretch frame: drop a sample's specks (see above) before it is placed

    def __post_init__(self) -> None:
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 3:
            raise ValueError(f"MasksConfig.diffusion.nfe = {self.nfe!r} must be an integer >= 3")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"MasksConfig.diffusion.threshold = {self.threshold} must lie in [-1, 1]")
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, int | float) or not 0.0 <= j < math.inf:
            raise ValueError(f"MasksConfig.diffusion.jitter = {j!r} must be a finite number >= 0")
        self.jitter = float(j)


@dataclass(kw_only=True)
class MasksComputeConfig:
    """How the Ray Data pipeline is sized."""

    batch_size: int = 16  # plan rows per generate call (a Ray Data batch)
    task_cpus: float = 1.0  # CPUs per augment / real-mask task
    cpu_tasks: int | None = None  # max concurrent CPU tasks (null: Ray Data decides)
    concurrency: int = 1  # mask diffusion sampler actors (only when sources.diffusion > 0)
    num_gpus: float = 0.0  # GPUs per sampler actor; > 0 samples on cuda
    num_cpus: float = 1.0  # CPUs per sampler actor (on CPU: its torch threads, rounded up)
    io_threads: int = 8  # parallel PNG writes per shard commit

    def __post_init__(self) -> None:
        _positive_int("compute.batch_size", self.batch_size)
        _positive_int("compute.cpu_tasks", self.cpu_tasks, allow_none=True)
        _positive_int("compute.concurrency", self.concurrency)
        _positive_int("compute.io_threads", self.io_threads)
        if self.num_gpus < 0 or self.num_cpus <= 0 or self.task_cpus <= 0:
            raise ValueError(
                "MasksConfig.compute: num_gpus must be >= 0, num_cpus and task_cpus > 0; got "
                f"{self.num_gpus}, {self.num_cpus}, {self.task_cpus}"
            )


@dataclass(kw_only=True)
class ContactSheetConfig:
    """``contact_sheet.png``: one row of accepted masks per defect key, then one row of rejected masks."""

    per_key: int = 8  # accepted masks shown per key (0: no contact sheet)
    rejected: int = 8  # rejected masks shown in the last row, labelled by reason
    tile: int = 96  # tile side in pixels; masks are fitted into it keeping their aspect ratio

    def __post_init__(self) -> None:
        for name in ("per_key", "rejected"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"MasksConfig.contact_sheet.{name} = {v!r} must be an integer >= 0")
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or not 16 <= self.tile <= 512:
            raise ValueError(f"MasksConfig.contact_sheet.tile = {self.tile!r} must be an integer in 16..512")


@dataclass(kw_only=True)
class MasksConfig:
    """Settings of ``fastgen masks``; ``out`` is a new directory URI (local or ``s3://``) per mask set."""

    dataset: MasksDatasetConfig = field(default_factory=MasksDatasetConfig)
    out: str = ""  # output URI: data/, masks/, rejected/, stats.json, contact_sheet.png, _SUCCESS
    counts: MasksCountsConfig = field(default_factory=MasksCountsConfig)
    sources: MasksSourcesConfig = field(default_factory=MasksSourcesConfig)
    size: tuple[int, int] | None = None  # output (height, width); null: the key's most common real mask shape
    augment: MaskAugmentConfig = field(default_factory=MaskAugmentConfig)
    filter: MaskFilterConfig = field(default_factory=MaskFilterConfig)
    foreground: bool = False  # estimate each category's object region from train/good images; reject masks outside
    mask_model_uri: str | None = None  # mask diffusion model dir (config.json + model.safetensors); for diffusion
    diffusion: MaskSamplingConfig = field(default_factory=MaskSamplingConfig)
    job_seed: int = 0  # every source draw and per-row seed derives from it (>= 0)
    shard_size: int = 256  # plan rows per output shard: shard k = rows [k·S, (k+1)·S)
    compute: MasksComputeConfig = field(default_factory=MasksComputeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)  # S3 settings for out and mask_model_uri
    model_cache_dir: str | None = None  # where s3:// mask models are cached (null: ~/.cache/fastgen/mask-models)
    contact_sheet: ContactSheetConfig = field(default_factory=ContactSheetConfig)

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("MasksConfig.out is empty; give a new output directory (local or s3://)")
        if self.job_seed < 0:
            raise ValueError(f"MasksConfig.job_seed = {self.job_seed} must be >= 0")
        _positive_int("shard_size", self.shard_size)
        if self.size is not None and min(self.size) < 8:
            raise ValueError(f"MasksConfig.size = {list(self.size)} must be two integers >= 8 (height, width) or null")
        if self.sources.diffusion > 0 and not self.mask_model_uri:
            raise ValueError("MasksConfig.mask_model_uri is required when sources.diffusion > 0")

    def content(self) -> dict[str, Any]:
        """The settings the output bytes depend on (paths made absolute; compute/storage/cache/sheet left out)."""
        data = to_dict(self)
        for name in ("out", "compute", "storage", "model_cache_dir", "contact_sheet"):
            data.pop(name)
        data["dataset"]["root"] = os.path.abspath(self.dataset.local_root)
        if self.sources.diffusion <= 0:
            data.pop("mask_model_uri")
            data.pop("diffusion")
            return data
        later = LATER_DIFFUSION_FIELDS
        data["diffusion"] = without_later_defaults(data["diffusion"], later)
        if self.mask_model_uri and "://" not in self.mask_model_uri:
            data["mask_model_uri"] = os.path.abspath(self.mask_model_uri)
        return data

"""``SynthesizeConfig``: what ``fastgen synthesize`` reads, where it writes, how it runs, and its test-only faults.

Only :meth:`SynthesizeConfig.content` (manifest, sampler, QC, shard size) decides the bytes of the output; compute,
storage, preview and fault settings do not, so changing them between a run and its resume is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from fast_core.configbase import check_choices, to_dict
from fast_core.qc import QCConfig
from fast_core.synthesis import SynthesisConfig
from pipelines.config import without_later_defaults
from pipelines.storage import StorageConfig

DType = Literal["float32", "float16", "bfloat16"]
#: What paints the anomaly: the FAST model, or a baseline of FAST_SPEC §8.5 (fast_core.baselines) that makes its own
#: mask. cutpaste, cutpaste_scar and perlin ignore the manifest's mask (the manifest still fixes the normal image and
#: the seed); realpaste pastes the row's real mask, cut with the defect image it belongs to, onto the normal image, at
#: a random flip / quarter turn / position, so it needs a manifest of real masks (``masks.source: real``).
Generator = Literal["fast", "cutpaste", "cutpaste_scar", "perlin", "realpaste"]


def _positive_int(where: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an integer >= 1{' or null' if allow_none else ''}, got {value!r}")


@dataclass(kw_only=True)
class ComputeConfig:
    """How the Ray Data pipeline is sized: the synthesizer actor pool and the CPU stages around it."""

    concurrency: int = 1  # FastSynthesizer actors (one per GPU on a GPU cluster)
    num_gpus: float = 0.0  # GPUs per actor; > 0 runs the model on cuda
    num_cpus: float = 1.0  # CPUs reserved per actor (on CPU: also its torch threads, rounded up)
    batch_size: int = 8  # rows per actor call (a Ray Data batch)
    dtype: DType = "float32"  # network precision; float16/bfloat16 need num_gpus > 0
    task_cpus: float = 1.0  # CPUs per load / encode task (single-threaded decode, resize, PNG encode)
    cpu_tasks: int | None = None  # max concurrent load / encode tasks each (null: Ray Data decides)
    io_threads: int = 8  # parallel PNG writes per shard commit

    def __post_init__(self) -> None:
        check_choices(self)
        _positive_int("compute.concurrency", self.concurrency)
        _positive_int("compute.batch_size", self.batch_size)
        _positive_int("compute.io_threads", self.io_threads)
        _positive_int("compute.cpu_tasks", self.cpu_tasks, allow_none=True)
        if self.num_gpus < 0 or self.num_cpus <= 0 or self.task_cpus <= 0:
            raise ValueError(
                f"compute.num_gpus must be >= 0, compute.num_cpus and compute.task_cpus > 0; got {self.num_gpus}, "
                f"{self.num_cpus}, {self.task_cpus}"
            )
        if self.dtype != "float32" and self.num_gpus == 0:
            raise ValueError(f"compute.dtype = {self.dtype!r} needs a GPU (compute.num_gpus > 0); use float32 on CPU")


@dataclass(kw_only=True)
class FaultConfig:
    """Fault injection for tests; both null in real runs."""

    kill_actor_after_batches: int | None = None  # an actor os._exit()s once, on its k-th batch (marker file: once)
    fail_writes_after_shards: int | None = None  # the k+1-th shard commit of this run fails before its marker

    def __post_init__(self) -> None:
        _positive_int("fault.kill_actor_after_batches", self.kill_actor_after_batches, allow_none=True)
        if self.fail_writes_after_shards is not None and (
            isinstance(self.fail_writes_after_shards, bool) or self.fail_writes_after_shards < 0
        ):
            raise ValueError(
                f"fault.fail_writes_after_shards must be >= 0 or null, got {self.fail_writes_after_shards}"
            )


@dataclass(kw_only=True)
class BaselineSettings:
    """Settings of the baseline generators (used only when ``generator`` is not ``fast``).

    Pairs are made at the published model's geometry (``image_size``, channels) so every method of a comparison is
    at one resolution. A baseline run without any model (a manifest written without ``model_uri``) names the
    geometry itself: ``image_size`` and ``image_channels``, both set; then no model is read. CutPaste cuts from the
    row's own normal image (the CutPaste paper's self-supervised setting).
    Realpaste finds each row's defect image in the dataset named by the manifest's ``manifest.json``
    (``dataset_root``, ``layout``) and uses the defaults of :class:`fast_core.baselines.RealPasteConfig`.
    """

    texture_dir: str | None = None  # perlin: a local folder of texture images; null: the manifest's normal images
    max_textures: int = 256  # perlin: at most this many textures (the first in sorted order) are used
    image_size: int | None = None  # with image_channels: pairs at S × S without reading a model; null: the model's
    image_channels: int | None = None  # 1 or 3, with image_size; null: the model's

    def __post_init__(self) -> None:
        _positive_int("baseline.max_textures", self.max_textures)
        _positive_int("baseline.image_size", self.image_size, allow_none=True)
        if (self.image_size is None) != (self.image_channels is None):
            raise ValueError("baseline.image_size and baseline.image_channels go together: set both or neither")
        if self.image_channels not in (None, 1, 3):
            raise ValueError(f"baseline.image_channels = {self.image_channels!r} must be 1 or 3")
        if self.texture_dir is not None and "://" in self.texture_dir:
            raise ValueError(f"baseline.texture_dir = {self.texture_dir!r} must be a local folder")


#: Settings added after datasets were first made, with the value that leaves the output as it was ("replace" was the
#: only paste): a setting at that value stays out of the fingerprint, so those datasets are still recognised (and
#: resumed, not remade). The sampler's also stay out for baselines, which paint without a sampler.
LATER_SAMPLER_FIELDS: dict[str, object] = {
    "paste": "replace",
    "guidance": 1.0,
    "clip_x0": None,
    "farm_min_t": 0,
    "start_t": 999,
    "smooth_scale": 0.5,
    "smooth_min_radius": 0,
    "smooth_max_sigma": None,
}
LATER_QC_FIELDS: dict[str, object] = {"min_change": 0.0}


@dataclass(kw_only=True)
class SynthesizeConfig:
    """Settings of ``fastgen synthesize``."""

    manifest: str  # manifest URI: a folder (or s3:// prefix) holding manifest.parquet and manifest.json
    out: str  # output dataset URI (a new folder or s3:// prefix per dataset version)
    model_uri: str | None = None  # null: the manifest's model_uri (one model per manifest)
    shard_size: int = 256  # manifest rows per output shard: shard k = rows [k·S, (k+1)·S)
    generator: Generator = "fast"  # "fast" (model + sampler) or a baseline: cutpaste, cutpaste_scar, perlin, realpaste
    baseline: BaselineSettings = field(default_factory=BaselineSettings)  # baseline generators only
    sampler: SynthesisConfig = field(default_factory=SynthesisConfig)  # sampler, NFE, FARM, background window
    qc: QCConfig = field(default_factory=QCConfig)  # output checks
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)  # for s3:// manifest, model and output
    model_cache_dir: str | None = None  # where s3:// models are cached locally (null: ~/.cache/fastgen/models)
    preview_pairs: int = 4  # pairs per defect type on the preview.png contact sheet, first in sample order (0: none)
    fault: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.generator == "fast" and self.baseline.image_size is not None:
            raise ValueError("baseline.image_size / image_channels are for baseline generators; fast uses its model's")
        for name in ("manifest", "out"):
            if not getattr(self, name):
                raise ValueError(f"SynthesizeConfig.{name} is empty; give a URI")
        _positive_int("shard_size", self.shard_size)
        if isinstance(self.preview_pairs, bool) or self.preview_pairs < 0:
            raise ValueError(f"preview_pairs must be >= 0, got {self.preview_pairs!r}")

    def content(self, model_uri: str) -> dict[str, Any]:
        """The settings the output bytes depend on (the sampler's batch_size is excluded: per-sample generators)."""
        sampler = without_later_defaults(to_dict(self.sampler), LATER_SAMPLER_FIELDS, drop_all=self.generator != "fast")
        sampler.pop("batch_size")
        if sampler.get("paste") != "smooth":  # these shape the bytes of the smooth paste only
            sampler.pop("smooth_scale", None)
            sampler.pop("smooth_min_radius", None)
            sampler.pop("smooth_max_sigma", None)
        manifest = self.manifest.rstrip("/")
        content: dict[str, Any] = {
            "manifest": manifest if "://" in manifest else os.path.abspath(manifest),
            "model_uri": model_uri,
            "shard_size": self.shard_size,
            "sampler": sampler,
            "qc": without_later_defaults(to_dict(self.qc), LATER_QC_FIELDS),
        }
        if self.generator != "fast":  # only then: outputs made before the field existed keep their fingerprint
            content["generator"] = self.generator
            baseline = to_dict(self.baseline)
            for name in ("image_size", "image_channels"):  # unset geometry: fingerprints made before it stay valid
                if baseline[name] is None:
                    baseline.pop(name)
            content["baseline"] = baseline
        return content

    @property
    def method(self) -> str:
        """The ``sampler`` column of the output rows: the sampler's name for FAST, else the baseline's name."""
        return self.sampler.sampler if self.generator == "fast" else self.generator


def content_hash(content: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of ``content``."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

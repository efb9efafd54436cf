"""``ManifestConfig``: what ``fastgen manifest`` pairs (dataset, mask source, counts, seed) and where it writes.

YAML keys equal the field names; :func:`pipelines.config.load_config` rejects unknown keys by name. Every check that
needs no file system runs in ``__post_init__``; the checks that need the dataset (unknown ``counts.per_key`` keys,
defects without usable masks) run in :func:`pipelines.manifest.plan_manifest`, still before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fast_core.configbase import check_choices
from fast_core.data.layout import Layout
from pipelines.storage import StorageConfig

MaskSourceKind = Literal["real", "shards"]
#: Most rows per defect key: sample_id indices have six digits.
MAX_COUNT = 999_999


@dataclass(kw_only=True)
class ManifestDatasetConfig:
    """The dataset whose ``train/good`` images are painted on and whose training-third masks are the real masks."""

    root: str = ""  # local dataset folder (a category folder or a folder of them); stored as absolute paths
    layout: Layout = "mvtec"  # "mvtec" or "btad"
    categories: tuple[str, ...] | None = None  # only these categories (None: every category found)

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.root:
            raise ValueError("ManifestConfig.dataset.root is empty; give a local dataset folder")
        if "://" in self.root and not self.root.startswith("file://"):
            raise ValueError(
                f"ManifestConfig.dataset.root = {self.root!r}: dataset roots are local folders; copy the dataset first"
            )
        if self.categories is not None and not self.categories:
            raise ValueError("ManifestConfig.dataset.categories is an empty list; use null for every category")

    @property
    def local_root(self) -> str:
        """``root`` without a ``file://`` prefix."""
        return self.root.removeprefix("file://")


@dataclass(kw_only=True)
class ManifestMasksConfig:
    """Where the masks come from.

    ``real``: the training third (the first ⌊n/3⌋ by file name) of each defect's ground-truth masks.
    ``shards``: a finished mask-stage output at ``shards_uri`` (``_SUCCESS`` present) whose ``data/*.parquet`` has
    columns ``sample_id, category, defect_type, mask`` (``struct<bytes, path>`` PNG).
    """

    source: MaskSourceKind = "real"
    shards_uri: str | None = None  # mask-stage output (local or s3://); required for source "shards" only
    embed_png: bool | None = None  # put the PNG bytes in mask_png instead of a mask_uri; None: false real, true shards

    def __post_init__(self) -> None:
        check_choices(self)
        if self.source == "shards" and not self.shards_uri:
            raise ValueError("ManifestConfig.masks.shards_uri is required when masks.source is 'shards'")
        if self.source == "real" and self.shards_uri is not None:
            raise ValueError(
                "ManifestConfig.masks.shards_uri is set but masks.source is 'real'; set source: shards or remove it"
            )

    @property
    def embed(self) -> bool:
        """Whether masks go into ``mask_png`` (the resolved ``embed_png``)."""
        return self.embed_png if self.embed_png is not None else self.source == "shards"


@dataclass(kw_only=True)
class ManifestCountsConfig:
    """Rows per (category, defect type): ``per_key["<category>/<defect>"]`` where given, else ``default``."""

    default: int = 500  # 1..MAX_COUNT
    per_key: dict[str, int] = field(default_factory=dict)  # "<category>/<defect>" → rows (1..MAX_COUNT)

    def __post_init__(self) -> None:
        if not 1 <= self.default <= MAX_COUNT:
            raise ValueError(f"ManifestConfig.counts.default = {self.default} must be in 1..{MAX_COUNT}")
        for key, n in self.per_key.items():
            if key.count("/") != 1 or not all(key.split("/")):
                raise ValueError(f"ManifestConfig.counts.per_key: {key!r} is not of the form '<category>/<defect>'")
            if not 1 <= n <= MAX_COUNT:
                raise ValueError(f"ManifestConfig.counts.per_key[{key!r}] = {n} must be in 1..{MAX_COUNT}")

    def count(self, key: str) -> int:
        """The number of rows for the defect key ``key``."""
        return self.per_key.get(key, self.default)


@dataclass(kw_only=True)
class ManifestConfig:
    """Settings of ``fastgen manifest``; ``out`` is a new directory URI (local or s3://) per manifest."""

    dataset: ManifestDatasetConfig = field(default_factory=ManifestDatasetConfig)
    masks: ManifestMasksConfig = field(default_factory=ManifestMasksConfig)
    counts: ManifestCountsConfig = field(default_factory=ManifestCountsConfig)
    job_seed: int = 0  # every pairing and per-row seed derives from it (>= 0)
    model_uri: str = ""  # the published model each row is synthesized with (every row); "" for baseline-only use
    out: str = ""  # manifest directory URI: manifest.parquet + manifest.json; immutable once written
    storage: StorageConfig = field(default_factory=StorageConfig)  # S3 settings for out and shards_uri

    def __post_init__(self) -> None:
        if self.job_seed < 0:
            raise ValueError(f"ManifestConfig.job_seed = {self.job_seed} must be >= 0")
        if not self.out:
            raise ValueError("ManifestConfig.out is empty; give a new manifest directory (local or s3://)")

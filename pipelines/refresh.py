"""A dataset refresh: one spec → masks → manifest → synthesis → validation → publish (``fastgen refresh``).

For a dataset spec (:class:`RefreshConfig`) a refresh writes one new dataset version and moves ``LATEST`` to it only
when the version passes validation::

    <prefix>/<name>/versions/<version>/             the synthesized dataset (DESIGN §4; _SUCCESS last)
    <prefix>/<name>/versions/<version>/_work/masks     mask-stage output (when the spec has a ``masks`` section)
    <prefix>/<name>/versions/<version>/_work/manifest  the manifest the version was synthesized from
    <prefix>/<name>/versions/<version>/_refresh/       the refresh's resolved config and validation.json
    <prefix>/<name>/LATEST                           moved atomically, only after validation passed

Validation (counts and rejections of the synthesized version):

    written / rows ≥ validation.min_written_fraction    and    rejected / rows ≤ validation.max_rejection_rate

Either way the summary is recorded as the version's ``_refresh/validation.json``
(:func:`pipelines.versions.record_validation`). A failed validation raises
:class:`pipelines.versions.ValidationFailedError`; the version stays, for diagnosis, as a *failed* version (complete as
files, never published) and ``LATEST`` is untouched.

Retention runs after every refresh, passed or failed (:func:`pipelines.versions.apply_retention`): it keeps the newest
``retention.keep`` validated versions and always the published one. Failed versions never count toward ``keep`` and
never displace a validated one; the newest ``retention.keep_failed`` of them stay and older ones are deleted.

Resume: the version id is ``<UTC time>-<spec hash8>``; a rerun of the same spec first looks for an unfinished version
(incomplete, or complete but not yet validated) with the same hash and continues it (each stage skips its committed
shards, the manifest is immutable), so a killed refresh rerun loses nothing and writes nothing twice. Every stage's
settings live in the spec; the refresh only supplies the paths, the dataset, the seed and the storage, and refuses
those keys in the stage sections.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fast_core.configbase import from_dict, to_dict
from fast_core.data.layout import Layout
from pipelines import storage as st
from pipelines.config import RESOLVED_NAME, dump_config
from pipelines.manifest import write_manifest
from pipelines.manifest_config import ManifestConfig, ManifestCountsConfig, ManifestDatasetConfig, ManifestMasksConfig
from pipelines.masks import MasksConfig, run_masks
from pipelines.storage import StorageConfig
from pipelines.synthesize import SynthesizeConfig, run_synthesis
from pipelines.versions import (
    KEEP_FAILED,
    REFRESH_DIR,
    ValidationFailedError,
    apply_retention,
    check_segment,
    list_versions,
    new_version_id,
    publish_latest,
    record_validation,
    spec_hash,
    version_uri,
)
from pipelines.versions import VALIDATION_NAME as VALIDATION_NAME  # re-exported: <version>/_refresh/validation.json

logger = logging.getLogger(__name__)

WORK_DIR = "_work"
# Keys the refresh fills in itself; a stage section that sets one is a config error.
MASKS_RESERVED = ("dataset", "out", "job_seed", "storage")
SYNTHESIZE_RESERVED = ("manifest", "out", "model_uri", "storage")


@dataclass(kw_only=True)
class RefreshDatasetConfig:
    """The normal images and real masks the version is made from (a local dataset root)."""

    root: str = ""
    layout: Layout = "mvtec"
    categories: tuple[str, ...] | None = None


@dataclass(kw_only=True)
class ValidationConfig:
    """When a new version may be published."""

    min_written_fraction: float = 0.8  # pairs written / manifest rows
    max_rejection_rate: float = 0.2  # rejected rows / manifest rows

    def __post_init__(self) -> None:
        for name in ("min_written_fraction", "max_rejection_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"validation.{name} must be in [0, 1], got {value!r}")


@dataclass(kw_only=True)
class RetentionConfig:
    """How many versions stay."""

    keep: int = 5  # newest validated versions kept (the published one is always kept; failed ones never count)
    keep_failed: int | None = KEEP_FAILED  # newest failed versions kept for diagnosis (null: all of them)
    prune_incomplete_after_s: float | None = None  # also delete incomplete/unvalidated versions idle this long

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"retention.keep must be an integer >= 1, got {self.keep!r}")
        if self.keep_failed is not None and self.keep_failed < 0:
            raise ValueError(f"retention.keep_failed must be an integer >= 0 or null, got {self.keep_failed!r}")


@dataclass(kw_only=True)
class RefreshConfig:
    """A dataset spec: what to make, from what, where to publish it, and each stage's settings."""

    name: str  # dataset name: <prefix>/<name>/
    prefix: str  # datasets prefix (local directory or s3://bucket/path)
    model_uri: str  # the published FAST model (pipelines.model_store layout)
    dataset: RefreshDatasetConfig = field(default_factory=RefreshDatasetConfig)
    counts: ManifestCountsConfig = field(default_factory=ManifestCountsConfig)  # pairs per defect type
    job_seed: int = 0
    masks: dict[str, Any] | None = None  # MasksConfig settings (no dataset/out/job_seed/storage); null: real masks
    synthesize: dict[str, Any] = field(default_factory=dict)  # SynthesizeConfig settings (no manifest/out/...)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    version: str | None = None  # an explicit version id (null: <UTC time>-<spec hash8>, or resume an incomplete one)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        check_segment(self.name, "name", "RefreshConfig")
        if self.version is not None:
            check_segment(self.version, "version", "RefreshConfig")
        for key in ("prefix", "model_uri"):
            if not getattr(self, key):
                raise ValueError(f"RefreshConfig.{key} is empty; give a URI")
        if not self.dataset.root:
            raise ValueError("RefreshConfig.dataset.root is empty; give the dataset folder")
        # Build every stage config now (placeholder paths), so a bad key fails before any work starts.
        placeholder = "refresh-config-check"
        if self.masks is not None:
            self.masks_config(placeholder)
        self.synthesize_config(placeholder)
        self.manifest_config(placeholder, None)

    # ---- the stage configs of one version
    def masks_config(self, version_dir: str) -> MasksConfig:
        """The mask stage's config for ``version_dir`` (requires a ``masks`` section)."""
        section = dict(self.masks or {})
        _refuse_reserved(section, MASKS_RESERVED, "masks")
        section.update(
            dataset=to_dict(self.dataset),
            out=work_uri(version_dir, "masks"),
            job_seed=self.job_seed,
            storage=to_dict(self.storage),
        )
        return from_dict(MasksConfig, section, "RefreshConfig.masks")

    def manifest_config(self, version_dir: str, masks_uri: str | None) -> ManifestConfig:
        """The manifest of ``version_dir``: real training-third masks, or the mask stage's output ``masks_uri``."""
        masks = ManifestMasksConfig(source="shards", shards_uri=masks_uri) if masks_uri else ManifestMasksConfig()
        return ManifestConfig(
            dataset=ManifestDatasetConfig(
                root=self.dataset.root, layout=self.dataset.layout, categories=self.dataset.categories
            ),
            masks=masks,
            counts=self.counts,
            job_seed=self.job_seed,
            model_uri=self.model_uri,
            out=work_uri(version_dir, "manifest"),
            storage=self.storage,
        )

    def synthesize_config(self, version_dir: str) -> SynthesizeConfig:
        """The synthesis stage's config: the manifest of ``version_dir`` into ``version_dir`` itself."""
        section = dict(self.synthesize)
        _refuse_reserved(section, SYNTHESIZE_RESERVED, "synthesize")
        section.update(
            manifest=work_uri(version_dir, "manifest"),
            out=version_dir,
            model_uri=self.model_uri,
            storage=to_dict(self.storage),
        )
        return from_dict(SynthesizeConfig, section, "RefreshConfig.synthesize")

    def spec(self) -> dict[str, Any]:
        """What the version's content depends on (no storage credentials, retention or explicit version id)."""
        data = to_dict(self)
        for key in ("storage", "retention", "version", "prefix"):
            data.pop(key)
        return data


def _refuse_reserved(section: dict[str, Any], reserved: tuple[str, ...], where: str) -> None:
    given = sorted(set(section) & set(reserved))
    if given:
        raise ValueError(
            f"RefreshConfig.{where}: remove {', '.join(repr(k) for k in given)}: the refresh sets them itself "
            f"(from name/prefix/dataset/model_uri/job_seed/storage)"
        )


def work_uri(version_dir: str, stage: str) -> str:
    """``<version>/_work/<stage>``: where a stage's intermediate output of one version lives."""
    return st.join(version_dir, WORK_DIR, stage)


@dataclass
class RefreshSummary:
    """What a refresh did; ``format()`` is the CLI's summary."""

    name: str
    version: str
    uri: str
    resumed: bool
    validation: dict[str, Any]
    published: bool
    removed: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        """A few human-readable lines."""
        v = self.validation
        state = "published as LATEST" if self.published else "NOT published (validation failed; LATEST unchanged)"
        times = ", ".join(f"{k} {s:.1f} s" for k, s in self.stage_seconds.items())
        return (
            f"dataset {self.name} version {self.version}{' (resumed)' if self.resumed else ''}: {self.uri}\n"
            f"pairs {v['written']}/{v['rows']} written, {v['rejected']} rejected "
            f"(rate {v['rejection_rate']:.3f}); {state}\n"
            f"stages: {times}\n"
            f"retention removed: {', '.join(self.removed) or 'nothing'}"
        )


def choose_version(cfg: RefreshConfig) -> tuple[str, bool]:
    """(version id, resumed): the explicit id, an unfinished version of the same spec to resume (incomplete, or
    complete without a validation record), or a new id."""
    if cfg.version:
        return cfg.version, False
    suffix = "-" + spec_hash(cfg.spec())[:8]
    versions = list_versions(cfg.prefix, cfg.name, cfg.storage)
    unfinished = [v for v in versions if v.state in ("incomplete", "unvalidated")]
    same_spec = sorted(v.version for v in unfinished if v.version.endswith(suffix))
    if same_spec:
        return same_spec[-1], True
    return new_version_id(cfg.spec()), False


def validate_version(cfg: ValidationConfig, rows: int, written: int, rejected: int, by_reason: dict[str, int]) -> dict:
    """The validation summary of a synthesized version (``passed`` plus the figures and bounds it was judged on)."""
    written_fraction = written / rows if rows else 0.0
    rejection_rate = rejected / rows if rows else 1.0
    failures = []
    if written_fraction < cfg.min_written_fraction:
        failures.append(f"written fraction {written_fraction:.3f} < {cfg.min_written_fraction}")
    if rejection_rate > cfg.max_rejection_rate:
        failures.append(f"rejection rate {rejection_rate:.3f} > {cfg.max_rejection_rate}")
    return {
        "passed": not failures,
        "failures": failures,
        "rows": rows,
        "written": written,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "written_fraction": round(written_fraction, 6),
        "rejection_rate": round(rejection_rate, 6),
        "bounds": to_dict(cfg),
    }


def run_refresh(cfg: RefreshConfig) -> RefreshSummary:
    """Make, validate and (if it passes) publish one new version of dataset ``cfg.name``; see the module docstring.

    Raises:
        ValidationFailedError: the version did not pass; ``LATEST`` is unchanged.
    """
    version, resumed = choose_version(cfg)
    vdir = version_uri(cfg.prefix, cfg.name, version)
    logger.info("refresh %s: version %s%s at %s", cfg.name, version, " (resuming)" if resumed else "", vdir)
    st.write_text_atomic(st.join(vdir, REFRESH_DIR, RESOLVED_NAME), dump_config(cfg), cfg.storage)
    seconds: dict[str, float] = {}

    masks_uri = None
    if cfg.masks is not None:
        t0 = time.perf_counter()
        masks_summary = run_masks(cfg.masks_config(vdir))
        masks_uri = masks_summary.out
        seconds["masks"] = time.perf_counter() - t0
        logger.info(
            "refresh %s: masks done: %d written, %d rejected", cfg.name, masks_summary.written, masks_summary.rejected
        )
    t0 = time.perf_counter()
    manifest = write_manifest(cfg.manifest_config(vdir, masks_uri))
    seconds["manifest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    synth = run_synthesis(cfg.synthesize_config(vdir))
    seconds["synthesize"] = time.perf_counter() - t0

    validation = validate_version(
        cfg.validation, manifest.rows, synth.written, synth.rejected, synth.rejected_by_reason
    )
    validation["version"] = version
    record = record_validation(vdir, validation, cfg.storage)
    summary = RefreshSummary(
        name=cfg.name,
        version=version,
        uri=vdir,
        resumed=resumed,
        validation=validation,
        published=False,
        stage_seconds=seconds,
    )
    if not validation["passed"]:
        removed = _apply_retention(cfg)  # a failed version never counts toward keep, so this never costs a good one
        raise ValidationFailedError(
            f"refresh {cfg.name} version {version} failed validation ({'; '.join(validation['failures'])}); "
            f"LATEST is unchanged; details in {record}; retention removed: {', '.join(removed) or 'nothing'}"
        )
    publish_latest(cfg.prefix, cfg.name, version, cfg.storage, validation=validation)
    summary.published = True
    summary.removed = _apply_retention(cfg)
    return summary


def _apply_retention(cfg: RefreshConfig) -> list[str]:
    """:func:`pipelines.versions.apply_retention` with the spec's retention settings; returns the deleted ids."""
    return apply_retention(
        cfg.prefix,
        cfg.name,
        cfg.retention.keep,
        cfg.storage,
        keep_failed=cfg.retention.keep_failed,
        prune_incomplete_after_s=cfg.retention.prune_incomplete_after_s,
    )

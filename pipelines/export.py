"""Exporting a dataset version to the folder layouts other tools read: MVTec-AD and a flat images/masks folder.

Source: a dataset version (``<uri>`` holding ``data/part-*.parquet`` and ``_SUCCESS``), local or ``s3://``; or a
dataset ``<prefix>/<name>`` (with or without a separate name, as ``fastgen dataset resolve`` takes it) resolved
through its ``LATEST`` pointer (:func:`pipelines.versions.resolve`). A version without ``_SUCCESS`` is incomplete
(a synthesis still running, or one that failed) and is refused with :class:`ExportError`.

Layouts under the local folder ``out``::

    mvtec   <category>/test/<defect_type>/<sample_id>.png              the synthesized image
            <category>/ground_truth/<defect_type>/<sample_id>_mask.png  its mask (0/255)
            <category>/train/good/<name of the source normal image>    the normal images the rows were painted on
    folder  images/<sample_id>.png   masks/<sample_id>.png

``mvtec`` is what anomalib's MVTecAD / Folder data modules and ``fastgen inspect`` read. A version has no normal
images of its own: with ``normals`` (the default) every distinct ``source_image`` of a category that is an absolute
local path, a ``file://`` or an ``s3://`` URI and can be read is copied as it is into ``train/good`` (named by its
file name; a second source with the same file name gets ``<stem>_<sha8 of its URI>``). Relative paths (relative to
nothing the version records), missing files and non-image names are counted as ``unresolved`` and logged;
``train/good`` is then left empty (it always exists, as the layout needs it) and should be filled with the source
dataset's normal images before training an anomaly detector on the export. ``folder`` copies no normal images.

Rules:

* **Streaming.** Part files are read one at a time in name order, row group by row group (pyarrow, through
  fsspec file handles, so an ``s3://`` part is read in ranges), in batches of ``batch_rows``; only one batch of
  PNG bytes is held at a time. PNG bytes are written exactly as stored (never decoded or re-encoded); a value
  that is not PNG, a missing value, a name that is not a safe path segment, a duplicate ``sample_id`` or, in
  ``mvtec``, the defect type ``good`` (the layout's normal class) stops the export with an error naming the row.
* **Identity.** A version is identified by a fingerprint: SHA-256 over its ``_SUCCESS`` bytes and the name, byte
  size and row count of every part file. Versions are immutable once complete, so the same fingerprint means the
  same rows (a mirrored copy of a version has the same fingerprint).
* **Resume rule.** ``out`` must be missing or an empty folder, or hold an export (``export.json``, or the claim
  ``.fastgen-export.json`` of an interrupted one) of the same fingerprint, layout and ``normals`` choice. Anything
  else is refused with :class:`ExportError` and nothing is written. The claim is written before any other file.
  On a resume ``export.json`` is removed first, then every file is compared with what the export would write:
  identical files are left alone, missing or different ones (e.g. truncated by a kill) are rewritten. Files that are
  in ``out`` but not part of the export are left alone.
* **Completion.** Files are written in place without fsync; ``os.sync()`` flushes them, then ``export.json`` is
  written atomically (temp file + rename) as the last file and the claim is removed. ``export.json`` present means
  the export is complete. Its content depends only on the version and the options (no times, no
  written/unchanged counts), so a rerun writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pyarrow.parquet as pq

from fast_core.configbase import check_choices
from fast_core.data.layout import GOOD, IMAGE_EXTENSIONS
from pipelines import storage as st
from pipelines.storage import StorageConfig, StorageNotFoundError
from pipelines.versions import LATEST_NAME, SUCCESS_NAME, check_segment, resolve

logger = logging.getLogger(__name__)

ExportFormat = Literal["mvtec", "folder"]

EXPORT_FORMAT = "fastgen-export/1"
SUMMARY_NAME = "export.json"
CLAIM_NAME = ".fastgen-export.json"
DATA_GLOB = "data/part-*.parquet"
COLUMNS = ("sample_id", "category", "defect_type", "image", "mask", "source_image")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The keys of export.json / the claim that must match for a resume.
IDENTITY_KEYS = ("format", "layout", "normals", "fingerprint")


class ExportError(ValueError):
    """An export was refused: an incomplete version, a non-empty ``out`` of something else, or a bad row."""


@dataclass(kw_only=True)
class ExportConfig:
    """What ``fastgen dataset export`` exports, and where."""

    source: str  # a version URI, or a dataset URI <prefix>/<name> (or the prefix, with name) resolved via LATEST
    out: str  # local folder to export into: missing, empty, or holding an export of the same version
    format: ExportFormat = "mvtec"  # mvtec: <cat>/test|ground_truth/<defect>/...; folder: images/ + masks/
    name: str | None = None  # dataset name: source is then the datasets prefix (as `fastgen dataset resolve`)
    normals: bool = True  # mvtec: copy the readable source normal images into <cat>/train/good
    batch_rows: int = 256  # rows converted to Python at a time (within one row group)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        """Check the choices and that ``out`` is a local folder."""
        check_choices(self)
        if not self.source:
            raise ValueError("ExportConfig.source is empty; give a dataset version URI")
        if not self.out:
            raise ValueError("ExportConfig.out is empty; give a local folder")
        if "://" in self.out and not self.out.startswith("file://"):
            raise ValueError(f"ExportConfig.out = {self.out!r}: exports are written to a local folder")
        if self.batch_rows < 1:
            raise ValueError(f"ExportConfig.batch_rows = {self.batch_rows} must be >= 1")


@dataclass(frozen=True)
class PartInfo:
    """One ``data/part-*.parquet`` of the version."""

    uri: str
    name: str
    size: int
    rows: int


@dataclass
class ExportSummary:
    """The outcome of :func:`export_version`."""

    source: str  # the version URI exported
    out: str
    layout: ExportFormat
    rows: int
    counts: dict[str, int]  # "<category>/<defect_type>" → rows
    written: int  # files written by this call
    unchanged: int  # files already present with the same bytes (a resume)
    normals_copied: int
    normals_unresolved: int
    resumed: bool
    wall_s: float

    def format(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [f"exported {self.source}", f"  to {self.out} ({self.layout}): {self.rows} rows"]
        lines.extend(f"  {key}: {n}" for key, n in sorted(self.counts.items()))
        if self.layout == "mvtec":
            lines.append(
                f"  normal images: {self.normals_copied} copied to train/good, {self.normals_unresolved} unresolved"
            )
        state = "resumed" if self.resumed else "new export"
        lines.append(f"  files: {self.written} written, {self.unchanged} unchanged ({state}), {self.wall_s:.1f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------- the source version
def resolve_version(source: str, name: str | None = None, storage: StorageConfig | None = None) -> str:
    """The URI of the complete version to export.

    With ``name``: the version ``LATEST`` of ``<source>/<name>`` names. Without: ``source`` itself when it has
    ``_SUCCESS``; else, when ``source/LATEST`` exists, the version it names; else an :class:`ExportError` that says
    whether ``source`` is an incomplete version or no dataset at all.
    """
    if name is not None:
        return resolve(source, name, storage)
    uri = st.absolute(source.rstrip("/"))
    if st.exists(st.join(uri, SUCCESS_NAME), storage):
        return uri
    if st.exists(st.join(uri, LATEST_NAME), storage):
        return resolve(uri, None, storage)
    if st.exists(st.join(uri, "data"), storage):
        raise ExportError(
            f"{uri} has no {SUCCESS_NAME}: an incomplete dataset version (a synthesis still running, or one that "
            "failed); only complete versions are exported"
        )
    raise ExportError(
        f"{uri} is neither a dataset version (no {SUCCESS_NAME}, no data/) nor a dataset with {LATEST_NAME}"
    )


def read_parts(uri: str, storage: StorageConfig | None = None) -> list[PartInfo]:
    """The part files of the version at ``uri`` in name order, with byte sizes and row counts (Parquet footers)."""
    parts = []
    for part in st.glob(st.join(uri, DATA_GLOB), storage):
        fs, path = st.filesystem(part, storage)
        with fs.open(path, "rb") as f:
            try:
                rows = pq.ParquetFile(f).metadata.num_rows
            except Exception as exc:  # pyarrow raises ArrowInvalid and friends for non-Parquet bytes
                raise ExportError(f"{part}: not a readable Parquet file ({exc})") from exc
            size = int(f.size)
        parts.append(PartInfo(uri=part, name=part.rsplit("/", 1)[-1], size=size, rows=rows))
    return parts


def fingerprint(success: bytes, parts: list[PartInfo]) -> str:
    """SHA-256 hex of a version's identity: its ``_SUCCESS`` bytes and each part's name, size and row count.

    >>> fingerprint(b"", []) == fingerprint(b"", [])
    True
    """
    body = {
        "success_sha256": hashlib.sha256(success).hexdigest(),
        "parts": [[p.name, p.size, p.rows] for p in parts],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def iter_rows(part: PartInfo, batch_rows: int, storage: StorageConfig | None) -> Iterator[list[dict[str, Any]]]:
    """The rows of one part file as lists of dicts (:data:`COLUMNS`), row group by row group, ``batch_rows`` at a
    time; ``source_image`` is None when the column is absent."""
    fs, path = st.filesystem(part.uri, storage)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in COLUMNS[:5] if c not in names]
        if missing:
            raise ExportError(f"{part.uri}: missing column(s) {', '.join(missing)}; expected the DESIGN §4 data schema")
        columns = [c for c in COLUMNS if c in names]
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group, columns=columns)
            for batch in table.to_batches(max_chunksize=batch_rows):
                yield batch.to_pylist()
            del table


# ---------------------------------------------------------------- the output folder
def _read_identity(out: Path) -> dict[str, Any] | None:
    """The identity recorded in ``out`` (``export.json``, else the claim), or None when neither is readable."""
    for name in (SUMMARY_NAME, CLAIM_NAME):
        path = out / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT:
                return data
    return None


def prepare_out(out: Path, identity: dict[str, Any]) -> bool:
    """Check ``out`` against the resume rule and claim it; True when it resumes an earlier export.

    Raises:
        ExportError: ``out`` is a file, or a non-empty folder holding no export of this identity.
    """
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder")
    resumed = out.is_dir() and any(out.iterdir())
    if resumed:
        previous = _read_identity(out)
        if previous is None:
            raise ExportError(f"--out {out} is not empty and holds no fastgen export; give a new or empty folder")
        if any(previous.get(k) != identity[k] for k in IDENTITY_KEYS):
            raise ExportError(
                f"--out {out} holds another export ({previous.get('layout')} of {previous.get('source')}, "
                f"normals={previous.get('normals')}, version fingerprint {str(previous.get('fingerprint'))[:12]}), "
                f"not a {identity['layout']} export of {identity['source']} with normals={identity['normals']} "
                f"(fingerprint {identity['fingerprint'][:12]}); give a new or empty folder"
            )
        logger.info("%s holds an export of this version: resuming (identical files are kept)", out)
    out.mkdir(parents=True, exist_ok=True)
    st.write_text_atomic(str(out / CLAIM_NAME), json.dumps(identity, indent=1, sort_keys=True) + "\n")
    if resumed:
        (out / SUMMARY_NAME).unlink(missing_ok=True)
        for stale in out.glob(".*.tmp"):  # temp files of an atomic write that a kill interrupted
            stale.unlink(missing_ok=True)
    return resumed


class _Files:
    """Writes files under ``out``, skipping those already there with the same bytes."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written = 0
        self.unchanged = 0
        self._dirs: set[Path] = set()

    def mkdir(self, path: Path) -> None:
        if path not in self._dirs:
            path.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path)

    def put(self, rel: str, data: bytes) -> None:
        path = self.out / rel
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            self.unchanged += 1
            return
        self.mkdir(path.parent)
        path.write_bytes(data)
        self.written += 1

    @property
    def total(self) -> int:
        return self.written + self.unchanged


class _Normals:
    """Copies each category's distinct readable ``source_image`` once into ``<category>/train/good``."""

    def __init__(self, files: _Files, storage: StorageConfig | None) -> None:
        self.files = files
        self.storage = storage
        self.names: dict[str, dict[str, str]] = {}  # category → source URI → file name ("" when unresolved)
        self.copied = 0
        self.unresolved = 0

    def add(self, category: str, source: str | None) -> None:
        seen = self.names.setdefault(category, {})
        if not source or source in seen:
            return
        name, reason = self._name(source, set(seen.values())), None
        if name is None:
            reason = "not an absolute path or a file:// / s3:// URI of an image file"
        else:
            try:
                data = st.read_bytes(source, self.storage)
            except (FileNotFoundError, IsADirectoryError, StorageNotFoundError):
                reason = "not found"
        if reason is not None:
            seen[source] = ""
            self.unresolved += 1
            logger.debug("normal image %s of %s not copied: %s", source, category, reason)
            return
        seen[source] = name
        self.files.put(f"{category}/train/{GOOD}/{name}", data)
        self.copied += 1

    @staticmethod
    def _name(source: str, taken: set[str]) -> str | None:
        """The file name in train/good, or None when ``source`` cannot be resolved."""
        if not (source.startswith(("s3://", "file://")) or os.path.isabs(source)):
            return None
        name = PurePosixPath(source.split("://", 1)[-1]).name
        if not name or name.startswith(".") or PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
            return None
        if name in taken:
            stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
            name = f"{stem}_{hashlib.sha256(source.encode()).hexdigest()[:8]}{suffix}"
        return name


# ---------------------------------------------------------------- the export
def _png(value: Any, what: str, sid: str, part: PartInfo) -> bytes:
    """The PNG bytes of an ``image``/``mask`` struct value; ExportError naming the row when they are not PNG."""
    data = value.get("bytes") if isinstance(value, dict) else None
    if not data:
        raise ExportError(f"{part.uri}: row {sid!r} has no {what} bytes")
    if not data.startswith(PNG_SIGNATURE):
        raise ExportError(f"{part.uri}: the {what} of row {sid!r} is not PNG data")
    return data


def _paths(layout: ExportFormat, category: str, defect: str, sid: str) -> tuple[str, str]:
    """The image and mask paths of one row, relative to ``out``."""
    if layout == "mvtec":
        return f"{category}/test/{defect}/{sid}.png", f"{category}/ground_truth/{defect}/{sid}_mask.png"
    return f"images/{sid}.png", f"masks/{sid}.png"


def export_version(cfg: ExportConfig) -> ExportSummary:
    """Export the version ``cfg.source`` into ``cfg.out`` (see the module docstring for the layouts and rules).

    Raises:
        ExportError: an incomplete version, an ``out`` the resume rule refuses, or a bad row.
        VersionNotFoundError: a dataset with no (complete) published version.
    """
    t0 = time.perf_counter()
    uri = resolve_version(cfg.source, cfg.name, cfg.storage)
    parts = read_parts(uri, cfg.storage)
    total = sum(p.rows for p in parts)
    normals = cfg.normals and cfg.format == "mvtec"
    identity = {
        "format": EXPORT_FORMAT,
        "layout": cfg.format,
        "normals": normals,
        "fingerprint": fingerprint(st.read_bytes(st.join(uri, SUCCESS_NAME), cfg.storage), parts),
        "source": uri,
    }
    out = Path(cfg.out.split("://", 1)[-1]).absolute()
    resumed = prepare_out(out, identity)
    logger.info("exporting %s (%d rows in %d part files) to %s as %s", uri, total, len(parts), out, cfg.format)

    files = _Files(out)
    copier = _Normals(files, cfg.storage) if normals else None
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    done = 0
    for part in parts:
        for rows in iter_rows(part, cfg.batch_rows, cfg.storage):
            for row in rows:
                sid = check_segment(row["sample_id"], "sample_id", part.uri)
                category = check_segment(row["category"], "category", part.uri)
                defect = check_segment(row["defect_type"], "defect_type", part.uri)
                if cfg.format == "mvtec" and defect == GOOD:
                    raise ExportError(f"{part.uri}: row {sid!r} has defect_type {GOOD!r}, the MVTec normal class")
                if sid in seen:
                    raise ExportError(f"{part.uri}: sample_id {sid!r} occurs twice in the version")
                seen.add(sid)
                image_rel, mask_rel = _paths(cfg.format, category, defect, sid)
                files.put(image_rel, _png(row["image"], "image", sid, part))
                files.put(mask_rel, _png(row["mask"], "mask", sid, part))
                if cfg.format == "mvtec":
                    files.mkdir(out / category / "train" / GOOD)
                if copier is not None:
                    copier.add(category, row.get("source_image"))
                counts[f"{category}/{defect}"] += 1
            done += len(rows)
            logger.info("exported %d/%d rows (%s)", done, total, part.name)
    if done != total:
        raise ExportError(f"{uri}: the part files hold {done} rows but their footers say {total}")
    if copier is not None and copier.unresolved:
        logger.warning(
            "%d normal image(s) named by source_image could not be read (relative, missing or not an image); "
            "train/good holds %d — add the source dataset's normal images before training a detector on it",
            copier.unresolved,
            copier.copied,
        )

    summary = {
        **identity,
        "rows": done,
        "counts": dict(sorted(counts.items())),
        "files": files.total,
        "normal_images": {"copied": copier.copied, "unresolved": copier.unresolved} if copier else None,
        "paths": dict(
            zip(("image", "mask"), _paths(cfg.format, "<category>", "<defect_type>", "<sample_id>"), strict=True)
        ),
    }
    os.sync()  # the files above reach the disk before export.json says they are complete
    st.write_text_atomic(str(out / SUMMARY_NAME), json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / CLAIM_NAME).unlink(missing_ok=True)
    result = ExportSummary(
        source=uri,
        out=str(out),
        layout=cfg.format,
        rows=done,
        counts=dict(counts),
        written=files.written,
        unchanged=files.unchanged,
        normals_copied=copier.copied if copier else 0,
        normals_unresolved=copier.unresolved if copier else 0,
        resumed=resumed,
        wall_s=time.perf_counter() - t0,
    )
    logger.info(
        "export of %d rows complete: %d files written, %d unchanged, %.1f s",
        done,
        result.written,
        result.unchanged,
        result.wall_s,
    )
    return result

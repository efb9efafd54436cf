"""Dataset versions and the ``LATEST`` pointer: where a refresh writes, how it is published, what consumers read.

Layout under a dataset URI ``<prefix>/<name>`` (a local directory or an ``s3://`` prefix)::

    <prefix>/<name>/versions/<version>/   one dataset version (DESIGN §4: data/, images/, masks/, ..., _SUCCESS last)
    <prefix>/<name>/versions/<version>/_refresh/validation.json   its validation record (see below)
    <prefix>/<name>/LATEST                a small JSON naming the published version (see :class:`LatestPointer`)

Contract:

* A version is **complete** when ``<version>/_SUCCESS`` exists (the synthesis commit protocol writes it last).
  Its **validation record** (:func:`record_validation`) is the summary it was judged on; the record's ``passed``
  settles its state (:attr:`VersionInfo.state`): ``validated`` (complete, ``passed`` is ``True``), ``failed``
  (complete, any other ``passed``, or an unreadable record), ``unvalidated`` (complete, no record yet: a refresh
  between synthesis and validation, or a version written by other means) or ``incomplete`` (no ``_SUCCESS``).
* :func:`publish_latest` refuses an incomplete version, a validation summary whose ``passed`` is not ``True`` and a
  version whose record failed, so ``LATEST`` never names a failed or half-written version. It records the summary
  it was given in a version that has no record yet (a refused one too), so every publisher leaves the outcome behind.
* ``LATEST`` is replaced by one atomic write (:func:`pipelines.storage.write_text_atomic`: a rename locally, a
  single PUT on S3): a reader sees the old pointer or the new one, never a mix. Concurrent publishers: the last
  write wins.
* Versions are ordered by the time their ``_SUCCESS`` marker was written (ties: by version id), oldest first.
  :func:`apply_retention` keeps the ``keep`` newest **validated** versions and always the one ``LATEST`` names;
  failed versions never count toward ``keep`` and never displace a validated one: the ``keep_failed`` newest stay
  for diagnosis and older ones are deleted. Unvalidated and incomplete versions (possibly a refresh still running)
  are only removed when ``prune_incomplete_after_s`` says they are old enough. A deletion removes ``_SUCCESS``
  first, so one that dies half way leaves an incomplete version, never a complete one with files missing.
* :func:`resolve` is the consumer's entry point: it reads ``LATEST`` and returns the URI of that version, derived
  from where ``LATEST`` was found (so a copied or mirrored dataset tree resolves within itself); the ``uri`` field
  of the JSON is the same URI at publish time, for readers that parse the file directly.

Version ids (:func:`new_version_id`): ``20261125T090627Z`` (UTC time), ``20261125T090627Z-<hash8>`` with a spec, or
``spec-<hash16>`` (deterministic: the same spec always gives the same id, so a rerun resumes into the same
directory). The hash is SHA-256 of the spec as canonical JSON (sorted keys, no whitespace).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from pipelines import storage as st
from pipelines.storage import StorageConfig, StorageNotFoundError

logger = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
LATEST_NAME = "LATEST"
SUCCESS_NAME = "_SUCCESS"
LATEST_FORMAT = "fastgen-latest/1"
REFRESH_DIR = "_refresh"
VALIDATION_NAME = "validation.json"
#: How many failed versions :func:`apply_retention` keeps by default (the newest ones).
KEEP_FAILED = 3

VersionState = Literal["validated", "failed", "unvalidated", "incomplete"]

# A name or version is one path segment: letters, digits, ".", "_", "-"; not starting with "." (no "..", no hidden).
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


class VersionNotFoundError(StorageNotFoundError):
    """A dataset has no ``LATEST`` pointer, or the version it names is gone or incomplete."""


class ValidationFailedError(ValueError):
    """A version's validation summary did not pass, so ``LATEST`` was left untouched."""


@dataclass(kw_only=True)
class LatestPointer:
    """The content of ``<prefix>/<name>/LATEST``.

    Attributes:
        name: the dataset name.
        version: the published version id.
        uri: the version's URI when it was published.
        created: ISO-8601 UTC time of the publish (``2026-11-25T09:06:27Z``).
        validation: the validation summary the publish was granted on (``passed`` is always ``True``).
        format: the pointer format, ``fastgen-latest/1``.
    """

    name: str
    version: str
    uri: str
    created: str
    validation: dict[str, Any] = field(default_factory=dict)
    format: str = LATEST_FORMAT

    def to_json(self) -> str:
        """The pointer as the JSON text ``LATEST`` holds (sorted keys, one trailing newline)."""
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> LatestPointer:
        """Parse ``LATEST`` content; ``ValueError`` naming ``where`` and the problem on bad content."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != LATEST_FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r} is not supported (expected {LATEST_FORMAT!r})")
        fields = ("name", "version", "uri", "created", "validation", "format")
        missing = [k for k in fields if k not in data]
        unknown = sorted(set(data) - set(fields))
        if missing or unknown:
            raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown} (valid: {list(fields)})")
        if not isinstance(data["validation"], dict):
            raise ValueError(f"{where}: 'validation' must be an object")
        for key in ("name", "version", "uri", "created"):
            if not isinstance(data[key], str) or not data[key]:
                raise ValueError(f"{where}: {key!r} must be a non-empty string, got {data[key]!r}")
        check_segment(data["version"], "version", where)
        return cls(**data)


@dataclass(frozen=True)
class VersionInfo:
    """One directory under ``<prefix>/<name>/versions/``.

    Attributes:
        version: the version id (the directory name).
        uri: the version's URI.
        complete: whether ``_SUCCESS`` exists.
        created: modification time of ``_SUCCESS`` (UTC) for a complete version, else None.
        passed: the ``passed`` of its validation record (False for an unreadable one); None without a record. Read
            for complete versions only.
    """

    version: str
    uri: str
    complete: bool
    created: datetime | None
    passed: bool | None = None

    @property
    def state(self) -> VersionState:
        """``validated``, ``failed``, ``unvalidated`` (complete, no record) or ``incomplete`` (see the module)."""
        if not self.complete:
            return "incomplete"
        if self.passed is None:
            return "unvalidated"
        return "validated" if self.passed else "failed"


# ---------------------------------------------------------------- names and URIs
def check_segment(value: str, what: str, where: str = "") -> str:
    """Return ``value`` if it is a safe single path segment, else raise ``ValueError`` naming ``what``."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}{what} {value!r} is not a valid path segment: use 1-128 letters, digits, '.', '_' or '-', "
            "not starting with '.'"
        )
    return value


def dataset_uri(prefix: str, name: str) -> str:
    """``<prefix>/<name>``: the directory holding a dataset's ``versions/`` and ``LATEST``."""
    return st.join(prefix, check_segment(name, "dataset name"))


def version_uri(prefix: str, name: str, version: str) -> str:
    """``<prefix>/<name>/versions/<version>``: where a refresh writes one dataset version.

    >>> version_uri("s3://bkt/datasets", "tiles", "20261125T090627Z")
    's3://bkt/datasets/tiles/versions/20261125T090627Z'
    """
    return st.join(dataset_uri(prefix, name), VERSIONS_DIR, check_segment(version, "version"))


def spec_hash(spec: Mapping[str, Any] | str | bytes) -> str:
    """SHA-256 hex digest of a spec: bytes as they are, text as UTF-8, a mapping as canonical JSON.

    Canonical JSON: sorted keys, ``(",", ":")`` separators, non-ASCII kept; values must be JSON types.

    >>> spec_hash({"b": 1, "a": [1, 2]}) == spec_hash({"a": [1, 2], "b": 1})
    True
    """
    if isinstance(spec, bytes):
        data = spec
    elif isinstance(spec, str):
        data = spec.encode("utf-8")
    elif isinstance(spec, Mapping):
        try:
            data = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except TypeError as exc:
            raise ValueError(f"spec_hash: the spec holds a value JSON cannot encode ({exc})") from exc
    else:
        raise TypeError(f"spec_hash needs a mapping, str or bytes, got {type(spec).__name__}")
    return hashlib.sha256(data).hexdigest()


def new_version_id(
    spec: Mapping[str, Any] | str | bytes | None = None,
    *,
    deterministic: bool = False,
    now: datetime | None = None,
) -> str:
    """A version id for a new refresh.

    * ``deterministic=True``: ``spec-<first 16 hex of spec_hash(spec)>``; the same spec always gives the same id
      (``spec`` is required).
    * otherwise: the UTC time ``YYYYMMDDTHHMMSSZ`` of ``now`` (default: the current time), followed by
      ``-<first 8 hex of spec_hash(spec)>`` when a spec is given. Ids of this form sort chronologically.

    >>> new_version_id(now=datetime(2026, 11, 25, 9, 6, 27, tzinfo=timezone.utc))
    '20261125T090627Z'
    >>> new_version_id({"seed": 0}, deterministic=True)
    'spec-bd0488843468e63c'
    """
    if deterministic:
        if spec is None:
            raise ValueError("new_version_id(deterministic=True) needs a spec to hash")
        return f"spec-{spec_hash(spec)[:16]}"
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        raise ValueError(f"new_version_id: now={now!r} has no time zone; pass an aware datetime (e.g. UTC)")
    stamp = now.astimezone(timezone.utc).strftime(_TIME_FORMAT)
    return stamp if spec is None else f"{stamp}-{spec_hash(spec)[:8]}"


def _plain_json(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A plain-JSON deep copy of ``data``; ``ValueError`` naming ``where`` when a value is not JSON."""
    try:
        return json.loads(json.dumps(dict(data)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not publishing {where}: the validation summary is not plain JSON ({exc})") from exc


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- listing
def _mtime(info: Mapping[str, Any]) -> datetime:
    """Modification time of an fsspec ``info`` record: ``mtime`` (local, seconds) or ``LastModified`` (S3)."""
    if "LastModified" in info and isinstance(info["LastModified"], datetime):
        return info["LastModified"].astimezone(timezone.utc)
    if "mtime" in info:
        return datetime.fromtimestamp(float(info["mtime"]), tz=timezone.utc)
    raise ValueError(f"{info.get('name')}: the storage reports no modification time")


def _info(uri: str, storage: StorageConfig | None) -> dict[str, Any] | None:
    """fsspec ``info`` of the file/object at ``uri``, or None when it does not exist."""
    if not st.exists(uri, storage):
        return None
    return st.info(uri, storage)


def is_complete(uri: str, storage: StorageConfig | None = None) -> bool:
    """Whether the dataset version at ``uri`` has its ``_SUCCESS`` marker."""
    return st.exists(st.join(uri, SUCCESS_NAME), storage)


# ---------------------------------------------------------------- validation records
def validation_uri(uri: str) -> str:
    """``<version>/_refresh/validation.json``: where the validation record of the version at ``uri`` lives."""
    return st.join(uri, REFRESH_DIR, VALIDATION_NAME)


def record_validation(uri: str, validation: Mapping[str, Any], storage: StorageConfig | None = None) -> str:
    """Write ``validation`` (a summary with ``passed``) as the record of the version at ``uri``; returns its URI.

    One atomic write of sorted, indented JSON; values JSON cannot encode are written as their ``str``. An existing
    record is replaced (a refresh that resumes a version records its new outcome).
    """
    if not isinstance(validation, Mapping):
        raise TypeError(f"record_validation: validation must be a mapping, got {type(validation).__name__}")
    target = validation_uri(uri)
    st.write_text_atomic(target, json.dumps(dict(validation), indent=1, sort_keys=True, default=str) + "\n", storage)
    return target


def read_validation(uri: str, storage: StorageConfig | None = None) -> dict[str, Any] | None:
    """The validation record of the version at ``uri``, or None when it has none.

    A record that is not a JSON object reads as ``{"passed": False, "unreadable": <why>}``: a version whose outcome
    cannot be read is never taken for a validated one.
    """
    where = validation_uri(uri)
    try:
        text = st.read_text(where, storage)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        logger.warning("%s: not valid JSON (%s); the version counts as failed", where, exc)
        return {"passed": False, "unreadable": f"not valid JSON ({exc})"}
    if not isinstance(data, dict):
        logger.warning("%s: not a JSON object; the version counts as failed", where)
        return {"passed": False, "unreadable": f"expected a JSON object, got {type(data).__name__}"}
    return data


def list_versions(prefix: str, name: str, storage: StorageConfig | None = None) -> list[VersionInfo]:
    """Every version directory of dataset ``name``, oldest first; incomplete ones last, by id.

    Empty directories are not versions (stores such as SeaweedFS keep a folder after its last object is deleted).
    Complete versions are ordered by the time of their ``_SUCCESS`` marker, then by id, and carry the ``passed`` of
    their validation record (one more read each). Entries under ``versions/`` that are not valid version ids (e.g. a
    temp file) are skipped with a warning.
    """
    root = st.join(dataset_uri(prefix, name), VERSIONS_DIR)
    if not st.exists(root, storage):
        return []
    out: list[VersionInfo] = []
    for entry in st.ls(root, storage):
        version = entry.rstrip("/").rsplit("/", 1)[-1]
        if not _SEGMENT.match(version):
            logger.warning("skipping %s: not a version id", entry)
            continue
        uri = st.join(root, version)
        info = _info(st.join(uri, SUCCESS_NAME), storage)
        if info is None and _newest_write(uri, storage) is None:
            logger.debug("skipping %s: an empty directory (a deleted version on a store that keeps folders)", entry)
            continue
        created = _mtime(info) if info else None
        passed = None
        if info is not None and (record := read_validation(uri, storage)) is not None:
            passed = record.get("passed") is True
        out.append(VersionInfo(version=version, uri=uri, complete=info is not None, created=created, passed=passed))
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(out, key=lambda v: (not v.complete, v.created or epoch, v.version))


# ---------------------------------------------------------------- LATEST
def read_latest(prefix: str, name: str, storage: StorageConfig | None = None) -> LatestPointer | None:
    """The ``LATEST`` pointer of dataset ``name``, or None when nothing was published yet.

    Raises:
        ValueError: ``LATEST`` exists but is not a valid pointer (the message names its URI).
    """
    uri = st.join(dataset_uri(prefix, name), LATEST_NAME)
    try:
        text = st.read_text(uri, storage)
    except FileNotFoundError:
        return None
    return LatestPointer.from_json(text, uri)


def publish_latest(
    prefix: str,
    name: str,
    version: str,
    storage: StorageConfig | None = None,
    *,
    validation: Mapping[str, Any],
    now: datetime | None = None,
) -> LatestPointer:
    """Point ``<prefix>/<name>/LATEST`` at ``version`` with one atomic write, after checking that it may be.

    Args:
        prefix: the datasets prefix (local directory or ``s3://`` URI).
        name: the dataset name.
        version: a version id under ``<prefix>/<name>/versions/``.
        storage: S3 settings.
        validation: the validation summary, JSON-serialisable, with ``"passed": True`` (any other value refuses
            the publish); stored in the pointer for consumers to audit, and recorded in the version when it has no
            validation record yet (also when refused, so retention knows the version failed).
        now: publish time (default: the current UTC time).

    Returns:
        The pointer written.

    Raises:
        ValidationFailedError: ``validation["passed"]`` is not ``True``, or the version's own validation record
            did not pass (a failed version is never published); ``LATEST`` is untouched.
        VersionNotFoundError: the version directory has no ``_SUCCESS``; ``LATEST`` is untouched.
    """
    target = version_uri(prefix, name, version)
    if not isinstance(validation, Mapping):
        raise TypeError(f"publish_latest: validation must be a mapping, got {type(validation).__name__}")
    if validation.get("passed") is not True:
        if is_complete(target, storage) and read_validation(target, storage) is None:
            record_validation(target, validation, storage)
        raise ValidationFailedError(
            f"not publishing {target}: validation did not pass ({json.dumps(dict(validation), default=str)[:500]}); "
            "LATEST is unchanged"
        )
    plain = _plain_json(validation, target)
    if not is_complete(target, storage):
        raise VersionNotFoundError(f"not publishing {target}: it has no {SUCCESS_NAME} marker (incomplete version)")
    record = read_validation(target, storage)
    if record is None:
        record_validation(target, plain, storage)
    elif record.get("passed") is not True:
        raise ValidationFailedError(
            f"not publishing {target}: its validation record {validation_uri(target)} did not pass (a failed version "
            "is never published); LATEST is unchanged"
        )
    pointer = LatestPointer(
        name=name,
        version=version,
        uri=target,
        created=_utc_iso(now or datetime.now(timezone.utc)),
        validation=plain,
    )
    latest = st.join(dataset_uri(prefix, name), LATEST_NAME)
    previous = read_latest(prefix, name, storage)
    st.write_text_atomic(latest, pointer.to_json(), storage)
    logger.info("%s → %s (was %s)", latest, version, previous.version if previous else "unset")
    return pointer


def resolve(uri: str, name: str | None = None, storage: StorageConfig | None = None, *, check: bool = True) -> str:
    """The URI of the published version of a dataset: what a consumer reads.

    Args:
        uri: the datasets prefix when ``name`` is given, else the dataset URI ``<prefix>/<name>`` itself.
        name: the dataset name (None: ``uri`` is the dataset URI).
        storage: S3 settings.
        check: also require the version's ``_SUCCESS`` marker (one more request).

    Raises:
        VersionNotFoundError: no ``LATEST``, or (with ``check``) the version it names is gone or incomplete.
        ValueError: ``LATEST`` is malformed.
    """
    if name is None:
        stripped = uri.rstrip("/")
        if "/" not in stripped.split("://", 1)[-1]:
            raise ValueError(f"resolve: {uri!r} is not a dataset URI <prefix>/<name>; pass name= as well")
        prefix, name = stripped.rsplit("/", 1)
    else:
        prefix = uri
    pointer = read_latest(prefix, name, storage)
    where = st.join(dataset_uri(prefix, name), LATEST_NAME)
    if pointer is None:
        raise VersionNotFoundError(f"{where} does not exist: dataset {name!r} has no published version")
    target = version_uri(prefix, name, pointer.version)
    if check and not is_complete(target, storage):
        raise VersionNotFoundError(f"{where} names version {pointer.version!r}, but {target} has no {SUCCESS_NAME}")
    return target


# ---------------------------------------------------------------- retention
def _remove_version(uri: str, storage: StorageConfig | None) -> None:
    """Delete a version directory: ``_SUCCESS`` first (so a half deletion reads as incomplete), then the rest."""
    st.remove(st.join(uri, SUCCESS_NAME), storage)
    st.remove(uri, storage, recursive=True)


def _newest_write(uri: str, storage: StorageConfig | None) -> datetime | None:
    """The newest modification time of any file under ``uri`` (None when it holds no file)."""
    fs, path = st.filesystem(uri, storage)
    infos = fs.find(path, detail=True)
    return max((_mtime(i) for i in infos.values() if i.get("type") == "file"), default=None)


def _is_count(value: Any, least: int) -> bool:
    """Whether ``value`` is an int (not a bool) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def apply_retention(
    prefix: str,
    name: str,
    keep: int,
    storage: StorageConfig | None = None,
    *,
    keep_failed: int | None = KEEP_FAILED,
    prune_incomplete_after_s: float | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Delete old versions of dataset ``name``: keep the ``keep`` newest validated ones and the one ``LATEST`` names.

    The rule, by :attr:`VersionInfo.state`:

    * ``validated``: the ``keep`` newest stay (``LATEST``'s version counts when it is one of them), older ones go;
      ``LATEST``'s version always stays.
    * ``failed``: kept for diagnosis, but never counted toward ``keep``, so a failed refresh never displaces a
      validated version; the ``keep_failed`` newest stay, older ones go.
    * ``unvalidated`` and ``incomplete`` (possibly a refresh still running): deleted only with
      ``prune_incomplete_after_s``, once their newest file is that old.

    Args:
        prefix: the datasets prefix.
        name: the dataset name.
        keep: how many validated versions to keep (>= 1), counting the newest first.
        storage: S3 settings.
        keep_failed: how many failed versions to keep (>= 0), the newest first; None keeps every failed version.
        prune_incomplete_after_s: also delete unvalidated and incomplete versions whose newest file is older than
            this many seconds (None: never delete them, as they may be a refresh still running).
        dry_run: only report what would be deleted.
        now: the current time for the incomplete-version age (default: now, UTC).

    Returns:
        The deleted (or, with ``dry_run``, deletable) version ids, in :func:`list_versions` order (oldest first).
    """
    if not _is_count(keep, 1):
        raise ValueError(f"apply_retention: keep must be an integer >= 1, got {keep!r}")
    if keep_failed is not None and not _is_count(keep_failed, 0):
        raise ValueError(f"apply_retention: keep_failed must be an integer >= 0 or None, got {keep_failed!r}")
    if prune_incomplete_after_s is not None and prune_incomplete_after_s < 0:
        raise ValueError(f"apply_retention: prune_incomplete_after_s must be >= 0, got {prune_incomplete_after_s}")
    pointer = read_latest(prefix, name, storage)
    protected = {pointer.version} if pointer else set()
    versions = list_versions(prefix, name, storage)
    validated = [v for v in versions if v.state == "validated"]
    failed = [v for v in versions if v.state == "failed"]
    doomed = {v.version for v in validated[: max(len(validated) - keep, 0)]}
    if keep_failed is not None:
        doomed |= {v.version for v in failed[: max(len(failed) - keep_failed, 0)]}
    if prune_incomplete_after_s is not None:
        moment = now or datetime.now(timezone.utc)
        for v in versions:
            if v.state not in ("unvalidated", "incomplete"):
                continue
            newest = _newest_write(v.uri, storage)
            if newest is None or (moment - newest).total_seconds() >= prune_incomplete_after_s:
                doomed.add(v.version)
    deleted = [v for v in versions if v.version in doomed and v.version not in protected]
    for v in deleted:
        if dry_run:
            logger.info("retention (dry run): would delete %s (%s)", v.uri, v.state)
            continue
        started = time.monotonic()
        _remove_version(v.uri, storage)
        logger.info("retention: deleted %s (%s, %.1fs)", v.uri, v.state, time.monotonic() - started)
    return [v.version for v in deleted]

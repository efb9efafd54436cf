"""One storage layer for every stage: local paths, ``file://`` and ``s3://`` URIs through fsspec, with atomic writes.

Every later stage reads and writes through these helpers, so a dataset root, a manifest or a checkpoint directory can
be a local folder or an S3 prefix with the same code. ``s3://`` goes through s3fs; the endpoint, region and
credentials come from :class:`StorageConfig` or, where a field is unset, from the standard ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` variables (read when a filesystem is
built, never stored back into the config). Writes are atomic (see :func:`write_bytes_atomic`), which the commit
protocol relies on. S3 failures become one clear :class:`StorageError` that names the URI and the endpoint and never
the secret; connection errors and transient server errors are retried a bounded number of times with exponential
backoff.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import fsspec
from fsspec.exceptions import FSTimeoutError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

logger = logging.getLogger(__name__)

T = TypeVar("T")

# S3 accepts at most 5 GiB in a single PUT; larger objects need a multipart upload.
MAX_SINGLE_PUT_BYTES = 5 * 2**30

# Errno values s3fs gives to transient server answers (500 InternalError → EREMOTEIO, 503 SlowDown → EBUSY).
_TRANSIENT_ERRNOS = {getattr(errno, "EREMOTEIO", errno.EIO), errno.EBUSY}


class StorageError(OSError):
    """A storage operation failed; the message names the URI and the endpoint, never a credential."""


class StorageConnectionError(StorageError, ConnectionError):
    """The storage endpoint could not be reached (after the configured retries)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object, prefix or bucket does not exist."""


class StoragePermissionError(StorageError, PermissionError):
    """The credentials were refused for this operation."""


@dataclass(kw_only=True)
class StorageConfig:
    """Where ``s3://`` URIs live and how to reach them; local paths ignore it.

    Unset fields fall back to the standard AWS variables when a filesystem is built (see :meth:`resolved`).
    ``repr``/``str`` never show the key or the secret.
    """

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:8333; None → $AWS_ENDPOINT_URL → the AWS default
    region: str | None = None  # None → $AWS_DEFAULT_REGION → botocore's default
    key: str | None = None  # access key id; None → $AWS_ACCESS_KEY_ID → botocore's credential chain
    secret: str | None = None  # secret access key; None → $AWS_SECRET_ACCESS_KEY (prefer the variable to a file)
    retries: int = 3  # attempts per operation on connection errors and transient 5xx answers (>= 1)
    backoff_s: float = 0.25  # first retry delay; it doubles each retry, capped at max_backoff_s
    max_backoff_s: float = 4.0  # upper bound of one retry delay
    connect_timeout_s: float = 5.0  # TCP connect timeout of one S3 request
    read_timeout_s: float = 60.0  # socket read timeout of one S3 request

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ValueError(f"StorageConfig.retries = {self.retries} must be >= 1")
        for name in ("backoff_s", "max_backoff_s", "connect_timeout_s", "read_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"StorageConfig.{name} = {getattr(self, name)} must be >= 0")

    def __repr__(self) -> str:
        key = "'***'" if self.key else "None"
        secret = "'***'" if self.secret else "None"
        return (
            f"StorageConfig(endpoint_url={self.endpoint_url!r}, region={self.region!r}, key={key}, "
            f"secret={secret}, retries={self.retries}, backoff_s={self.backoff_s}, "
            f"max_backoff_s={self.max_backoff_s}, connect_timeout_s={self.connect_timeout_s}, "
            f"read_timeout_s={self.read_timeout_s})"
        )

    __str__ = __repr__

    def resolved(self) -> StorageConfig:
        """A copy with every unset endpoint/region/key/secret filled from the standard AWS environment variables."""
        env = os.environ
        return replace(
            self,
            endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL") or None,
            region=self.region or env.get("AWS_DEFAULT_REGION") or None,
            key=self.key or env.get("AWS_ACCESS_KEY_ID") or None,
            secret=self.secret or env.get("AWS_SECRET_ACCESS_KEY") or None,
        )

    def redacted(self) -> StorageConfig:
        """A copy safe to dump next to outputs: a set key or secret becomes ``"***"``."""
        return replace(self, key="***" if self.key else None, secret="***" if self.secret else None)

    def describe_endpoint(self) -> str:
        """The endpoint as error messages name it (after the environment fallback)."""
        return self.resolved().endpoint_url or "the default AWS endpoint"


def _scheme(uri: str) -> str:
    """``"s3"`` or ``"file"`` for a supported URI; ``ValueError`` naming the valid forms otherwise."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"a storage URI must be a non-empty string, got {uri!r}")
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("file", "s3"):
        raise ValueError(f"unsupported storage URI {uri!r}: use a local path, file://PATH or s3://BUCKET/KEY")
    return scheme


def _bucket(uri: str) -> str:
    """The bucket name of an ``s3://`` URI."""
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket: use s3://BUCKET/KEY")
    return bucket


def filesystem(uri: str, storage: StorageConfig | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it.

    Local paths and ``file://`` URIs give fsspec's local filesystem and an absolute path. ``s3://bucket/key`` gives an
    s3fs filesystem configured from ``storage`` (resolved against the environment) and ``"bucket/key"``. Listing
    caches are off, so a listing always reflects other writers (the commit protocol lists completion markers).
    botocore's own retries are off as well: retries happen in this module, bounded by ``storage.retries``.

    Args:
        uri: a local path, ``file://PATH`` or ``s3://BUCKET/KEY``.
        storage: endpoint, credentials and retry settings for S3; None uses the defaults and the environment.

    Returns:
        ``(fs, path)`` where ``path`` is what ``fs`` methods take.
    """
    scheme = _scheme(uri)
    if scheme == "file":
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return fsspec.filesystem("file"), os.path.abspath(path)
    cfg = (storage or StorageConfig()).resolved()
    client_kwargs: dict[str, str] = {}
    if cfg.endpoint_url:
        client_kwargs["endpoint_url"] = cfg.endpoint_url
    if cfg.region:
        client_kwargs["region_name"] = cfg.region
    fs = fsspec.filesystem(
        "s3",
        key=cfg.key,
        secret=cfg.secret,
        client_kwargs=client_kwargs,
        config_kwargs={
            "retries": {"max_attempts": 1, "mode": "standard"},
            "connect_timeout": cfg.connect_timeout_s,
            "read_timeout": cfg.read_timeout_s,
            # Part of fsspec's instance-cache key, so configs that differ only in retries get their own instance.
            "user_agent_extra": f"fastgen s3fs-retries/{cfg.retries}",
        },
        use_listings_cache=False,
    )
    # s3fs's own loop retries timeouts, incomplete reads and SlowDown answers inside one call.
    fs.retries = cfg.retries
    _bucket(uri)
    return fs, uri.split("://", 1)[1].rstrip("/")


def _to_uri(uri: str, path: str) -> str:
    """Give ``path`` (as fsspec returns it) the same form as the ``uri`` it came from."""
    scheme = _scheme(uri)
    if scheme == "s3":
        return f"s3://{path}"
    return f"file://{path}" if uri.startswith("file://") else path


def absolute(uri: str) -> str:
    """``uri`` with a relative local path made absolute against the current directory (``s3://`` and ``file://``
    URIs unchanged), so that processes with another working directory (Ray workers) reach the same place.

    >>> absolute("s3://bucket/runs")
    's3://bucket/runs'
    """
    if _scheme(uri) == "s3" or "://" in uri:
        return uri
    return os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    """``uri`` and ``parts`` joined by single slashes: ``join("s3://b/run", "data", "x.parquet")``."""
    _scheme(uri)
    out = uri.rstrip("/")
    for part in parts:
        piece = str(part).strip("/")
        if not piece:
            raise ValueError(f"join({uri!r}, ...): empty path part in {parts!r}")
        out = f"{out}/{piece}"
    return out


def _is_transient(exc: BaseException) -> bool:
    """Connection errors, timeouts and 500/503 answers: worth another attempt."""
    import botocore.exceptions as bex

    if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, FSTimeoutError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in _TRANSIENT_ERRNOS


def _scrub(text: str, cfg: StorageConfig) -> str:
    """``text`` with the secret replaced by ``***``, in case a library echoed it.

    Secrets shorter than 8 characters are placeholders (real ones are 40) and left alone so that replacing them does
    not garble the rest of the message.
    """
    if cfg.secret and len(cfg.secret) >= 8:
        text = text.replace(cfg.secret, "***")
    return text


def _bucket_missing(uri: str, storage: StorageConfig | None) -> bool:
    """True only when the server says the bucket of ``uri`` does not exist (any other answer: False)."""
    fs, _ = filesystem(uri, storage)
    try:
        fs.call_s3("head_bucket", Bucket=_bucket(uri))
    except FileNotFoundError:
        return True
    except Exception as exc:  # a probe that cannot decide must not mask the original error
        logger.debug("bucket probe for %s was inconclusive: %s", uri, type(exc).__name__)
    return False


def _translate(exc: BaseException, op: str, uri: str, storage: StorageConfig | None, attempts: int) -> BaseException:
    """One clear error for a failed S3 operation (``_call`` chains the original unless it echoes the secret)."""
    cfg = (storage or StorageConfig()).resolved()
    endpoint = cfg.endpoint_url or "the default AWS endpoint"
    detail = _scrub(str(exc) or type(exc).__name__, cfg)
    if _is_transient(exc):
        return StorageConnectionError(
            f"cannot {op} {uri}: S3 endpoint {endpoint} unreachable or failing after {attempts} attempt(s) "
            f"({detail}); is the server running and is storage.endpoint_url / AWS_ENDPOINT_URL right?"
        )
    if isinstance(exc, FileNotFoundError | PermissionError) and _bucket_missing(uri, storage):
        return StorageNotFoundError(
            f"cannot {op} {uri}: bucket {_bucket(uri)!r} does not exist at S3 endpoint {endpoint}; create it first"
        )
    if isinstance(exc, FileNotFoundError):
        return StorageNotFoundError(f"cannot {op} {uri}: no such object or prefix at S3 endpoint {endpoint}")
    if isinstance(exc, PermissionError):
        return StoragePermissionError(
            f"cannot {op} {uri}: access denied by S3 endpoint {endpoint} ({detail}); check the access key "
            f"(storage.key / AWS_ACCESS_KEY_ID) and its rights on bucket {_bucket(uri)!r}"
        )
    return StorageError(f"cannot {op} {uri} at S3 endpoint {endpoint}: {detail}")


def _call(op: str, uri: str, storage: StorageConfig | None, fn: Callable[[], T]) -> T:
    """Run ``fn``; for S3, retry transient failures with backoff and translate failures into one clear error.

    Delay before retry ``i`` (0-based): ``min(backoff_s * 2**i, max_backoff_s)``; at most ``retries`` attempts.
    """
    if _scheme(uri) != "s3":
        return fn()
    cfg = storage or StorageConfig()
    attempt = 0
    while True:
        try:
            return fn()
        except (ValueError, TypeError):
            raise
        except Exception as exc:
            attempt += 1
            if not _is_transient(exc) or attempt >= cfg.retries:
                error = _translate(exc, op, uri, storage, attempt)
                if _scrub(str(exc), cfg.resolved()) != str(exc):
                    raise error from None  # the original message echoes the secret: do not chain it
                raise error from exc
            delay = min(cfg.backoff_s * 2 ** (attempt - 1), cfg.max_backoff_s)
            logger.warning(
                "%s %s at %s failed (%s); retry %d/%d in %.2fs",
                op,
                uri,
                cfg.describe_endpoint(),
                type(exc).__name__,
                attempt,
                cfg.retries - 1,
                delay,
            )
            time.sleep(delay)


def exists(uri: str, storage: StorageConfig | None = None) -> bool:
    """Whether an object, file or directory/prefix exists at ``uri`` (a missing bucket counts as missing)."""
    fs, path = filesystem(uri, storage)
    return _call("check", uri, storage, lambda: bool(fs.exists(path)))


def ls(uri: str, storage: StorageConfig | None = None) -> list[str]:
    """The entries directly under ``uri``, sorted, as URIs of the same form (``s3://...`` stays ``s3://...``)."""
    fs, path = filesystem(uri, storage)
    entries = _call("list", uri, storage, lambda: fs.ls(path, detail=False))
    return sorted(_to_uri(uri, p) for p in entries)


def glob(pattern: str, storage: StorageConfig | None = None) -> list[str]:
    """The URIs matching ``pattern`` (``*``, ``**``, ``?``, ``[..]`` as in fsspec), sorted."""
    fs, path = filesystem(pattern, storage)
    matches = _call("glob", pattern, storage, lambda: fs.glob(path))
    return sorted(_to_uri(pattern, p) for p in matches)


def sizes(pattern: str, storage: StorageConfig | None = None) -> dict[str, int]:
    """URI → size in bytes of every file matching ``pattern`` (as :func:`glob`), with one listing, sorted by URI."""
    fs, path = filesystem(pattern, storage)
    found = _call("glob", pattern, storage, lambda: fs.glob(path, detail=True))
    return {_to_uri(pattern, p): int(d.get("size") or 0) for p, d in sorted(found.items()) if d.get("type") == "file"}


def info(uri: str, storage: StorageConfig | None = None) -> dict:
    """fsspec's ``info`` of the file, object or directory at ``uri`` (size, type, modification time)."""
    fs, path = filesystem(uri, storage)
    return _call("stat", uri, storage, lambda: fs.info(path))


def remove(uri: str, storage: StorageConfig | None = None, recursive: bool = False) -> None:
    """Delete the file or object at ``uri`` (with ``recursive``: everything under the directory or prefix).

    A missing ``uri`` is not an error (deleting is idempotent, so an interrupted cleanup can simply be rerun).
    """
    fs, path = filesystem(uri, storage)

    def rm() -> None:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    _call("delete", uri, storage, rm)


def read_bytes(uri: str, storage: StorageConfig | None = None) -> bytes:
    """The whole content of the file or object at ``uri``."""
    fs, path = filesystem(uri, storage)
    return _call("read", uri, storage, lambda: fs.cat_file(path))


def read_text(uri: str, storage: StorageConfig | None = None, encoding: str = "utf-8") -> str:
    """The content of ``uri`` decoded as text."""
    return read_bytes(uri, storage).decode(encoding)


def makedirs(uri: str, storage: StorageConfig | None = None) -> None:
    """Create the local directory ``uri`` and its parents; for ``s3://`` nothing to do (prefixes are implicit).

    S3 buckets are deliberately not created here: a missing bucket is a configuration error that the first write
    reports clearly, rather than something to paper over.
    """
    if _scheme(uri) == "s3":
        return
    _, path = filesystem(uri, storage)
    os.makedirs(path, exist_ok=True)


def create_bucket(uri: str, storage: StorageConfig | None = None) -> None:
    """Create the bucket of the ``s3://BUCKET[/...]`` URI; an existing bucket is fine."""
    if _scheme(uri) != "s3":
        raise ValueError(f"create_bucket needs an s3:// URI, got {uri!r}")
    bucket = _bucket(uri)
    fs, _ = filesystem(uri, storage)

    def create() -> None:
        with contextlib.suppress(FileExistsError):
            fs.mkdir(bucket)

    _call("create bucket for", f"s3://{bucket}", storage, create)


def _write_local_atomic(path: str, data: bytes | bytearray | memoryview) -> None:
    """Write to a hidden temp file in the same directory, fsync it, ``os.replace`` it over ``path``, fsync the dir.

    A reader opening ``path`` sees the old file or the complete new one, never a partial one: ``os.replace`` within
    one filesystem is an atomic rename (POSIX). On any failure the temp file is removed and ``path`` is untouched.
    The temp file is created with mode 0o666 minus the umask, as a plain ``open`` would create ``path``.
    """
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_bytes_atomic(uri: str, data: bytes | bytearray | memoryview, storage: StorageConfig | None = None) -> None:
    """Write ``data`` to ``uri`` so that no reader ever sees a partial file or object.

    Local: temp file in the same directory + fsync + ``os.replace`` (an atomic rename), so the old content stays
    until the new one is complete. S3: the object is sent in one ``PutObject``; S3 makes a single PUT visible all at
    once (readers get the old or the new object, never a mix) and a failed PUT leaves the old object as it was.
    A multipart upload is never used, so no half-uploaded parts can linger or be completed by accident; objects of
    5 GiB or more, which a single PUT cannot carry, are refused with ``ValueError``.

    Args:
        uri: destination path or ``s3://BUCKET/KEY``; local parent directories are created.
        data: the complete content.
        storage: S3 settings (ignored for local paths).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"write_bytes_atomic needs bytes, got {type(data).__name__}")
    fs, path = filesystem(uri, storage)
    if _scheme(uri) == "file":
        _write_local_atomic(path, data)
        return
    size = memoryview(data).nbytes
    if size >= MAX_SINGLE_PUT_BYTES:
        raise ValueError(f"{uri}: {size} bytes exceed the single-PUT limit of {MAX_SINGLE_PUT_BYTES}; split the shard")
    if "/" not in path:
        raise ValueError(f"{uri!r} names a bucket, not an object: use s3://BUCKET/KEY")
    body = bytes(data)
    # chunksize above the 5 GiB PUT limit makes s3fs send every accepted size as one PutObject.
    _call("write", uri, storage, lambda: fs.pipe_file(path, body, chunksize=MAX_SINGLE_PUT_BYTES))


def write_text_atomic(uri: str, text: str, storage: StorageConfig | None = None, encoding: str = "utf-8") -> None:
    """:func:`write_bytes_atomic` of ``text`` encoded with ``encoding``."""
    write_bytes_atomic(uri, text.encode(encoding), storage)


def put_dir(local_dir: str | os.PathLike[str], uri: str, storage: StorageConfig | None = None) -> list[str]:
    """Copy every file under the local directory ``local_dir`` to ``uri`` (same relative paths), each atomically.

    Files are written in sorted order of their relative paths, so a caller that must write a completion marker last
    writes it after this call. Returns the destination URIs.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"put_dir: {root} is not a directory")
    written = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        dest = join(uri, *path.relative_to(root).parts)
        write_bytes_atomic(dest, path.read_bytes(), storage)
        written.append(dest)
    return written


def get_dir(uri: str, local_dir: str | os.PathLike[str], storage: StorageConfig | None = None) -> Path:
    """Copy every file under ``uri`` (a directory or prefix) into ``local_dir`` with the same relative paths.

    Each file is written locally with :func:`write_bytes_atomic`, so an interrupted copy never leaves a truncated
    file. Raises :class:`StorageNotFoundError` when nothing exists under ``uri``.
    """
    fs, base = filesystem(uri, storage)
    files = _call("list", uri, storage, lambda: fs.find(base))
    if not files:
        raise StorageNotFoundError(f"{uri}: nothing to copy (no such directory or prefix)")
    out = Path(local_dir)
    for path in sorted(files):
        rel = path[len(base) :].lstrip("/")
        if not rel:
            continue
        write_bytes_atomic(str(out.joinpath(*rel.split("/"))), read_bytes(_to_uri(uri, path), storage))
    return out

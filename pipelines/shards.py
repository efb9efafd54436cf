"""Shard writer and commit protocol: rows of a fixed row schema in, Parquet parts + side files + a marker out.

A job that turns the rows of an immutable input table into an output dataset splits the input into shards of ``S``
consecutive rows (shard k = input rows [k·S, (k+1)·S), fixed by the input order alone, never by scheduling) and hands
each finished shard to :meth:`ShardStore.commit`, which writes, in this order::

    1. side files (e.g. images/<cat>/<defect>/<id>.png)   each atomic (temp + rename locally, one PUT on S3)
    2. rejected/part-<k:05d>.parquet                      the shard's rejected rows, when there are any
    3. data/part-<k:05d>.parquet                          the shard's accepted rows, always (possibly zero rows)
    4. _commits/part-<k:05d>.json                         the completion marker: the shard's ids, file digests

A shard is done exactly when its marker exists. Every file is complete when visible (atomic writes), and all bytes
are a function of the input rows and the job config (per-row seeds, fixed Parquet options, rows sorted by input
index, markers without timestamps), so a rerun of an interrupted job skips the shards that have markers and rewrites
the others with the same bytes: whatever an interrupted attempt left behind is overwritten, never duplicated.
:meth:`ShardStore.verify` then checks that every input id is in exactly one marker (as written or as rejected).

``_commits/job.json`` (:meth:`ShardStore.claim`) pins what the output was made from (input, shard size, content
config); a rerun into the same output with a different fingerprint is refused before any work starts.

The row schemas are the caller's; the mask stage and the synthesis stage both use this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import console, storage
from pipelines.storage import StorageConfig

logger = logging.getLogger(__name__)

DATA_DIR = "data"
REJECTED_DIR = "rejected"
COMMITS_DIR = "_commits"
JOB_FILE = "job.json"
_MARKER_RE = re.compile(r"part-(\d{5})\.json$")

# Fixed Parquet options: the same table always gives the same bytes (pyarrow writes no timestamps).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": False,
    "write_statistics": True,
    "data_page_size": 1 << 20,
    "row_group_size": 1 << 16,
}


class InjectedWriteFault(OSError):
    """A write failure raised on purpose by ``fail_after_commits`` (fault-injection tests only)."""


def shard_name(shard: int) -> str:
    """``part-00007`` for shard 7."""
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard <= 99999:
        raise ValueError(f"shard index must be an integer in [0, 99999], got {shard!r}")
    return f"part-{shard:05d}"


def num_shards(n_rows: int, shard_size: int) -> int:
    """⌈n_rows / shard_size⌉.

    >>> num_shards(10, 4), num_shards(0, 4), num_shards(8, 4)
    (3, 0, 2)
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return -(-n_rows // shard_size)


def shard_rows(shard: int, n_rows: int, shard_size: int) -> range:
    """The input row indices of ``shard``: [k·S, min((k+1)·S, n)).

    >>> shard_rows(2, 10, 4)
    range(8, 10)
    """
    if not 0 <= shard < num_shards(n_rows, shard_size):
        raise ValueError(f"shard {shard} out of range for {n_rows} rows in shards of {shard_size}")
    return range(shard * shard_size, min((shard + 1) * shard_size, n_rows))


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet bytes written with :data:`PARQUET_OPTIONS` (deterministic; schema metadata kept)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(kw_only=True)
class ShardCommit:
    """The completion marker of one shard (``_commits/part-<k>.json``); deterministic, no timestamps.

    Args:
        shard: k.
        sample_ids: ids of the accepted rows, in input order (the rows of ``data/part-<k>.parquet``).
        rejected_ids: ids of the rejected rows, in input order (the rows of ``rejected/part-<k>.parquet``).
        files: relative path → SHA-256 of every Parquet file of the shard.
        run_id: the job that wrote it.
        counts: free-form counters of the shard (e.g. rejections by reason), summed by the caller's summary.
    """

    shard: int
    sample_ids: list[str]
    rejected_ids: list[str]
    files: dict[str, str]
    run_id: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> ShardCommit:
        """Parse a marker; ``ValueError`` naming ``where`` when it is not a valid marker."""
        try:
            data = json.loads(text)
            commit = cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{where}: not a valid shard commit marker ({exc})") from exc
        if not isinstance(commit.sample_ids, list) or not isinstance(commit.rejected_ids, list):
            raise ValueError(f"{where}: sample_ids and rejected_ids must be lists")
        return commit


class ShardStore:
    """Commits shards under ``root`` and answers which are done (see the module docstring for the protocol).

    Args:
        root: output URI (local path, ``file://`` or ``s3://``).
        storage: S3 settings.
        data_schema: schema of ``data/part-*.parquet`` (its metadata is written into every part).
        rejected_schema: schema of ``rejected/part-*.parquet``.
        id_column: the row id column present in both schemas.
        io_threads: parallel side-file writes per commit.
        fail_after_commits: fault injection for tests: once this many shards were committed by this instance, the
            next commit writes its files but raises :class:`InjectedWriteFault` instead of writing its marker.
    """

    def __init__(
        self,
        root: str,
        storage_cfg: StorageConfig | None = None,
        *,
        data_schema: pa.Schema,
        rejected_schema: pa.Schema,
        id_column: str = "sample_id",
        io_threads: int = 8,
        fail_after_commits: int | None = None,
    ) -> None:
        for name, schema in (("data_schema", data_schema), ("rejected_schema", rejected_schema)):
            if id_column not in schema.names:
                raise ValueError(f"ShardStore: {name} has no id column {id_column!r} (columns: {schema.names})")
        if io_threads < 1:
            raise ValueError(f"ShardStore: io_threads must be >= 1, got {io_threads}")
        self.root = root
        self.storage = storage_cfg
        self.data_schema = data_schema
        self.rejected_schema = rejected_schema
        self.id_column = id_column
        self.io_threads = io_threads
        self.fail_after_commits = fail_after_commits
        self.commits_made = 0

    # ------------------------------------------------------------------ paths
    def uri(self, *parts: str) -> str:
        """``root/parts...``."""
        return storage.join(self.root, *parts)

    def data_path(self, shard: int) -> str:
        """Relative path of the data part of ``shard``."""
        return f"{DATA_DIR}/{shard_name(shard)}.parquet"

    def rejected_path(self, shard: int) -> str:
        """Relative path of the rejected part of ``shard``."""
        return f"{REJECTED_DIR}/{shard_name(shard)}.parquet"

    def marker_path(self, shard: int) -> str:
        """Relative path of the completion marker of ``shard``."""
        return f"{COMMITS_DIR}/{shard_name(shard)}.json"

    # ------------------------------------------------------------------ job fingerprint
    def claim(self, job: Mapping[str, Any]) -> None:
        """Record ``job`` (plain JSON data) as what this output is made from, or check it against the record.

        Raises:
            ValueError: the output already holds shards of a job with a different fingerprint (names the keys).
        """
        uri = self.uri(COMMITS_DIR, JOB_FILE)
        text = json.dumps(dict(job), sort_keys=True, indent=1) + "\n"
        if storage.exists(uri, self.storage):
            try:
                old = json.loads(storage.read_text(uri, self.storage))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{uri}: not valid JSON ({exc})") from exc
            new = json.loads(text)
            if old != new:
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"{self.root} already holds shards of a different job (differs in: {', '.join(keys)}); "
                    "write to a new output URI or delete the old output first"
                )
            return
        storage.write_text_atomic(uri, text, self.storage)

    # ------------------------------------------------------------------ state
    def committed(self) -> dict[int, ShardCommit]:
        """Every committed shard: k → its marker. A marker whose name and content disagree is an error."""
        out: dict[int, ShardCommit] = {}
        for uri in storage.glob(self.uri(COMMITS_DIR, "part-*.json"), self.storage):
            match = _MARKER_RE.search(uri)
            if match is None:
                continue
            commit = ShardCommit.from_json(storage.read_text(uri, self.storage), uri)
            if commit.shard != int(match.group(1)):
                raise ValueError(f"{uri}: marker names shard {commit.shard}")
            out[commit.shard] = commit
        return out

    # ------------------------------------------------------------------ commit
    def _check_table(self, table: pa.Table, schema: pa.Schema, what: str, shard: int) -> pa.Table:
        if not table.schema.equals(schema, check_metadata=False):
            raise ValueError(
                f"{shard_name(shard)}: {what} rows do not match the schema\n got: {table.schema}\n want: {schema}"
            )
        return table.replace_schema_metadata(schema.metadata)

    def commit(
        self,
        shard: int,
        rows: pa.Table,
        rejected: pa.Table,
        files: Sequence[tuple[str, bytes]] = (),
        *,
        run_id: str,
        counts: Mapping[str, Mapping[str, int]] | None = None,
    ) -> ShardCommit:
        """Write one shard (side files, rejected part, data part, marker — in that order) and return its marker.

        Args:
            shard: k.
            rows: accepted rows in input order, exactly ``data_schema``.
            rejected: rejected rows in input order, exactly ``rejected_schema``.
            files: (relative path, bytes) side files, e.g. the PNGs the rows refer to.
            run_id: recorded in the marker.
            counts: counters recorded in the marker.
        """
        rows = self._check_table(rows, self.data_schema, "data", shard)
        rejected = self._check_table(rejected, self.rejected_schema, "rejected", shard)
        ids = rows.column(self.id_column).to_pylist()
        rejected_ids = rejected.column(self.id_column).to_pylist()
        if len(set(ids) | set(rejected_ids)) != len(ids) + len(rejected_ids):
            raise ValueError(f"{shard_name(shard)}: a row id occurs twice among the accepted and rejected rows")

        # 1. side files, each atomic; parallel (S3 PUT latency dominates)
        if files:
            with ThreadPoolExecutor(max_workers=min(self.io_threads, len(files))) as pool:
                list(pool.map(lambda f: storage.write_bytes_atomic(self.uri(f[0]), f[1], self.storage), files))
        # 2-3. rejected part (when there are rejections), data part
        digests: dict[str, str] = {}
        if rejected.num_rows:
            data = parquet_bytes(rejected)
            storage.write_bytes_atomic(self.uri(self.rejected_path(shard)), data, self.storage)
            digests[self.rejected_path(shard)] = sha256(data)
        data = parquet_bytes(rows)
        storage.write_bytes_atomic(self.uri(self.data_path(shard)), data, self.storage)
        digests[self.data_path(shard)] = sha256(data)
        if self.fail_after_commits is not None and self.commits_made >= self.fail_after_commits:
            raise InjectedWriteFault(
                f"injected write failure after {self.commits_made} committed shard(s) (fault.fail_writes_after_shards);"
                f" {shard_name(shard)} left without its marker"
            )
        # 4. the marker: from now on the shard is done
        commit = ShardCommit(
            shard=shard,
            sample_ids=ids,
            rejected_ids=rejected_ids,
            files=digests,
            run_id=run_id,
            counts={k: dict(sorted(v.items())) for k, v in sorted((counts or {}).items())},
        )
        storage.write_text_atomic(self.uri(self.marker_path(shard)), commit.to_json(), self.storage)
        self.commits_made += 1
        return commit

    # ------------------------------------------------------------------ verification
    def verify(self, n_shards: int, expected_ids: Sequence[str] | None = None) -> dict[int, ShardCommit]:
        """Check that shards 0..n_shards−1 are all committed and every id is in exactly one of them.

        Args:
            n_shards: the number of shards the input makes.
            expected_ids: every input id (optional); when given, the committed ids must be exactly these.

        Returns:
            The markers, k → :class:`ShardCommit`.

        Raises:
            RuntimeError: a shard is missing, an id occurs twice, or ids are missing or unexpected.
        """
        commits = self.committed()
        missing = sorted(set(range(n_shards)) - set(commits))
        extra = sorted(set(commits) - set(range(n_shards)))
        if missing or extra:
            raise RuntimeError(
                f"{self.root}: shards not committed: {[shard_name(k) for k in missing]}; "
                f"unexpected shards: {[shard_name(k) for k in extra]}"
            )
        seen: dict[str, int] = {}
        for k in sorted(commits):
            for sid in [*commits[k].sample_ids, *commits[k].rejected_ids]:
                if sid in seen:
                    raise RuntimeError(f"{self.root}: id {sid!r} is in {shard_name(seen[sid])} and {shard_name(k)}")
                seen[sid] = k
        if expected_ids is not None:
            expected = set(expected_ids)
            lost, unknown = expected - set(seen), set(seen) - expected
            if lost or unknown:
                raise RuntimeError(
                    f"{self.root}: {len(lost)} input id(s) in no shard (e.g. {sorted(lost)[:3]}), "
                    f"{len(unknown)} id(s) not in the input (e.g. {sorted(unknown)[:3]})"
                )
        return commits


class ShardBuffer:
    """Rows arriving from a pipeline in any order, grouped by their ``shard`` column until each shard is complete.

    A row delivered twice (a retried task) is dropped by its id, so each shard is handed to :meth:`ShardStore.commit`
    once, with each of its rows once.

    Args:
        expected: shard → number of input rows it must receive.
        id_column: the row id column.
    """

    def __init__(self, expected: Mapping[int, int], id_column: str = "sample_id") -> None:
        self.expected = dict(expected)
        self.id_column = id_column
        self.parts: dict[int, list[pa.Table]] = {}
        self.seen: dict[int, set[str]] = {}
        self.duplicates = 0

    def add(self, batch: pa.Table) -> list[int]:
        """Add rows (with a ``shard`` column); returns the shards that became complete."""
        complete = []
        shards = batch.column("shard").to_numpy()
        for k in np.unique(shards):
            k = int(k)
            if k not in self.expected:
                raise RuntimeError(f"the pipeline returned a row of {shard_name(k)}, which is not pending")
            part = batch.filter(pa.array(shards == k))
            seen = self.seen.setdefault(k, set())
            ids = part.column(self.id_column).to_pylist()
            fresh = [i not in seen for i in ids]
            if not all(fresh):
                self.duplicates += len(fresh) - sum(fresh)
                part = part.filter(pa.array(fresh))
                ids = [i for i, f in zip(ids, fresh, strict=True) if f]
            seen.update(ids)
            self.parts.setdefault(k, []).append(part)
            if len(seen) == self.expected[k]:
                complete.append(k)
        return complete

    def pop(self, shard: int) -> pa.Table:
        """The complete rows of ``shard`` (the buffer forgets them)."""
        self.seen.pop(shard)
        return pa.concat_tables(self.parts.pop(shard), promote_options="default")

    def incomplete(self) -> dict[int, int]:
        """shard → rows still missing, for the shards that received rows but never completed."""
        return {k: n - len(self.seen.get(k, ())) for k, n in self.expected.items() if k in self.parts or k in self.seen}


ShardTables = tuple[pa.Table, pa.Table, list[tuple[str, bytes]], dict[str, dict[str, int]]]


def commit_stream(
    batches: Iterable[pa.Table],
    expected: Mapping[int, int],
    store: ShardStore,
    build: Callable[[pa.Table], ShardTables],
    *,
    run_id: str,
    n_shards: int,
    unit: str,
) -> int:
    """Commit each pending shard as soon as its last row arrives; returns the rows committed.

    ``batches`` are a pipeline's output rows (any order; a retried task may deliver a row twice: :class:`ShardBuffer`
    drops it), ``expected`` the row count of every pending shard, and ``build(rows)`` turns one complete shard's rows
    into ``(data, rejected, side files, counts)`` for :meth:`ShardStore.commit`. One log line per shard: counts,
    progress, rate and ETA in ``unit``/s.

    Raises:
        RuntimeError: the batches ended before every pending shard was complete.
    """
    buffer = ShardBuffer(expected)
    total = sum(expected.values())
    done, rows_done, start = n_shards - len(expected), 0, time.perf_counter()
    rejected_total = 0
    with console.bar(total, desc=f"synthesizing {unit}" if unit == "pairs" else unit, unit=unit) as progress:
        for batch in batches:
            for k in buffer.add(batch):
                rows = buffer.pop(k)
                data, rejected, files, counts = build(rows)
                store.commit(k, data, rejected, files, run_id=run_id, counts=counts)
                done += 1
                rows_done += rows.num_rows
                progress.update(rows.num_rows)
                rejected_total += rejected.num_rows
                progress.set_postfix(shards=f"{done}/{n_shards}", rejected=rejected_total, refresh=False)
                rate = rows_done / max(time.perf_counter() - start, 1e-9)
                logger.info(
                    "committed %s (%d %s, %d rejected): %d/%d shards, %.2f %s/s, ETA %.0f s",
                    shard_name(k),
                    data.num_rows,
                    unit,
                    rejected.num_rows,
                    done,
                    n_shards,
                    rate,
                    unit,
                    (total - rows_done) / rate,
                    extra={"console": False},  # the bar shows it; the log file keeps the line
                )
    missing = buffer.incomplete()
    if missing or rows_done != total:
        raise RuntimeError(
            f"the pipeline ended with incomplete shards: "
            f"{ {shard_name(k): n for k, n in sorted(missing.items())} } rows missing"
        )
    if buffer.duplicates:
        logger.info("dropped %d duplicate deliveries (retried tasks)", buffer.duplicates)
    return rows_done


def commit_totals(commits: Mapping[int, ShardCommit]) -> tuple[int, int, dict[str, int]]:
    """(rows written, rows rejected, rejections by reason) over committed shards (markers' ``rejected_by_reason``)."""
    reasons: Counter[str] = Counter()
    for c in commits.values():
        reasons.update(c.counts.get("rejected_by_reason", {}))
    written = sum(len(c.sample_ids) for c in commits.values())
    rejected = sum(len(c.rejected_ids) for c in commits.values())
    return written, rejected, dict(sorted(reasons.items()))

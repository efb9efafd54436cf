"""The shard writer and commit protocol: write order, markers, resume, exactly-once checks, job fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.shards import (
    InjectedWriteFault,
    ShardStore,
    num_shards,
    parquet_bytes,
    shard_name,
    shard_rows,
)

DATA = pa.schema([("sample_id", pa.string()), ("value", pa.int64())], metadata={b"k": b"v"})
REJECTED = pa.schema([("sample_id", pa.string()), ("reason", pa.string())])


def _store(root: Path, **kwargs) -> ShardStore:
    return ShardStore(str(root), data_schema=DATA, rejected_schema=REJECTED, **kwargs)


def _rows(ids: list[str]) -> pa.Table:
    return pa.table({"sample_id": ids, "value": list(range(len(ids)))}, schema=DATA)


def _rejected(ids: list[str]) -> pa.Table:
    return pa.table({"sample_id": ids, "reason": ["mask_empty"] * len(ids)}, schema=REJECTED)


def test_shard_ranges_cover_rows_once() -> None:
    n, size = 23, 5
    rows = [r for k in range(num_shards(n, size)) for r in shard_rows(k, n, size)]
    assert rows == list(range(n))
    assert shard_name(3) == "part-00003"
    with pytest.raises(ValueError, match="out of range"):
        shard_rows(5, n, size)
    with pytest.raises(ValueError, match="shard_size"):
        num_shards(3, 0)


def test_parquet_bytes_deterministic_and_keep_metadata() -> None:
    a, b = parquet_bytes(_rows(["x", "y"])), parquet_bytes(_rows(["x", "y"]))
    assert a == b
    table = pq.read_table(pa.BufferReader(a))
    assert table.schema.metadata == {b"k": b"v"}
    assert parquet_bytes(_rows(["x", "z"])) != a


def test_commit_writes_files_parts_and_marker(tmp_path: Path) -> None:
    store = _store(tmp_path)
    commit = store.commit(
        0,
        _rows(["a", "b"]),
        _rejected(["c"]),
        [("images/a.png", b"A"), ("images/b.png", b"B")],
        run_id="r1",
        counts={"rejected_by_reason": {"mask_empty": 1}},
    )
    assert (tmp_path / "images/a.png").read_bytes() == b"A"
    assert pq.read_table(tmp_path / "data/part-00000.parquet").column("sample_id").to_pylist() == ["a", "b"]
    assert pq.read_table(tmp_path / "rejected/part-00000.parquet").column("reason").to_pylist() == ["mask_empty"]
    marker = json.loads((tmp_path / "_commits/part-00000.json").read_text())
    assert marker["sample_ids"] == ["a", "b"] and marker["rejected_ids"] == ["c"] and marker["run_id"] == "r1"
    assert set(marker["files"]) == {"data/part-00000.parquet", "rejected/part-00000.parquet"}
    assert store.committed() == {0: commit}
    # no rejected rows: no rejected part
    store.commit(1, _rows(["d"]), _rejected([]), run_id="r1")
    assert not (tmp_path / "rejected/part-00001.parquet").exists()
    assert sorted(store.committed()) == [0, 1]


def test_recommit_gives_same_bytes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.commit(0, _rows(["a"]), _rejected(["b"]), [("x.png", b"X")], run_id="r")
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    store.commit(0, _rows(["a"]), _rejected(["b"]), [("x.png", b"X")], run_id="r")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first


def test_injected_failure_leaves_shard_uncommitted(tmp_path: Path) -> None:
    store = _store(tmp_path, fail_after_commits=1)
    store.commit(0, _rows(["a"]), _rejected([]), run_id="r")
    with pytest.raises(InjectedWriteFault, match="part-00001 left without its marker"):
        store.commit(1, _rows(["b"]), _rejected([]), [("b.png", b"B")], run_id="r")
    assert (tmp_path / "data/part-00001.parquet").exists()  # leftovers, to be overwritten by the rerun
    assert sorted(store.committed()) == [0]
    with pytest.raises(RuntimeError, match="part-00001"):
        store.verify(2)
    _store(tmp_path).commit(1, _rows(["b"]), _rejected([]), [("b.png", b"B")], run_id="r")
    assert sorted(store.verify(2, ["a", "b"])) == [0, 1]


def test_verify_catches_duplicates_and_lost_ids(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.commit(0, _rows(["a", "b"]), _rejected([]), run_id="r")
    store.commit(1, _rows(["b"]), _rejected(["c"]), run_id="r")
    with pytest.raises(RuntimeError, match="'b' is in part-00000 and part-00001"):
        store.verify(2)
    store.commit(1, _rows(["c"]), _rejected([]), run_id="r")
    with pytest.raises(RuntimeError, match="1 input id\\(s\\) in no shard"):
        store.verify(2, ["a", "b", "c", "d"])
    assert sorted(store.verify(2, ["a", "b", "c"])) == [0, 1]


def test_commit_rejects_bad_tables(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="data rows do not match the schema"):
        store.commit(0, pa.table({"sample_id": ["a"]}), _rejected([]), run_id="r")
    with pytest.raises(ValueError, match="occurs twice"):
        store.commit(0, _rows(["a"]), _rejected(["a"]), run_id="r")
    assert store.committed() == {}
    with pytest.raises(ValueError, match="no id column"):
        ShardStore(str(tmp_path), data_schema=pa.schema([("x", pa.int64())]), rejected_schema=REJECTED)


def test_marker_name_and_content_must_agree(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.commit(0, _rows(["a"]), _rejected([]), run_id="r")
    (tmp_path / "_commits/part-00001.json").write_text((tmp_path / "_commits/part-00000.json").read_text())
    with pytest.raises(ValueError, match="part-00001.json: marker names shard 0"):
        store.committed()
    (tmp_path / "_commits/part-00001.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid shard commit marker"):
        store.committed()


def test_claim_refuses_a_different_job(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.claim({"run_id": "a", "content": {"nfe": 10}})
    store.claim({"run_id": "a", "content": {"nfe": 10}})  # same job: fine
    with pytest.raises(ValueError, match=r"different job \(differs in: content, run_id\)"):
        store.claim({"run_id": "b", "content": {"nfe": 12}})


@pytest.mark.s3
def test_commit_on_s3(s3_bucket) -> None:
    root = storage.join(s3_bucket.uri, "out")
    store = ShardStore(root, s3_bucket.storage, data_schema=DATA, rejected_schema=REJECTED)
    store.commit(0, _rows(["a"]), _rejected(["b"]), [("images/a.png", b"A")], run_id="r")
    assert storage.read_bytes(storage.join(root, "images/a.png"), s3_bucket.storage) == b"A"
    assert sorted(store.verify(1, ["a", "b"])) == [0]


def test_shard_buffer_groups_rows_drops_redeliveries_and_reports_gaps() -> None:
    from pipelines.shards import ShardBuffer

    def rows(shard: int, ids: list[str]) -> pa.Table:
        return pa.table({"shard": [shard] * len(ids), "sample_id": ids})

    buffer = ShardBuffer({0: 2, 1: 3})
    assert buffer.add(rows(1, ["c", "d"])) == []
    assert buffer.add(pa.concat_tables([rows(0, ["a", "b"]), rows(1, ["c"])])) == [0]  # "c" delivered twice
    assert buffer.duplicates == 1 and buffer.pop(0).column("sample_id").to_pylist() == ["a", "b"]
    assert buffer.incomplete() == {1: 1}
    assert buffer.add(rows(1, ["e"])) == [1] and buffer.pop(1).num_rows == 3 and buffer.incomplete() == {}
    with pytest.raises(RuntimeError, match="part-00007, which is not pending"):
        buffer.add(rows(7, ["x"]))


def test_commit_stream_commits_complete_shards_and_fails_on_gaps(tmp_path: Path) -> None:
    from pipelines.shards import commit_stream

    def arrived(shard: int, ids: list[str]) -> pa.Table:
        return pa.table({"shard": [shard] * len(ids), "sample_id": ids})

    def build(rows: pa.Table):
        ids = rows.column("sample_id").to_pylist()
        return _rows(ids), _rejected([]), [], {}

    store = _store(tmp_path / "a")
    batches = [arrived(1, ["c"]), arrived(0, ["a", "b"]), arrived(1, ["c", "d"])]  # "c" delivered twice
    assert commit_stream(batches, {0: 2, 1: 2}, store, build, run_id="r", n_shards=3, unit="pairs") == 4
    assert {k: c.sample_ids for k, c in store.committed().items()} == {0: ["a", "b"], 1: ["c", "d"]}
    with pytest.raises(RuntimeError, match=r"incomplete shards: \{'part-00001': 1\}"):
        commit_stream([arrived(1, ["x"])], {1: 2}, _store(tmp_path / "b"), build, run_id="r", n_shards=2, unit="pairs")

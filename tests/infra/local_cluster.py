"""Start and stop ``infra/local/ray-cluster.sh`` (a head and a worker node on loopback) from tests."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local" / "ray-cluster.sh"


@dataclass
class LocalCluster:
    """A running two-node cluster: ``env`` reaches it (RAY_ADDRESS, RAY_API_SERVER_ADDRESS, auth token)."""

    state: Path
    env: dict[str, str]
    exports: dict[str, str]
    ray_temp_dir: str


def cluster_processes(ray_temp_dir: str) -> list[str]:
    """Live processes whose command line names a session folder of the cluster's Ray temp folder."""
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"{ray_temp_dir}/session_" in line and not line.startswith("Z")]


@contextmanager
def local_cluster(state: Path, head_cpus: int = 1, worker_cpus: int = 1) -> Iterator[LocalCluster]:
    """Run the script's ``start`` (with the venv's bin first on PATH, so node processes find ``fastgen``), yield the
    cluster, and always run ``stop``; afterwards no process of the cluster may be left."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_CLUSTER_DIR": str(state), "HEAD_CPUS": str(head_cpus), "WORKER_CPUS": str(worker_cpus)}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=240)
    temp_file = state / "ray_temp_dir"
    ray_temp_dir = temp_file.read_text().strip() if temp_file.exists() else "-"
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        exports = dict(kv.split("=", 1) for kv in shlex.split(start.stdout.strip())[1:])
        yield LocalCluster(state=state, env={**env, **exports}, exports=exports, ray_temp_dir=ray_temp_dir)
    finally:
        stop = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
    assert not state.exists() and not Path(ray_temp_dir).exists() and cluster_processes(ray_temp_dir) == []

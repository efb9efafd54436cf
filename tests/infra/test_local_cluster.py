"""infra/local/ray-cluster.sh: a head plus a worker node with a custom resource on loopback, stopped cleanly."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local" / "ray-cluster.sh"

PROBE = """
import os, ray
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
alive = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=0, resources={"node_b": 1})
def on_b():
    return ray.get_runtime_context().get_node_id()

node = ray.get(on_b.remote(), timeout=60)
heads = [n["NodeID"] for n in alive if n["Resources"].get("node:__internal_head__")]
print(len(alive), node != heads[0], ray.cluster_resources().get("node_b"))
"""


def _ours(ray_temp_dir: str) -> list[str]:
    """Live processes whose command line names a session folder of the cluster's Ray temp folder."""
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"{ray_temp_dir}/session_" in line and not line.startswith("Z")]


@pytest.mark.slow
def test_start_probe_stop(tmp_path):
    state = tmp_path / "cluster"
    env = {**os.environ, "RAY_CLUSTER_DIR": str(state), "HEAD_CPUS": "1", "WORKER_CPUS": "1"}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
    ray_temp_dir = (state / "ray_temp_dir").read_text().strip() if (state / "ray_temp_dir").exists() else "-"
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        exports = dict(kv.split("=", 1) for kv in shlex.split(start.stdout.strip())[1:])
        assert exports["RAY_ADDRESS"].startswith("127.0.0.1:") and exports["RAY_AUTH_MODE"] == "token"
        again = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already recorded" in again.stderr
        probe = subprocess.run(
            [sys.executable, "-c", PROBE], env={**env, **exports}, capture_output=True, text=True, timeout=180
        )
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert probe.stdout.split() == ["2", "True", "1.0"]  # two nodes; node_b work ran off the head
    finally:
        stop = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert not state.exists() and not Path(ray_temp_dir).exists() and _ours(ray_temp_dir) == []

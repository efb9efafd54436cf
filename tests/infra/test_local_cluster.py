"""infra/local/ray-cluster.sh: a head plus a worker node with a custom resource on loopback, stopped cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.infra.local_cluster import SCRIPT, local_cluster

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


@pytest.mark.slow
def test_start_probe_stop(tmp_path):
    with local_cluster(tmp_path / "cluster") as cluster:
        assert cluster.exports["RAY_ADDRESS"].startswith("127.0.0.1:") and cluster.exports["RAY_AUTH_MODE"] == "token"
        assert cluster.exports["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")
        again = subprocess.run([str(SCRIPT), "start"], env=cluster.env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already recorded" in again.stderr
        probe = subprocess.run(
            [sys.executable, "-c", PROBE], env=cluster.env, capture_output=True, text=True, timeout=180
        )
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert probe.stdout.split() == ["2", "True", "1.0"]  # two nodes; node_b work ran off the head

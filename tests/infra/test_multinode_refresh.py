"""The RayJob entrypoint ``fastgen refresh`` submitted with ``ray job submit`` to a real two-node Ray cluster.

Both nodes have one CPU: the synthesizer actor holds one node's CPU, so the load/encode tasks around it can only run
on the other node; the test then reads from Ray's state API which nodes ran the job's tasks and actors. Storage is the
embedded SeaweedFS S3 server, reached with the same AWS_* variables a RayJob takes from its Secret.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pipelines import storage
from pipelines.versions import read_latest, resolve
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import TINY_KEYS, publish_tiny_model
from tests.infra.local_cluster import REPO, local_cluster

pytestmark = [pytest.mark.slow, pytest.mark.s3]

NODES_OF_JOB = """
import json, os, sys, ray
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors, list_tasks
info = JobSubmissionClient(os.environ["RAY_API_SERVER_ADDRESS"]).get_job_info(sys.argv[1])
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
job = info.job_id
nodes = {t.node_id for t in list_tasks(filters=[("job_id", "=", job)], limit=10000, raise_on_missing_output=False)
         if t.node_id}
nodes |= {a.node_id for a in list_actors(filters=[("job_id", "=", job)], limit=1000) if a.node_id}
print(json.dumps({"status": str(info.status), "nodes": sorted(nodes), "alive": sum(n["Alive"] for n in ray.nodes())}))
"""


def _ray(cluster_env: dict[str, str], *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    ray_bin = str(REPO / ".venv" / "bin" / "ray") if (REPO / ".venv" / "bin" / "ray").exists() else "ray"
    return subprocess.run([ray_bin, *args], env=cluster_env, capture_output=True, text=True, timeout=timeout)


def test_refresh_rayjob_entrypoint_on_two_nodes(tmp_path, s3_bucket) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 3}, mode="RGB")
    model = publish_tiny_model(f"{s3_bucket.uri}/models/tiny", s3_bucket.storage, keys=TINY_KEYS)
    prefix = f"{s3_bucket.uri}/datasets"
    s3_env = {
        "AWS_ENDPOINT_URL": s3_bucket.storage.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_bucket.storage.key or "fastgen",
        "AWS_SECRET_ACCESS_KEY": s3_bucket.storage.secret or "fastgen",
    }
    # The RayJob's entrypoint (infra/kuberay/rayjob-refresh.yaml) with the tiny spec and this test's paths.
    entrypoint = (
        "fastgen refresh --config jobs/configs/refresh-tiny.yaml"
        f" --set dataset.root={json.dumps(str(root))} --set model_uri={json.dumps(model)}"
        f" --set prefix={json.dumps(prefix)} --set masks.compute.task_cpus=1"
    )
    with local_cluster(tmp_path / "cluster", head_cpus=1, worker_cpus=1) as cluster:
        submit = _ray(
            cluster.env,
            "job", "submit",
            "--address", cluster.exports["RAY_API_SERVER_ADDRESS"],
            "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps({"env_vars": s3_env, "excludes": [".venv", "runs", ".git"]}),
            "--submission-id", "refresh-multinode",
            "--", *entrypoint.split(" "),
            timeout=900,
        )  # fmt: skip
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        assert "published as LATEST" in submit.stdout
        probe = subprocess.run(
            [sys.executable, "-c", NODES_OF_JOB, "refresh-multinode"],
            env=cluster.env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr[-2000:]
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert seen["status"].endswith("SUCCEEDED") and seen["alive"] == 2, seen
        assert len(seen["nodes"]) == 2, seen  # the job's tasks and actors ran on both nodes
    latest = read_latest(prefix, "tiny", s3_bucket.storage)
    assert latest is not None and latest.validation["passed"]
    version = resolve(prefix, "tiny", s3_bucket.storage)
    assert storage.exists(f"{version}/_SUCCESS", s3_bucket.storage)
    assert storage.glob(f"{version}/data/part-*.parquet", s3_bucket.storage)

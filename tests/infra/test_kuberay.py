"""The KubeRay manifests: valid against the vendored CRD schemas (closed objects), and runnable as written.

Checks per manifest: schema validity (a misspelt field fails, as with ``kubectl apply --validate=strict``), the
Ray version and image pins, non-root pods, GPU tolerations, S3 credentials from the Secret, and an entrypoint that
names an existing ``fastgen`` subcommand and an existing ``jobs/configs`` file (shipped in the ConfigMap).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli import SUBCOMMANDS
from tests.infra.crd_schemas import SCHEMAS
from tests.infra.test_docker import pins

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "infra" / "kuberay"
CONFIGS = REPO / "jobs" / "configs"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
S3_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(where, pod spec)`` of every pod template of a RayCluster/RayJob/RayCronJob."""
    spec = doc["spec"]
    if doc["kind"] == "RayCronJob":
        spec = spec["jobTemplate"]
    out = []
    if doc["kind"] != "RayCluster":
        out.append(("submitter", spec["submitterPodTemplate"]["spec"]))
        spec = spec["rayClusterSpec"]
    out.append(("head", spec["headGroupSpec"]["template"]["spec"]))
    for group in spec.get("workerGroupSpecs", []):
        out.append((f"worker group {group['groupName']}", group["template"]["spec"]))
    return out


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    if doc["kind"] == "RayCronJob":
        spec = spec["jobTemplate"]
    return spec if doc["kind"] == "RayCluster" else spec["rayClusterSpec"]


def job_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "RayJob":
        return doc["spec"]
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else None


def test_every_kind_is_present():
    kinds = sorted({d["kind"] for p in MANIFESTS for d in documents(p)})
    assert kinds == ["RayCluster", "RayCronJob", "RayJob"]
    jobs = {p.name for p in MANIFESTS if p.name.startswith("rayjob-")}
    assert {"rayjob-train.yaml", "rayjob-masks.yaml", "rayjob-synthesize.yaml", "rayjob-refresh.yaml"} <= jobs


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_crd_schema(path, validators):
    for doc in documents(path):
        assert doc["apiVersion"] == "ray.io/v1", path.name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]
        errors = sorted(validators[doc["kind"]].iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{path.name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_closed_schema_rejects_misspelt_fields(validators):
    doc = documents(KUBERAY / "rayjob-train.yaml")[0]
    assert validators["RayJob"].is_valid(doc)
    typo = copy.deepcopy(doc)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    assert not validators["RayJob"].is_valid(typo)
    bad_type = copy.deepcopy(doc)
    bad_type["spec"]["activeDeadlineSeconds"] = "1h"
    assert not validators["RayJob"].is_valid(bad_type)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_ray_version_image_and_security(path):
    ray_pin = pins()["ray"]
    minor = re.fullmatch(r"(\d+\.\d+)\.\*", ray_pin).group(1)
    for doc in documents(path):
        cluster = cluster_spec(doc)
        assert cluster["rayVersion"].startswith(minor + "."), f"{path.name}: rayVersion vs pyproject {ray_pin}"
        images = set()
        for where, pod in pod_specs(doc):
            ctx = pod["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000, f"{path.name} {where}"
            for container in pod["containers"]:
                images.add(container["image"])
                sec = container["securityContext"]
                assert sec["allowPrivilegeEscalation"] is False, f"{path.name} {where}"
                assert "resources" in container and container["resources"]["limits"], f"{path.name} {where}"
            if where.startswith("worker"):
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            if where != "submitter":
                env = {e["name"]: e for c in pod["containers"] for e in c.get("env", [])}
                assert set(env) >= S3_KEYS, f"{path.name} {where}: S3 variables"
                for key in S3_KEYS:
                    ref = env[key]["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "fastgen-s3" and ref["key"] == key
                mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
                assert "/configs" in mounts
        assert len(images) == 1, f"{path.name}: one image everywhere, got {images}"
        image = images.pop()
        assert ":" in image and not image.endswith(":latest"), image
        assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
        for group in cluster.get("workerGroupSpecs", []):
            assert cluster["enableInTreeAutoscaling"] is True
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] >= 1


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name != "raycluster.yaml"], ids=lambda p: p.name)
def test_job_lifecycle_and_entrypoint(path):
    """Every RayJob cleans up after itself and runs an existing fastgen subcommand on an existing config."""
    commands = {name.replace("_", "-") for name in SUBCOMMANDS}
    for doc in documents(path):
        spec = job_spec(doc)
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "fastgen" and argv[2] == "--config", spec["entrypoint"]
        assert argv[1] in commands, f"{path.name}: `fastgen {argv[1]}` does not exist (have {sorted(commands)})"
        config = Path(argv[3])
        assert config.parent == Path("/configs"), f"{path.name}: configs come from the ConfigMap at /configs"
        assert (CONFIGS / config.name).is_file(), f"{path.name}: jobs/configs/{config.name} does not exist"


def test_configmap_carries_every_config():
    configmap = _load_module(KUBERAY / "configmap.py")
    cm = configmap.build_configmap()
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "fastgen-configs"
    assert sorted(cm["data"]) == sorted(p.name for p in CONFIGS.glob("*.yaml"))
    for name, text in cm["data"].items():
        assert text == (CONFIGS / name).read_text()
    volumes = {
        v["configMap"]["name"]
        for p in MANIFESTS
        for d in documents(p)
        for _, pod in pod_specs(d)
        for v in pod.get("volumes", [])
        if "configMap" in v
    }
    assert volumes == {"fastgen-configs"}


def test_vendored_schemas_are_reproducible(tmp_path):
    """The vendored JSON equals a fresh extraction from the CRDs (where ../shared holds them)."""
    vendor = _load_module(SCHEMAS / "vendor.py")
    source = vendor.DEFAULT_SOURCE
    if not source.is_dir():
        pytest.fail(f"{source} is missing: the KubeRay CRDs are expected next to the repository (../shared)")
    for written in vendor.vendor(source, tmp_path):
        assert written.read_bytes() == (SCHEMAS / written.name).read_bytes(), written.name

"""Write the ``openAPIV3Schema`` of the KubeRay CRDs as compact JSON next to this file (what the manifest tests use).

Usage: ``python infra/kuberay/schemas/vendor.py [CRD_DIR]`` with ``CRD_DIR`` defaulting to ``../shared/schemas/kuberay``
relative to the repository root (the unchanged KubeRay CRD files, ``ray.io_<plural>.yaml``).

For each of RayCluster, RayJob and RayCronJob it takes the schema of the served storage version (``v1``), drops the
``description`` texts (documentation only: validation is unchanged, and the files shrink by about two thirds) and
writes ``ray.io_<plural>.v1.json`` with sorted keys, so a rerun on the same CRDs gives the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_SOURCE = REPO.parent / "shared" / "schemas" / "kuberay"
PLURALS = ("rayclusters", "rayjobs", "raycronjobs")


def strip_descriptions(node: Any) -> Any:
    """A copy of a JSON schema without ``description`` keywords (a *property* named "description" is kept)."""
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        else:
            out[key] = strip_descriptions(value)
    return out


def storage_schema(crd: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD's storage version."""
    versions = [v for v in crd["spec"]["versions"] if v.get("storage")]
    if len(versions) != 1:
        raise ValueError(f"{where}: expected exactly one storage version, found {len(versions)}")
    return versions[0]["schema"]["openAPIV3Schema"]


def vendor(source: Path, dest: Path = HERE) -> list[Path]:
    """Write one compact JSON schema per CRD of ``source`` into ``dest``; returns the files written."""
    written = []
    for plural in PLURALS:
        src = source / f"ray.io_{plural}.yaml"
        if not src.is_file():
            raise FileNotFoundError(f"{src}: KubeRay CRD not found (pass the CRD folder as the first argument)")
        crd = yaml.load(src.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: ~10x faster
        version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
        schema = strip_descriptions(storage_schema(crd, str(src)))
        out = dest / f"ray.io_{plural}.{version}.json"
        out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
        written.append(out)
    return written


if __name__ == "__main__":
    for path in vendor(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size} bytes")

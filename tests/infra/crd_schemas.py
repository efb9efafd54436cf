"""The vendored KubeRay CRD schemas as ``jsonschema`` validators with closed objects (see :func:`closed`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[2] / "infra" / "kuberay" / "schemas"
SCHEMA_FILES = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}


def closed(schema: Any) -> Any:
    """A copy of a CRD schema where an object with ``properties`` accepts no other keys.

    Kubernetes prunes unknown fields (``kubectl apply --validate=strict`` refuses them); JSON Schema would let them
    pass. Nodes marked ``x-kubernetes-preserve-unknown-fields`` stay open.
    """
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (closed(v) if k != "properties" else {n: closed(s) for n, s in v.items()}) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_validators() -> dict[str, jsonschema.Draft7Validator]:
    """One validator per kind, over the closed form of its vendored schema."""
    out = {}
    for kind, plural in SCHEMA_FILES.items():
        schema = json.loads((SCHEMAS / f"ray.io_{plural}.v1.json").read_text())
        out[kind] = jsonschema.Draft7Validator(closed(schema))
    return out

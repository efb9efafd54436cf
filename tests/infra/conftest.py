"""Fixtures of the infra tests."""

from __future__ import annotations

import jsonschema
import pytest

from tests.infra.crd_schemas import load_validators


@pytest.fixture(scope="session")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    """Validators of the KubeRay kinds (RayCluster, RayJob, RayCronJob), built once per session."""
    return load_validators()

"""Shared pytest setup: GPU tests skip without CUDA; every other marker runs for real."""

from __future__ import annotations

import pytest
import torch

# Fixtures shared across test packages: the embedded S3 server (session), a fresh bucket per test, local Ray.
pytest_plugins = ["tests.fixtures_s3", "tests.fixtures_ray"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests when CUDA is absent (CI has no GPU); ``s3`` and ``ray`` tests never skip."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

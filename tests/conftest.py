"""Shared pytest setup: GPU tests skip without CUDA; every other marker runs for real."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# CLI calls in tests write their log files here, not into the working folder.
os.environ.setdefault("FASTGEN_LOG_DIR", tempfile.mkdtemp(prefix="fastgen-test-logs-"))

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

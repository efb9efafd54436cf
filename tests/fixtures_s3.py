"""Pytest fixtures for object-storage tests: one real SeaweedFS S3 server per session and a fresh bucket per test.

``s3_server`` starts :class:`pipelines.s3server.SeaweedS3Server` on loopback once for the whole session and stops it
(and its whole process group) at the end. It never skips: when the server cannot start, every test that needs it
errors with the server's log tail. ``s3_bucket`` creates a uniquely named bucket for one test and deletes it
afterwards. Tests that use them are marked ``@pytest.mark.s3``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pipelines.s3server import SeaweedS3Server
from pipelines.storage import StorageConfig, filesystem


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on the session's S3 server: ``uri`` is ``s3://<name>``; ``storage`` reaches it."""

    name: str
    uri: str
    storage: StorageConfig


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """The session's SeaweedFS S3 server on a free loopback port (started once, stopped at session end)."""
    server = SeaweedS3Server(tmp_path_factory.mktemp("s3server"), stop_timeout_s=1.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3Server) -> Iterator[S3Bucket]:
    """A fresh, empty, uniquely named bucket on the session's server; deleted with its objects after the test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    uri = s3_server.create_bucket(name)
    storage = s3_server.storage_config()
    yield S3Bucket(name=name, uri=uri, storage=storage)
    if s3_server.running:
        fs, _ = filesystem(uri, storage)
        fs.rm(name, recursive=True)

"""Pytest fixture for Ray tests: one local Ray cluster per test session, never a foreign one.

``ray_local`` starts Ray with ``address="local"`` (so a ``RAY_ADDRESS`` in the environment or a cluster started with
``ray start`` on this machine is never joined by accident), four logical CPUs on a two-core machine (so an actor pool
and the CPU tasks around it can be scheduled at the same time), the dashboard on loopback (Ray Train polls the state
API it serves), and shuts it down at session end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.ray_utils import local_ray_kwargs


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray cluster shared by every Ray test of the session."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(**local_ray_kwargs(num_cpus=4))
    try:
        yield
    finally:
        ray.shutdown()

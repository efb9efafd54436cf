"""Connecting to Ray: the cluster named by ``RAY_ADDRESS`` (or the one a RayJob runs in), else a local one.

Every ``fastgen`` subcommand calls :func:`ensure_ray` once before it builds a Ray Data pipeline or a ``TorchTrainer``;
the same code then runs on a laptop (a local cluster started in-process) and on a KubeRay cluster.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

# The project's own modules must reach Ray workers; the working tree is not shipped (the package is installed).
_RUNTIME_ENV: dict[str, Any] = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}


def local_ray_kwargs(num_cpus: int | None = None) -> dict[str, Any]:
    """``ray.init`` keyword arguments for a private local cluster: never joins an existing one; dashboard on loopback.

    Args:
        num_cpus: logical CPUs to advertise (None: Ray counts the machine's cores).
    """
    kwargs: dict[str, Any] = {
        "address": "local",
        "include_dashboard": True,  # the state API (Ray Train V2 polls it) lives in the dashboard
        "dashboard_host": "127.0.0.1",
        "log_to_driver": True,
        "runtime_env": _RUNTIME_ENV,
        "configure_logging": True,
        "logging_level": logging.WARNING,
    }
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    return kwargs


_STARTED_LOCAL = False


def started_local() -> bool:
    """Whether this process started its own local cluster (its resources are fixed: nothing autoscales)."""
    return _STARTED_LOCAL


def ensure_ray(num_cpus: int | None = None) -> str:
    """Connect to Ray once per process and return a one-line description of the cluster.

    ``RAY_ADDRESS`` set (or running inside a Ray job): join that cluster (``num_cpus`` is ignored there). Otherwise
    start a private local cluster with :func:`local_ray_kwargs`. An already initialised Ray is reused as it is.
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, runtime_env=_RUNTIME_ENV, logging_level=logging.WARNING)
        else:
            global _STARTED_LOCAL
            ray.init(**local_ray_kwargs(num_cpus))
            _STARTED_LOCAL = True
    resources = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    desc = (
        f"Ray {ray.__version__}: {nodes} node(s), {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"
        f" ({'RAY_ADDRESS=' + os.environ['RAY_ADDRESS'] if os.environ.get('RAY_ADDRESS') else 'local'})"
    )
    logger.info("%s", desc)
    return desc

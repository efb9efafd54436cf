"""Connecting to Ray: the cluster named by ``RAY_ADDRESS`` (or the one a RayJob runs in), else a local one.

Every ``fastgen`` subcommand calls :func:`ensure_ray` once before it builds a Ray Data pipeline or a ``TorchTrainer``;
the same code then runs on a laptop (a local cluster started in-process) and on a KubeRay cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from pipelines import console

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
        "log_to_driver": console.verbose(),  # quiet CLI: workers' output stays in Ray's session logs
        "runtime_env": _RUNTIME_ENV,
        "configure_logging": console.verbose(),
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

    started = not ray.is_initialized()
    console.announce_log()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(
                address=address,
                runtime_env=_RUNTIME_ENV,
                logging_level=logging.WARNING,
                log_to_driver=console.verbose(),
                configure_logging=console.verbose(),
            )
        else:
            global _STARTED_LOCAL
            ray.init(**local_ray_kwargs(num_cpus))
            _STARTED_LOCAL = True
        console.route_ray_loggers()
    resources = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    desc = (
        f"Ray {ray.__version__}: {nodes} node(s), {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"
        f" ({'RAY_ADDRESS=' + os.environ['RAY_ADDRESS'] if os.environ.get('RAY_ADDRESS') else 'local'})"
    )
    logger.log(logging.INFO if started else logging.DEBUG, "%s", desc)
    if started:  # where Ray keeps the workers' own output (in the log file, not on the quiet console)
        with contextlib.suppress(Exception):
            session = ray._private.worker._global_node.get_session_dir_path()
            logger.info("Ray session logs (workers' output): %s/logs", session, extra={"console": False})
    return desc


def check_cpu_budget(actors: int, actor_cpus: float, task_cpus: float, tasks: str) -> None:
    """Fail fast when an actor pool would hold every CPU of a fixed-size cluster (a Ray Data stage then stalls).

    The pool reserves ``actors × actor_cpus``; the stage's CPU tasks need one more task's CPUs (``max(task_cpus, 1)``)
    beside it, or they never run and the job hangs without an error. On a local cluster this process started, that is
    a config error (``ValueError``); on a shared cluster (``RAY_ADDRESS``) it may autoscale, so it is a warning.

    Args:
        actors: ``compute.concurrency``; actor_cpus: ``compute.num_cpus``; task_cpus: ``compute.task_cpus``;
        tasks: what the CPU tasks do, for the message (e.g. ``"read/encode tasks"``).
    """
    import ray

    need = actors * actor_cpus + max(task_cpus, 1.0)
    have = float(ray.cluster_resources().get("CPU", 0.0))
    if need <= have:
        return
    msg = (
        f"compute: {actors} actor(s) × num_cpus {actor_cpus:g} + one task's {max(task_cpus, 1.0):g} CPU "
        f"= {need:g} logical CPUs, but the Ray cluster has {have:g}: the {tasks} could never run beside "
        "the actors. Lower compute.num_cpus / concurrency, or start Ray with more logical CPUs (--num-cpus)"
    )
    if started_local():
        raise ValueError(msg)
    logger.warning("%s (continuing: a shared cluster may scale up)", msg)


def stream_blocks(ds: Any, batch_format: str) -> Iterator[Any]:
    """The output blocks of the Ray Dataset ``ds`` on the driver, each as soon as it is ready (any order).

    No local prefetch. With ``batch_size=None``, Ray Data's ``iter_batches(prefetch_batches=k)`` waits for the next
    ``k`` blocks before it yields the current one, so every block reached the shard writer ``k`` actor batches late:
    the first shard committed, and the progress bar moved, only after two more batches had been synthesized
    (≈ 8 s of a 1-pair/s CPU actor; ``benchmarks/SPEED.md`` §2, start-up). A block here is one actor batch of encoded
    PNGs (≲ 1 MiB) in the local object store, so fetching it on demand costs the writer nothing measurable.

    Args:
        ds: a ``ray.data.Dataset``.
        batch_format: ``"pyarrow"``, ``"numpy"``, … as for ``iter_batches``.
    """
    return iter(ds.iter_batches(batch_size=None, batch_format=batch_format, prefetch_batches=0))

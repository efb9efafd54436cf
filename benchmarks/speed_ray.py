"""What the ``pipeline`` part of :mod:`benchmarks.speed` observes in Ray during a run.

:class:`RayMonitor` samples the object store and the peak RSS of the synthesizer actors while a pipeline run goes on;
:func:`operator_stats` reads Ray Data's per-operator stats of the dataset the run executed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.speed_memory import memory_split


class RayMonitor(threading.Thread):
    """Samples the object store and the peak RSS of the ``FastSynthesizer`` actors while one pipeline run goes on.

    Every ``interval`` s: the raylet's store statistics (``object_store_bytes_used`` summed over the nodes, what
    ``ray memory --stats-only`` prints) and the ``VmHWM`` of every known actor process, with the largest sampled
    anonymous, file-backed, proportional and private bytes (:func:`benchmarks.speed_memory.memory_split`). Until
    ``expected_actors`` are known, every ``actor_interval`` s: this job's actors on this node that are not dead
    (starting or alive) and whose class name contains ``match``, from the GCS actor table; the pool has a fixed
    size, so listing stops once they are all found. ``VmHWM`` is a lifetime peak, so an actor found late still
    reports its whole peak. Objects under Ray's inline limit (100 KiB) live in the owner's heap, not in the store,
    and do not show here. Problems are recorded in ``errors`` (an actor that ends between two samples is not one);
    ``cpu_seconds`` is the monitor thread's own CPU time, its cost to the driver.
    """

    def __init__(
        self,
        expected_actors: int,
        match: str = "FastSynthesizer",
        interval: float = 0.5,
        actor_interval: float = 0.5,
    ) -> None:
        super().__init__(daemon=True, name="speed-ray-monitor")
        import ray
        from ray._private.internal_api import get_state_from_address

        ctx = ray.get_runtime_context()
        self.gcs_address = ctx.gcs_address
        self.node_id = ctx.get_node_id()
        self.job_id = ctx.job_id
        self.state = get_state_from_address(self.gcs_address)
        self.expected_actors, self.match = expected_actors, match
        self.interval, self.actor_interval = interval, actor_interval
        self.capacity = int(ray.cluster_resources().get("object_store_memory", 0))
        self.stop_event = threading.Event()
        self.used: list[int] = []
        self.spilled: list[int] = []
        self.actors: dict[int, dict[str, Any]] = {}  # pid -> {"class_name", "peak_rss_bytes", "last_rss_bytes"}
        self.errors: list[str] = []
        self.cpu_seconds = 0.0

    def _error(self, what: str, exc: BaseException) -> None:
        msg = f"{what}: {type(exc).__name__}: {exc}"
        if msg not in self.errors and len(self.errors) < 10:
            self.errors.append(msg)

    def sample_store(self) -> None:
        """One reading of the store statistics."""
        from ray._private.internal_api import get_memory_info_reply

        try:
            stats = get_memory_info_reply(self.state, timeout_seconds=5.0).store_stats
        except Exception as exc:  # noqa: BLE001 - any failure of the probe is recorded, the run goes on
            self._error("object store stats", exc)
            return
        self.used.append(int(stats.object_store_bytes_used))
        self.spilled.append(int(stats.spilled_bytes_total))
        self.capacity = int(stats.object_store_bytes_avail) or self.capacity

    def _find_actors(self) -> None:
        try:
            table = self.state.actor_table(None, job_id=self.job_id)
        except Exception as exc:  # noqa: BLE001 - recorded; the next refresh tries again
            self._error("actor table", exc)
            return
        for actor in table.values():
            mine = actor["Address"]["NodeID"] == self.node_id and self.match in actor["ActorClassName"]
            if mine and actor["State"] != "DEAD" and actor["Pid"]:
                self.actors.setdefault(int(actor["Pid"]), {"class_name": actor["ActorClassName"]})

    def _sample_actors(self) -> None:
        for pid, entry in self.actors.items():
            try:
                split = memory_split(pid)
            except OSError:
                continue  # the actor ended (the pool shuts down when the dataset is done)
            entry["peak_rss_bytes"] = max(entry.get("peak_rss_bytes", 0), split["peak_rss"])
            entry["last_rss_bytes"] = split["rss"]
            for name in ("anon", "file", "pss", "uss"):  # the largest sampled value of each (speed_memory)
                if name in split:
                    entry[f"max_{name}_bytes"] = max(entry.get(f"max_{name}_bytes", 0), split[name])

    def run(self) -> None:
        """Sample until :meth:`finish`."""
        next_refresh = 0.0
        while not self.stop_event.is_set():
            cpu = time.thread_time()
            now = time.monotonic()
            if len(self.actors) < self.expected_actors and now >= next_refresh:
                self._find_actors()
                next_refresh = now + self.actor_interval
            self.sample_store()
            self._sample_actors()
            self.cpu_seconds += time.thread_time() - cpu
            self.stop_event.wait(self.interval)

    def finish(self) -> dict[str, Any]:
        """Stop sampling (one last sample first) and return the measurements."""
        self.stop_event.set()
        self.join()
        self.sample_store()
        self._sample_actors()
        peaks = [a["peak_rss_bytes"] for a in self.actors.values() if "peak_rss_bytes" in a]
        return {
            "object_store_used_at_start_bytes": self.used[0] if self.used else None,
            "object_store_peak_used_bytes": max(self.used) if self.used else None,
            "object_store_peak_above_start_bytes": max(self.used) - self.used[0] if self.used else None,
            "object_store_capacity_bytes": self.capacity,
            "object_store_spilled_bytes": self.spilled[-1] - self.spilled[0] if self.spilled else None,
            "object_store_samples": len(self.used),
            "actors_expected": self.expected_actors,
            "actors": {str(pid): a for pid, a in sorted(self.actors.items())},
            "actor_peak_rss_bytes_max": max(peaks) if peaks else None,
            "monitor_cpu_seconds": self.cpu_seconds,
            "errors": self.errors,
        }


def _operators(summary: Any) -> list[Any]:
    """Every operator of a Ray Data stats summary, upstream first (earlier operators sit in ``parents``)."""
    return [op for parent in summary.parents for op in _operators(parent)] + list(summary.operators_stats)


def operator_stats(ds: Any) -> dict[str, Any]:
    """Ray Data's per-operator stats of an executed dataset: tasks, Σ remote wall / CPU seconds, rows out."""
    summary = ds.get_stats_summary()
    ops = []
    for op in _operators(summary):
        ops.append(
            {
                "operator": op.operator_name,
                "tasks": op.wall_time.count if op.wall_time else 0,
                "wall_s_total": op.wall_time.sum if op.wall_time else None,
                "cpu_s_total": op.cpu_time.sum if op.cpu_time else None,
                "operator_time_s": op.time_total_s,
                "rows_out": op.output_num_rows.sum if op.output_num_rows else None,
            }
        )
    return {"operators": ops, "dataset_time_s": summary.time_total_s}

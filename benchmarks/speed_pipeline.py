"""The ``pipeline`` part of :mod:`benchmarks.speed`: :mod:`benchmarks.pipeline_throughput` under a probe.

The probe times the stages of the bare loop by wrapping the names it calls, and puts a :class:`RayMonitor` around
every pipeline run and Ray Data's operator stats after it (see :mod:`benchmarks.speed`, ``pipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from benchmarks import output_path, pipeline_throughput
from benchmarks.speed_common import fmt_bytes, fmt_num, say
from benchmarks.speed_memory import actor_import_floor, task_import_floor
from benchmarks.speed_ray import RayMonitor, operator_stats
from pipelines.synthesize import run as synth_run
from pipelines.synthesize import run_synthesis
from pipelines.synthesize.stages import FastSynthesizer

RSS_GOAL = 500 * 2**20  # the goal for a synthesis actor's peak RSS (cpu preset)
BARE_STAGES = ("model_load", "load_inputs", "synthesize", "encode_and_qc", "shard_tables", "commit")
_BUILD_DATASET = synth_run._build_dataset  # the synthesis stage's own, called by PipelineProbe.build_dataset


class PipelineProbe:
    """Instrumentation of :func:`benchmarks.pipeline_throughput.main` (see :mod:`benchmarks.speed`, ``pipeline``)."""

    def __init__(self) -> None:
        self.bare = dict.fromkeys(BARE_STAGES, 0.0)
        self.runs: dict[str, dict[str, Any]] = {}
        self.dataset: Any = None

    @contextlib.contextmanager
    def timer(self, stage: str) -> Iterator[None]:
        """Add the seconds spent inside the block to ``bare[stage]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.bare[stage] += time.perf_counter() - start

    def timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its seconds added to ``bare[stage]``."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.timer(stage):
                return fn(*args, **kwargs)

        return wrapper

    def timed_classes(self) -> tuple[type, type]:
        """(FastSynthesizer, ShardStore) subclasses that time the model load, the calls and the commits."""
        probe = self

        class TimedSynthesizer(FastSynthesizer):
            def __init__(self, **kwargs: Any) -> None:
                with probe.timer("model_load"):
                    super().__init__(**kwargs)

            def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
                with probe.timer("synthesize"):
                    return super().__call__(batch)

        class TimedStore(pipeline_throughput.ShardStore):
            def commit(self, *args: Any, **kwargs: Any) -> Any:
                with probe.timer("commit"):
                    return super().commit(*args, **kwargs)

        return TimedSynthesizer, TimedStore

    def build_dataset(self, *args: Any, **kwargs: Any) -> Any:
        """The synthesis stage's ``_build_dataset``, keeping the dataset for its stats."""
        self.dataset = _BUILD_DATASET(*args, **kwargs)
        return self.dataset

    def observed_run(self, cfg: Any) -> Any:
        """``run_synthesis(cfg)`` with a :class:`RayMonitor` around it and the Ray Data stats after it."""
        match = re.fullmatch(r"ray(\d+)-(\w+)", Path(cfg.out).name)
        label = f"ray-{match.group(1)}-{match.group(2)}" if match else Path(cfg.out).name
        say(f"pipeline: {label} starts")
        self.dataset = None
        monitor = RayMonitor(expected_actors=cfg.compute.concurrency)
        monitor.sample_store()  # the store before the run: what earlier runs left there
        monitor.start()
        try:
            summary = run_synthesis(cfg)
        finally:
            memory = monitor.finish()
        entry: dict[str, Any] = {"memory": memory}
        if self.dataset is None:
            entry["ray_data"] = {"not_measured": "the synthesis stage built no dataset (nothing to run)"}
        else:
            entry["ray_data"] = operator_stats(self.dataset)
        self.runs[label] = entry
        say(f"pipeline: {label} done")
        return summary

    @contextlib.contextmanager
    def installed(self) -> Iterator[PipelineProbe]:
        """Patch the names :mod:`benchmarks.pipeline_throughput` and the synthesis stage call; restore on exit."""
        synthesizer, store = self.timed_classes()
        patches = {
            "load_inputs": self.timed("load_inputs", pipeline_throughput.load_inputs),
            "encode_and_qc": self.timed("encode_and_qc", pipeline_throughput.encode_and_qc),
            "shard_tables": self.timed("shard_tables", pipeline_throughput.shard_tables),
            "FastSynthesizer": synthesizer,
            "ShardStore": store,
            "run_synthesis": self.observed_run,
        }
        with contextlib.ExitStack() as stack:
            for name, new in patches.items():
                stack.enter_context(mock.patch.object(pipeline_throughput, name, new))
            stack.enter_context(mock.patch.object(synth_run, "_build_dataset", self.build_dataset))
            yield self


def run_pipeline(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """:func:`benchmarks.pipeline_throughput.main` under a :class:`PipelineProbe`; its report plus the probe's."""
    argv = ["--preset", args.preset, "--rows", str(args.rows), "--nfe", str(args.nfe), "--batch"]
    argv += [str(args.pipeline_batch), "--shard-size", str(args.shard_size), "--threads", str(args.pipeline_threads)]
    argv += ["--num-cpus", str(args.num_cpus), "--out", str(work / "pipeline_throughput.json")]
    threads = torch.get_num_threads()  # the bare loop changes the driver's torch threads
    output_path.reset_peak_rss()
    probe = PipelineProbe()
    try:
        with probe.installed():
            report = pipeline_throughput.main(argv)
    finally:
        torch.set_num_threads(threads)
    bare_s = report["runs"]["bare"]["seconds"]
    stages = {**probe.bare, "other": bare_s - sum(probe.bare.values())}
    report["bare_stage_seconds"] = stages
    report["ray_runs"] = probe.runs
    report["driver_peak_rss_bytes"] = output_path.peak_rss_bytes()
    say("pipeline: an actor's memory, step by step")
    report["actor_memory_steps"] = actor_import_floor(report["model_uri"], args.pipeline_batch, args.pipeline_threads)
    report["task_memory_steps"] = task_import_floor()
    return report


def md_pipeline(p: dict[str, Any]) -> str:
    """The pipeline part as markdown."""
    lines = [
        f"Preset {p['preset']} ({p['image_size']}²), {p['rows']} rows, NFE {p['nfe']}, batch {p['batch']}, shards of "
        f"{p['shard_size']}, {p['threads_per_actor']} torch thread(s) per actor; {p['ray']}\n",
        "| run | s | pairs/s | start-up s | steady pairs/s | same bytes as bare | object store: peak (above start) | "
        "actors found | peak RSS each (of it private, USS) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for name, r in p["runs"].items():
        mem = p["ray_runs"].get(name, {}).get("memory")
        if mem is None:
            store, found, rss = "—", "—", "—"
        else:
            peak, above = mem["object_store_peak_used_bytes"], mem["object_store_peak_above_start_bytes"]
            store = f"{fmt_bytes(peak)} ({fmt_bytes(above)})"
            found = f"{len(mem['actors'])}/{mem['actors_expected']}"
            rss = ", ".join(
                f"{fmt_bytes(a.get('peak_rss_bytes'))} ({fmt_bytes(a.get('max_uss_bytes'))})"
                for a in mem["actors"].values()
            ) or "—"  # fmt: skip
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {r['pairs_per_s']:.3f} | {fmt_num(r.get('startup_s'), '.1f')} | "
            f"{fmt_num(r.get('steady_pairs_per_s'), '.3f')} | {r.get('identical_to_bare', '—')} | {store} | {found} | "
            f"{rss} |"
        )
    mems = [r["memory"] for r in p["ray_runs"].values()]
    capacity = mems[0]["object_store_capacity_bytes"] if mems else None
    monitor_cpu_s = sum(m["monitor_cpu_seconds"] for m in mems)
    lines.append(
        f"\nObject store: the raylet's `object_store_bytes_used` (as `ray memory --stats-only`), sampled every 0.5 s;"
        f" capacity {fmt_bytes(capacity)}; objects under 100 KiB are inlined and not in it. Peak RSS: `VmHWM` of each "
        f"FastSynthesizer actor process. Driver peak RSS (bare loop included): "
        f"{fmt_bytes(p['driver_peak_rss_bytes'])}; monitor CPU {monitor_cpu_s:.1f} s in all."
    )
    lines += md_actor_memory(p.get("actor_memory_steps"))
    lines += md_task_memory(p.get("task_memory_steps"))
    errors = sorted({e for m in mems for e in m["errors"]})
    if errors:
        lines.append("Monitor errors: " + "; ".join(errors))
    stages = p["bare_stage_seconds"]
    lines += ["\nBare loop, seconds per stage:\n", "| " + " | ".join(stages) + " |", "|" + "---:|" * len(stages)]
    lines.append("| " + " | ".join(f"{v:.2f}" for v in stages.values()) + " |")
    cpu_s, actor_s = stages["load_inputs"] + stages["encode_and_qc"], stages["model_load"] + stages["synthesize"]
    lines.append(
        f"\nCPU stages (load_inputs + encode_and_qc) {cpu_s:.2f} s; actor stage (model load + calls) {actor_s:.2f} s."
    )
    for name, r in p["ray_runs"].items():
        ops = r["ray_data"].get("operators")
        if not ops:
            lines.append(f"\n{name}: Ray Data stats {r['ray_data']}")
            continue
        lines += [f"\n{name}, Ray Data operators (`a->b`: fused into one):\n"]
        lines += ["| operator | tasks | Σ wall s | Σ CPU s | rows out |", "|---|---:|---:|---:|---:|"]
        for op in ops:
            lines.append(
                f"| {op['operator']} | {op['tasks']} | {fmt_num(op['wall_s_total'])} | {fmt_num(op['cpu_s_total'])} | "
                f"{op['rows_out'] if op['rows_out'] is not None else '—'} |"
            )
    return "\n".join(lines)


def md_actor_memory(steps: list[dict[str, Any]] | None) -> list[str]:
    """The actor's memory, step by step (:func:`benchmarks.speed_memory.actor_import_floor`), as markdown lines."""
    if not steps:
        return []
    lines = [
        "\nAn actor's memory, step by step (a fresh process doing what a `FastSynthesizer` actor does; anon is "
        "private, file is mapped library pages that every process on the node shares; PSS charges shared pages to "
        "their sharers, USS is what this process alone holds; s: the step's wall seconds):\n",
        "| step | s | RSS | added | peak RSS | anon | file | PSS | USS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    before = 0
    for step in steps:
        weights = f" ({fmt_bytes(step['weight_bytes'])} of weights)" if "weight_bytes" in step else ""
        lines.append(
            f"| {step['step']}{weights} | {fmt_num(step.get('seconds'), '.2f')} | {fmt_bytes(step['rss'])} | "
            f"{fmt_bytes(step['rss'] - before)} | "
            f"{fmt_bytes(step['peak_rss'])} | {fmt_bytes(step['anon'])} | {fmt_bytes(step['file'])} | "
            f"{fmt_bytes(step.get('pss'))} | {fmt_bytes(step.get('uss'))} |"
        )
        before = step["rss"]
    by_name = {step["step"]: step for step in steps}
    imports = by_name.get("import the synthesis stage")
    if imports is not None:
        lines.append(
            f"\nBefore any model is loaded, the imports alone hold {fmt_bytes(imports['rss'])} of RSS "
            f"({fmt_bytes(imports['file'])} of it shared library pages); the model and one batch then add "
            f"{fmt_bytes(steps[-1]['peak_rss'] - imports['rss'])} at the peak."
        )
    imports_s = [step["seconds"] for step in steps if step["step"].startswith("import") and "seconds" in step]
    if imports_s:
        lines.append(
            f"The imports take {sum(imports_s):.1f} s of a fresh actor process's start, before its model load and "
            "first batch: a pipeline's start-up includes them (a Ray actor gets a new worker process), the bare "
            "loop's does not (its imports come before its clock starts)."
        )
    torch_ray = by_name.get("import ray, ray.data")
    if torch_ray is not None and imports is not None:
        floor = torch_ray["rss"] + steps[-1]["peak_rss"] - imports["rss"]
        lines.append(
            f"A floor without diffusers: torch and Ray Data ({fmt_bytes(torch_ray['rss'])}) plus the model and one "
            f"batch at the peak come to {fmt_bytes(floor)}, against a goal of {fmt_bytes(RSS_GOAL)}."
        )
    return lines


def md_task_memory(steps: list[dict[str, Any]] | None) -> list[str]:
    """A fresh CPU task worker's imports (:func:`benchmarks.speed_memory.task_import_floor`), as markdown lines."""
    if not steps:
        return []
    lines = [
        "\nA CPU task worker's memory (a fresh process importing what an `encode_and_qc` task imports):\n",
        "| step | s | RSS | USS |",
        "|---|---:|---:|---:|",
    ]
    for step in steps:
        if "rss" in step:
            lines.append(
                f"| {step['step']} | {fmt_num(step.get('seconds'), '.2f')} | {fmt_bytes(step['rss'])} | "
                f"{fmt_bytes(step.get('uss'))} |"
            )
    torch_in = [step["imported"] for step in steps if step["step"] == "torch imported"]
    lines.append(f"\ntorch imported by the CPU stage: {'yes' if torch_in and torch_in[0] else 'no'}.")
    return lines

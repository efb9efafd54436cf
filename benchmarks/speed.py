"""Speed and scale benchmark: the sampler table, the Ray pipeline, the output path and the GPU, in one invocation.

Writes ``benchmarks/results/speed.json`` and ``benchmarks/SPEED.md`` (rewritten after every part, so a long run that
stops keeps what it measured). Parts (``--parts``, all by default, run in this order):

* ``sampler``: :mod:`benchmarks.sampler_speed` (per-image cost of AIAS-10/20/50, DDIM-50, PLMS-50 and DDPM-1000 on
  one model and batch, split into VAE encode / loop (UNet, FARM, Adaptor, other) / decode / paste). Headline: the
  end-to-end speed-up of AIAS-10 over DDPM-1000 (goal ≥ 50×).
* ``pipeline``: :mod:`benchmarks.pipeline_throughput` (the Ray Data pipeline with 1 and 2 actors against a bare
  single-process loop over the same model, manifest and config; cold and warm). Measured around it, in this process:

  - bare-loop stage split: wall seconds inside ``load_inputs`` (CPU stage), ``FastSynthesizer`` (model load and
    calls: the actor stage), ``encode_and_qc`` (CPU stage), ``shard_tables`` and ``ShardStore.commit`` (writer), by
    wrapping the names the bare loop calls;
  - Ray Data per-operator stats of each pipeline run (``Dataset.get_stats_summary()``: tasks, Σ remote wall and CPU
    seconds per operator), from the dataset the synthesis stage builds;
  - object-store memory: the raylet's store statistics (what ``ray memory --stats-only`` prints:
    ``object_store_bytes_used`` summed over the nodes, and the capacity), sampled every 0.5 s during each run; the
    value before the run, the peak, the peak above the value before, and the bytes spilled during the run;
  - peak RSS per actor: the ``VmHWM`` (resident-set high-water mark) of each ``FastSynthesizer`` actor process on
    this node, found in the GCS actor table and read from /proc every 0.5 s while it lives; and the driver's own
    peak RSS over the part (bare loop included).

  Headlines: pipeline / bare with 1 actor (goal ≥ 0.85), 2 actors / 1 actor.
* ``output``: :mod:`benchmarks.output_path` (MB/s, pairs/s, files/s of the real shard commit to local disk and to the
  embedded S3 server; PNG encode µs per pair and its fraction of the AIAS-10 time per image measured here).
* ``gpu`` (only when ``torch.cuda.is_available()``; otherwise recorded as "not run: no GPU"): the full-size model
  (``model_preset("full")``, 256² images, 4×32×32 latents) in ``--gpu-dtype`` (bf16 autocast by default), AIAS at
  NFE 10 and 50 over a batch sweep: pairs/s, FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``, by
  module), achieved TFLOP/s of the UNet (UNet FLOPs / seconds inside the UNet's forward) and of the whole pass, as a
  fraction of ``--peak-tflops``, peak GPU memory; then eager / channels_last / torch.compile(UNet) /
  both at one batch. Goals: ≥ 40 % of peak in the UNet and ≥ 20 pairs/s per H100 at NFE 10.

Models are randomly initialised (speed depends on the architecture only).

Runbook (repository root, project venv active):

    make bench                                                  # = python -m benchmarks.speed (every part)
    python -m benchmarks.speed --quick                          # tiny preset, 1 repeat, few rows: a smoke run
    python -m benchmarks.speed --parts sampler pipeline --threads 2
    python -m benchmarks.speed --parts gpu --peak-tflops 989 --gpu-batches 8 16 32 64
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from benchmarks import output_path, pipeline_throughput, sampler_speed
from fast_core.models.ldm import FastLDM, model_preset
from pipelines.synthesize import run as synth_run
from pipelines.synthesize import run_synthesis
from pipelines.synthesize.stages import FastSynthesizer

PARTS = ("sampler", "pipeline", "output", "gpu")
GPU_VARIANTS = ("eager", "channels_last", "compile", "compile+channels_last")
BARE_STAGES = ("model_load", "load_inputs", "synthesize", "encode_and_qc", "shard_tables", "commit")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
REPO = Path(__file__).resolve().parents[1]
_BUILD_DATASET = synth_run._build_dataset  # the synthesis stage's own, called by PipelineProbe.build_dataset
# option -> (full-run default, --quick default); None on the command line means "take the default of the mode"
MODE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "preset": ("small", "tiny"),
    "repeats": (3, 1),
    "rows": (32, 8),
    "shard_size": (8, 4),
    "pairs": (64, 8),
    "gpu_batches": ([1, 4, 8, 16, 32, 64], [1, 8]),
    "gpu_repeats": (3, 1),
    "gpu_variants": (list(GPU_VARIANTS), ["eager", "channels_last"]),
}


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ================================================================================================ machine and run
def machine_info() -> dict[str, Any]:
    """CPU model, cores, load, library versions and the GPU (if any) of this machine."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "load_average_1min": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": importlib.metadata.version("ray"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def git_commit() -> str:
    """``git rev-parse --short HEAD``, with ``-dirty`` when tracked files differ from HEAD."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"unknown ({exc})"
    return head + ("-dirty" if dirty else "")


# ================================================================================================ part: sampler
def run_sampler(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """:func:`benchmarks.sampler_speed.main` with this run's options; its JSON report."""
    out = work / "sampler_speed.json"
    argv = ["--preset", args.preset, "--batch", str(args.batch), "--repeats", str(args.repeats)]
    argv += ["--samplers", *args.samplers, "--threads", str(args.threads), "--seed", str(args.seed)]
    sampler_speed.main([*argv, "--out", str(out)])
    return json.loads(out.read_text())


# ================================================================================================ part: pipeline
class RayMonitor(threading.Thread):
    """Samples the object store and the peak RSS of the ``FastSynthesizer`` actors while one pipeline run goes on.

    Every ``interval`` s: the raylet's store statistics (``object_store_bytes_used`` summed over the nodes, what
    ``ray memory --stats-only`` prints) and the ``VmHWM`` of every known actor process. Until ``expected_actors``
    are known, every ``actor_interval`` s: this job's actors on this node that are not dead (starting or alive) and
    whose class name contains ``match``, from the GCS actor table; the pool has a fixed size, so listing stops once
    they are all found. ``VmHWM`` is a lifetime peak, so an actor found late still reports its whole peak.
    Objects under Ray's inline limit (100 KiB) live in the owner's heap, not in the store, and do not show here.
    Problems are recorded in ``errors`` (an actor that ends between two samples is not one); ``cpu_seconds`` is
    the monitor thread's own CPU time, its cost to the driver.
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
                peak, rss = output_path.peak_rss_bytes(pid), output_path.rss_bytes(pid)
            except OSError:
                continue  # the actor ended (the pool shuts down when the dataset is done)
            entry["peak_rss_bytes"] = max(entry.get("peak_rss_bytes", 0), peak)
            entry["last_rss_bytes"] = rss

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


class PipelineProbe:
    """Instrumentation of :func:`benchmarks.pipeline_throughput.main` (see the module docstring, ``pipeline``)."""

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
    return report


# ================================================================================================ part: output
def run_output(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`benchmarks.output_path.run_output_bench` with this run's options."""
    out_args = output_path.build_parser().parse_args(
        ["--pairs", str(args.pairs), "--repeats", str(args.repeats), "--seed", str(args.seed)]
        + ["--targets", *args.targets]
        + (["--local-dir", args.local_dir] if args.local_dir else [])
    )
    return output_path.run_output_bench(out_args, progress=say)


# ================================================================================================ part: gpu
class CompiledModule(nn.Module):
    """``torch.compile(inner)`` as a module with a plain ``forward`` (so per-module timers can wrap it), exposing the
    inner module's ``config`` (diffusers models are read through it)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(inner)
        self.config = getattr(inner, "config", None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)


@contextlib.contextmanager
def variant(model: FastLDM, name: str) -> Iterator[None]:
    """Apply a GPU variant (``channels_last``: every 4-D weight NHWC; ``compile``: the UNet through torch.compile)."""
    if name not in GPU_VARIANTS:
        raise ValueError(f"unknown GPU variant {name!r}; valid: {', '.join(GPU_VARIANTS)}")
    unet = model.unet
    if "channels_last" in name:
        model.to(memory_format=torch.channels_last)
    if "compile" in name:
        model.unet = CompiledModule(unet)
    try:
        yield
    finally:
        model.unet = unet
        model.to(memory_format=torch.contiguous_format)


def count_flops(model: FastLDM, size: int, nfe: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """FLOPs of one AIAS pass for one image (batch 1): total and per top-level module (UNet, FARM, Encoder, ...)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        sampler_speed.time_one(model, "aias", nfe, 1, size, device, dtype, seed=0)
    by_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items() if "." not in k and k != "Global"}
    return {"total": counter.get_total_flops(), "by_module": by_module}


def _memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _memory_peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def time_config(
    model: FastLDM, nfe: int, batch: int, size: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> dict[str, Any]:
    """Warm-up + ``repeats`` timed AIAS passes of ``batch`` images: the median run, its split and the peak memory."""
    _memory_reset(device)
    start = time.perf_counter()
    sampler_speed.time_one(model, "aias", nfe, batch, size, device, dtype, seed=0)  # warm-up (compile, autotune)
    warmup_s = time.perf_counter() - start
    runs = [sampler_speed.time_one(model, "aias", nfe, batch, size, device, dtype, seed=0) for _ in range(repeats)]
    median_s = statistics.median(r["total"] for r in runs)
    run = min(runs, key=lambda r: abs(r["total"] - median_s))
    return {
        "nfe": nfe,
        "batch": batch,
        "warmup_seconds": warmup_s,
        "seconds_per_batch": run["total"],
        "seconds_per_batch_runs": [r["total"] for r in runs],
        "pairs_per_s": batch / run["total"],
        "split_seconds": {k: v for k, v in run.items() if k != "total"},
        "peak_memory_bytes": _memory_peak(device),
    }


def add_rates(row: dict[str, Any], flops: dict[str, Any], unet_name: str, peak_tflops: float) -> dict[str, Any]:
    """Achieved TFLOP/s and fractions of ``peak_tflops``: UNet = UNet FLOPs per image × batch / seconds in the UNet;
    model = all FLOPs per image × batch / seconds of the whole pass (encode, loop, decode, paste)."""
    batch = row["batch"]
    unet_s = row["split_seconds"].get("unet", 0.0)
    unet_flops = flops["by_module"].get(unet_name, 0) * batch
    row["unet_tflops"] = unet_flops / unet_s / 1e12 if unet_s > 0 else None
    row["model_tflops"] = flops["total"] * batch / row["seconds_per_batch"] / 1e12
    row["unet_fraction_of_peak"] = row["unet_tflops"] / peak_tflops if row["unet_tflops"] is not None else None
    row["model_fraction_of_peak"] = row["model_tflops"] / peak_tflops
    return row


def gpu_benchmark(
    *,
    preset: str,
    device: torch.device,
    dtype: torch.dtype,
    batches: list[int],
    nfes: list[int],
    variants: list[str],
    variant_batch: int,
    repeats: int,
    peak_tflops: float,
) -> dict[str, Any]:
    """The ``gpu`` part on ``device`` (see the module docstring); a batch that runs out of memory is recorded as such
    and ends its sweep."""
    cfg = model_preset(preset, keys=["good", "bench/defect"], image_channels=3)  # type: ignore[arg-type]
    size = cfg.vae.sample_size
    say(f"gpu: building the {preset} model ({size}²)")
    model = FastLDM.from_scratch(cfg, seed=0).to(device).eval()
    unet_name = type(model.unet).__name__
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else machine_info()["cpu"],
        "preset": preset,
        "image_size": size,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_tflops": peak_tflops,
        "parameters": {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in ("vae", "unet", "farm")},
        "flops_per_image": {},
        "sweep": [],
        "variants": [],
    }
    for nfe in nfes:
        say(f"gpu: counting FLOPs at NFE {nfe}")
        report["flops_per_image"][str(nfe)] = count_flops(model, size, nfe, device, dtype)
    for nfe in nfes:
        flops = report["flops_per_image"][str(nfe)]
        for batch in batches:
            say(f"gpu: NFE {nfe}, batch {batch}")
            try:
                row = add_rates(
                    time_config(model, nfe, batch, size, device, dtype, repeats), flops, unet_name, peak_tflops
                )
            except torch.OutOfMemoryError as exc:
                report["sweep"].append({"nfe": nfe, "batch": batch, "error": f"out of memory: {str(exc)[:200]}"})
                torch.cuda.empty_cache()
                break
            report["sweep"].append(row)
    nfe = 10 if 10 in nfes else nfes[0]
    for name in variants:
        say(f"gpu: variant {name}, NFE {nfe}, batch {variant_batch}")
        try:
            with variant(model, name):
                row = time_config(model, nfe, variant_batch, size, device, dtype, repeats)
            row = {"variant": name, **add_rates(row, report["flops_per_image"][str(nfe)], unet_name, peak_tflops)}
        except torch.OutOfMemoryError as exc:
            row = {"variant": name, "nfe": nfe, "batch": variant_batch, "error": f"out of memory: {str(exc)[:200]}"}
            torch.cuda.empty_cache()
        report["variants"].append(row)
    ok = [r for r in report["sweep"] + report["variants"] if "error" not in r and r["nfe"] == nfe]
    if ok:  # the fastest configuration at NFE 10 (or the first NFE of the sweep)
        best = max(ok, key=lambda r: r["pairs_per_s"])
        keys = ("nfe", "variant", "batch", "pairs_per_s", "unet_fraction_of_peak")
        report["best"] = {k: best.get(k, "eager" if k == "variant" else None) for k in keys}
    return report


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """The ``gpu`` part on ``cuda``, or ``{"not_run": ...}`` without a GPU (never emulated)."""
    if not torch.cuda.is_available():
        return {"not_run": "no GPU (torch.cuda.is_available() is False)"}
    return gpu_benchmark(
        preset=args.gpu_preset,
        device=torch.device("cuda"),
        dtype=DTYPES[args.gpu_dtype],
        batches=args.gpu_batches,
        nfes=args.gpu_nfe,
        variants=args.gpu_variants,
        variant_batch=args.gpu_variant_batch,
        repeats=args.gpu_repeats,
        peak_tflops=args.peak_tflops,
    )


# ================================================================================================ report
def headline(parts: dict[str, Any]) -> dict[str, Any]:
    """The ratios the issue asks for, from whichever parts ran (None where a part did not run)."""
    sampler, pipe = parts.get("sampler", {}), parts.get("pipeline", {})
    best = parts.get("gpu", {}).get("best") or {}
    best = best if best.get("nfe") == 10 else {}
    return {
        "ddpm1000_over_aias10": sampler.get("ratio_ddpm1000_over_aias10"),
        "ray1_over_bare_warm": pipe.get("ratio_ray1_warm_over_bare"),
        "ray1_over_bare_cold": pipe.get("ratio_ray1_cold_over_bare"),
        "ray2_over_ray1_warm": pipe.get("speedup_ray2_over_ray1_warm"),
        "gpu_best_pairs_per_s_nfe10": best.get("pairs_per_s"),
        "gpu_unet_fraction_of_peak": best.get("unet_fraction_of_peak"),
    }


def aias10_times(parts: dict[str, Any]) -> dict[str, float]:
    """AIAS-10 seconds per image measured in this run, by where they were measured."""
    times = {}
    for row in parts.get("sampler", {}).get("rows", []):
        if row["label"] == "AIAS-10":
            s = parts["sampler"]
            times[f"sampler {s['preset']} {s['image_size']}² {s['device']}"] = row["seconds_per_image"]
    best = parts.get("gpu", {}).get("best")
    if best and best["nfe"] == 10:
        times[f"gpu {parts['gpu']['preset']} {parts['gpu']['image_size']}²"] = 1.0 / best["pairs_per_s"]
    return times


def _x(value: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{suffix}"


def _size(value: float | None) -> str:
    """Bytes with a binary unit (B, KiB, MiB, GiB)."""
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def md_pipeline(p: dict[str, Any]) -> str:
    """The pipeline part as markdown."""
    lines = [
        f"Preset {p['preset']} ({p['image_size']}²), {p['rows']} rows, NFE {p['nfe']}, batch {p['batch']}, shards of "
        f"{p['shard_size']}, {p['threads_per_actor']} torch thread(s) per actor; {p['ray']}\n",
        "| run | s | pairs/s | same bytes as bare | object store: peak (above start) | actors found | peak RSS each |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for name, r in p["runs"].items():
        mem = p["ray_runs"].get(name, {}).get("memory")
        if mem is None:
            store, found, rss = "—", "—", "—"
        else:
            store = (
                f"{_size(mem['object_store_peak_used_bytes'])} ({_size(mem['object_store_peak_above_start_bytes'])})"
            )
            found = f"{len(mem['actors'])}/{mem['actors_expected']}"
            rss = ", ".join(_size(a.get("peak_rss_bytes")) for a in mem["actors"].values()) or "—"
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {r['pairs_per_s']:.3f} | {r.get('identical_to_bare', '—')} | {store} | "
            f"{found} | {rss} |"
        )
    mems = [r["memory"] for r in p["ray_runs"].values()]
    capacity = mems[0]["object_store_capacity_bytes"] if mems else None
    lines.append(
        f"\nObject store: the raylet's `object_store_bytes_used` (as `ray memory --stats-only`), sampled every 0.5 s;"
        f" capacity {_size(capacity)}; objects under 100 KiB are inlined and not in it. Peak RSS: `VmHWM` of each "
        f"FastSynthesizer actor process. Driver peak RSS (bare loop included): {_size(p['driver_peak_rss_bytes'])}; "
        f"monitor CPU {sum(m['monitor_cpu_seconds'] for m in mems):.1f} s in all."
    )
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
                f"| {op['operator']} | {op['tasks']} | {_x(op['wall_s_total'])} | {_x(op['cpu_s_total'])} | "
                f"{op['rows_out'] if op['rows_out'] is not None else '—'} |"
            )
    return "\n".join(lines)


def md_gpu(g: dict[str, Any]) -> str:
    """The gpu part as markdown."""
    lines = [
        f"{g['device_name']}, preset {g['preset']} ({g['image_size']}²), networks in {g['dtype']} (autocast), peak "
        f"{g['peak_tflops']:g} TFLOP/s; parameters: "
        + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in g["parameters"].items())
        + "\n",
        "| NFE | GFLOP / image | by module (GFLOP) |",
        "|---:|---:|---|",
    ]
    for nfe, f in g["flops_per_image"].items():
        mods = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in sorted(f["by_module"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {nfe} | {f['total'] / 1e9:.1f} | {mods} |")
    head = "| NFE | batch | pairs/s | UNet TFLOP/s | UNet % peak | model % peak | peak memory | warm-up s |"
    for title, rows in (("Batch sweep (eager)", g["sweep"]), ("Variants", g["variants"])):
        lines += [f"\n{title}:\n", ("| variant " if title == "Variants" else "") + head]
        lines.append(("|---" if title == "Variants" else "") + "|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            lead = f"| {r['variant']} " if title == "Variants" else ""
            if "error" in r:
                lines.append(f"{lead}| {r['nfe']} | {r['batch']} | {r['error']} | | | | | |")
                continue
            lines.append(
                f"{lead}| {r['nfe']} | {r['batch']} | {r['pairs_per_s']:.2f} | {_x(r['unet_tflops'], '.1f')} | "
                f"{_x(r['unet_fraction_of_peak'] and 100 * r['unet_fraction_of_peak'], '.1f')} | "
                f"{100 * r['model_fraction_of_peak']:.1f} | {_size(r['peak_memory_bytes'])} | "
                f"{r['warmup_seconds']:.1f} |"
            )
    best = g.get("best")
    if best:
        frac = best["unet_fraction_of_peak"]
        lines.append(
            f"\nBest at NFE {best['nfe']}: {best['pairs_per_s']:.2f} pairs/s (batch {best['batch']}, "
            f"{best['variant']}; goal at NFE 10: ≥ 20 per H100); UNet at "
            f"{_x(frac and 100 * frac, '.1f')} % of peak (goal ≥ 40 %)."
        )
    return "\n".join(lines)


def md_output(o: dict[str, Any]) -> str:
    """The output part as markdown."""
    text = output_path.markdown_table(o)
    for fmt, fractions in o.get("encode_fraction_of_aias10", {}).items():
        for label, frac in fractions.items():
            text += f"\nPNG encode of a {fmt} pair = {100 * frac:.2f} % of AIAS-10 per image ({label})."
    return text


def render_markdown(report: dict[str, Any]) -> str:
    """SPEED.md: machine, commit, date, command, the headline ratios and one section per part."""
    m, h, parts = report["machine"], report["headline"], report["parts"]
    lines = [
        "# Speed benchmark\n",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), load {m['load_average_1min']:.1f} "
        f"at start; GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Ray {m['ray']}, Python {m['python']}",
        f"- Commit: `{report['git_commit']}`; date: {report['date']}",
        f"- Command: `{report['command']}`",
        "\n## Headline\n",
        "| ratio | value | goal |",
        "|---|---:|---:|",
        f"| AIAS-10 speed-up over DDPM-1000, end to end | {_x(h['ddpm1000_over_aias10'], '.1f', '×')} | ≥ 50× |",
        f"| pipeline / bare, 1 actor (warm; cold) | {_x(h['ray1_over_bare_warm'])}; "
        f"{_x(h['ray1_over_bare_cold'])} | ≥ 0.85 |",
        f"| 2 actors / 1 actor (warm) | {_x(h['ray2_over_ray1_warm'])} | |",
        f"| GPU pairs/s at NFE 10 (best batch) | {_x(h['gpu_best_pairs_per_s_nfe10'])} | ≥ 20 |",
        f"| GPU UNet fraction of peak | {_x(h['gpu_unet_fraction_of_peak'])} | ≥ 0.40 |",
    ]
    sections = (
        ("1. Sampler cost per image", "sampler", sampler_speed.markdown_table),
        ("2. Ray pipeline against a bare loop", "pipeline", md_pipeline),
        ("3. Output path", "output", md_output),
        ("4. GPU", "gpu", md_gpu),
    )
    for title, key, render in sections:
        part = parts.get(key, {})
        lines.append(f"\n## {title}\n")
        lines.append(f"Not run: {part['not_run']}." if "not_run" in part else render(part))
        if "seconds" in report.get("part_seconds", {}).get(key, {}):
            lines.append(f"\n(part took {report['part_seconds'][key]['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: Path, md_path: Path) -> None:
    """Fill the headline and write both files."""
    report["headline"] = headline(report["parts"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render_markdown(report))


# ================================================================================================ command line
def build_parser() -> argparse.ArgumentParser:
    """Every flag of the benchmark, each help naming its default (and the ``--quick`` one where it differs)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    g = p.add_argument_group("run")
    g.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    g.add_argument("--quick", action="store_true", help="smoke run: take the --quick defaults named below")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads of this process (default 0: torch's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    g.add_argument(
        "--repeats", type=int, default=None, help="sampler and output path: timed repeats (default 3; --quick 1)"
    )
    g.add_argument(
        "--out-json",
        type=Path,
        default=REPO / "benchmarks/results/speed.json",
        help="JSON report (default benchmarks/results/speed.json)",
    )
    g.add_argument(
        "--out-md",
        type=Path,
        default=REPO / "benchmarks/SPEED.md",
        help="markdown report (default benchmarks/SPEED.md)",
    )
    g = p.add_argument_group("sampler and pipeline")
    presets = sorted(sampler_speed.PRESETS)
    g.add_argument("--preset", choices=presets, default=None, help="model (default small; --quick tiny)")
    g.add_argument("--batch", type=int, default=2, help="sampler: images per synthesize call (default 2)")
    runs = list(sampler_speed.RUNS)
    g.add_argument("--samplers", nargs="+", choices=runs, default=runs, help="sampler: configurations (default: all)")
    g.add_argument("--rows", type=int, default=None, help="pipeline: manifest rows per run (default 32; --quick 8)")
    g.add_argument("--nfe", type=int, default=10, help="pipeline: AIAS NFE (default 10)")
    g.add_argument("--pipeline-batch", type=int, default=4, help="pipeline: rows per actor call (default 4)")
    g.add_argument("--shard-size", type=int, default=None, help="pipeline: rows per shard (default 8; --quick 4)")
    g.add_argument("--pipeline-threads", type=int, default=1, help="pipeline: torch threads per actor (default 1)")
    g.add_argument("--num-cpus", type=int, default=4, help="pipeline: logical CPUs of a local Ray (default 4)")
    g = p.add_argument_group("output path")
    g.add_argument("--pairs", type=int, default=None, help="pairs per format (default 64; --quick 8)")
    targets = list(output_path.TARGETS)
    g.add_argument("--targets", nargs="+", choices=targets, default=targets, help="write targets (default: all)")
    g.add_argument("--local-dir", default=None, help="where the local target writes (default: the system temp dir)")
    g = p.add_argument_group("gpu (runs only when CUDA is available)")
    g.add_argument("--gpu-preset", choices=["full", "cpu_small", "tiny"], default="full", help="model (default full)")
    g.add_argument("--gpu-dtype", choices=list(DTYPES), default="bfloat16", help="network dtype (default bfloat16)")
    g.add_argument(
        "--gpu-batches", type=int, nargs="+", default=None, help="batch sweep (default 1 4 8 16 32 64; --quick 1 8)"
    )
    g.add_argument("--gpu-nfe", type=int, nargs="+", default=[10, 50], help="AIAS NFE of the sweep (default 10 50)")
    g.add_argument(
        "--gpu-variants",
        nargs="+",
        choices=GPU_VARIANTS,
        default=None,
        help="variants compared at one batch and NFE 10 (default: all; --quick: eager channels_last)",
    )
    g.add_argument("--gpu-variant-batch", type=int, default=16, help="batch of the variant comparison (default 16)")
    g.add_argument(
        "--gpu-repeats", type=int, default=None, help="timed repeats per configuration (default 3; --quick 1)"
    )
    g.add_argument(
        "--peak-tflops", type=float, default=989.0, help="peak dense TFLOP/s of the GPU in --gpu-dtype (default 989)"
    )
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and fill the mode-dependent defaults (:data:`MODE_DEFAULTS`)."""
    args = build_parser().parse_args(argv)
    for name, (full, quick) in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("repeats", "rows", "shard_size", "pairs", "batch", "gpu_repeats", "gpu_variant_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts in order, rewriting the JSON and the markdown after each."""
    command = "python -m benchmarks.speed " + shlex.join(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "parts": {name: {"not_run": f"not selected (--parts {' '.join(args.parts)})"} for name in PARTS},
        "part_seconds": {},
    }
    runners: dict[str, Callable[[Path], dict[str, Any]]] = {
        "sampler": lambda work: run_sampler(args, work),
        "pipeline": lambda work: run_pipeline(args, work),
        "output": lambda work: run_output(args),
        "gpu": lambda work: run_gpu(args),
    }
    with tempfile.TemporaryDirectory(prefix="fastgen-speed-") as tmp:
        for name in PARTS:
            if name not in args.parts:
                continue
            say(f"{name}: start")
            start = time.perf_counter()
            report["parts"][name] = runners[name](Path(tmp))
            report["part_seconds"][name] = {"seconds": time.perf_counter() - start}
            if name == "output" or (name == "gpu" and "output" in args.parts):
                output = report["parts"]["output"]
                output["encode_fraction_of_aias10"] = output_path.encode_fractions(
                    output, aias10_times(report["parts"])
                )
            write_report(report, args.out_json, args.out_md)
            say(f"{name}: done in {report['part_seconds'][name]['seconds']:.0f} s")
    say(f"wrote {args.out_json} and {args.out_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``store`` part of :mod:`benchmarks.speed`: does the object store stay bounded as a job's rows grow?

One pipeline run per row count (``--store-rows``, default 256 and 1024) with one warm actor, over the same model,
images and config as the ``pipeline`` part (``--preset``), at a low NFE (``--store-nfe``, default 3: the data that
flows between the stages is the same at any NFE; only the actor's compute shrinks). Around each run a
:class:`~benchmarks.speed_ray.RayMonitor` samples the raylet's ``object_store_bytes_used`` and the actor's memory
every 0.5 s. A streaming pipeline holds a bounded number of blocks in flight, so the peak above the store's level at
the start should not grow with the rows; a pipeline that materialised its input or its output would grow linearly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import pipeline_throughput as pt
from benchmarks.speed_common import fmt_bytes, say
from benchmarks.speed_ray import RayMonitor
from fast_core.synthesis import SynthesisConfig
from pipelines.ray_utils import ensure_ray
from pipelines.synthesize import ComputeConfig, SynthesizeConfig, run_synthesis


def run_store(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One warm one-actor pipeline run per ``args.store_rows``, each under a :class:`RayMonitor`."""
    root = Path(tempfile.mkdtemp(prefix="store-", dir=work))
    model_uri, size, images, masks = pt.bench_setup(root, args.preset)
    cluster = ensure_ray(args.num_cpus)

    def config(rows: int, out: Path) -> SynthesizeConfig:
        manifest = pt.write_manifest(root / f"manifest-{rows}", images, masks, rows, model_uri)
        return SynthesizeConfig(
            manifest=manifest,
            out=str(out),
            shard_size=args.shard_size,
            sampler=SynthesisConfig(nfe=args.store_nfe, batch_size=args.pipeline_batch),
            compute=ComputeConfig(concurrency=1, num_cpus=args.pipeline_threads, batch_size=args.pipeline_batch),
            preview_pairs=0,
        )

    say("store: warm-up run (worker processes start)")
    run_synthesis(config(min(args.store_rows), root / "warm-up"))
    runs = []
    for rows in args.store_rows:
        say(f"store: {rows} rows")
        monitor = RayMonitor(expected_actors=1)
        monitor.sample_store()
        monitor.start()
        start = time.perf_counter()
        try:
            run_synthesis(config(rows, root / f"rows-{rows}"))
        finally:
            memory = monitor.finish()
        runs.append({"rows": rows, "seconds": time.perf_counter() - start, "memory": memory})
    return {"preset": args.preset, "image_size": size, "nfe": args.store_nfe, "ray": cluster, "runs": runs}


def md_store(part: dict[str, Any]) -> str:
    """The store part as markdown."""
    lines = [
        f"Preset {part['preset']} ({part['image_size']}²), NFE {part['nfe']}, one warm actor; {part['ray']}\n",
        "| rows | s | store at start | store peak | peak above start | spilled | actor peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in part["runs"]:
        m = run["memory"]
        lines.append(
            f"| {run['rows']} | {run['seconds']:.1f} | {fmt_bytes(m['object_store_used_at_start_bytes'])} | "
            f"{fmt_bytes(m['object_store_peak_used_bytes'])} | {fmt_bytes(m['object_store_peak_above_start_bytes'])} "
            f"| {fmt_bytes(m['object_store_spilled_bytes'])} | {fmt_bytes(m['actor_peak_rss_bytes_max'])} |"
        )
    return "\n".join(lines)

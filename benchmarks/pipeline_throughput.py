"""Synthesis pipeline throughput: the Ray Data pipeline against a bare single-process loop, and 1 vs 2 actors.

All runs from one process (``bare-2`` spawns two), over the same published model (randomly initialised: speed
depends on the architecture only), the same manifest and the same config:

* ``bare``: one Python loop doing exactly the pipeline's work without Ray: for each batch, ``load_inputs`` →
  ``FastSynthesizer`` → ``encode_and_qc``, then each complete shard is committed with ``ShardStore`` (PNGs, Parquet,
  markers). The model is loaded once (inside the timing, as the actor does).
* ``bare-2``: the baseline of two actors: two such loops side by side in two spawned processes with the same thread
  count each, process p doing the shards s with s mod 2 = p (its clock starts after its imports, before its model
  load). The two-actor pipeline runs are compared with it, the one-actor runs with ``bare``.
* ``ray-1``, ``ray-2``: :func:`pipelines.synthesize.run_synthesis` with one and two ``FastSynthesizer`` actors, each
  with ``--threads`` CPUs / torch threads (the bare loop uses the same thread count). Ray is started before timing;
  actor start-up and model loading are inside it. Each runs twice: ``cold`` (Ray's worker processes start and
  import torch/diffusers, a one-off cost of a long job) and ``warm`` (the same run again into a new output, with
  worker processes Ray keeps).

Pairs/s = manifest rows / wall seconds. Each run is also split at its first committed shard, from the modification
times of the completion markers (``_commits/part-*.json``)::

    startup_s     = t(first marker) − t(start)            model load, actor start-up, the first shard's work
    steady pairs/s = (rows − rows of the first shard) / (t(last marker) − t(first marker))

so that fixed costs, which do not grow with the rows, are not read as a rate. The script also checks that the bare
loop and every pipeline run wrote byte-identical ``data/`` shards (the pipeline adds scheduling, not different
results).

Runbook (repository root, project venv active):

    python -m benchmarks.pipeline_throughput                           # cpu_small preset (128²), 256 rows, NFE 10
    python -m benchmarks.pipeline_throughput --preset tiny --rows 96   # 32² model: overhead-dominated
    python -m benchmarks.pipeline_throughput --threads 2 --num-cpus 8 --out /tmp/pipe.json

Output: a table on stdout and JSON at ``--out`` (default ``benchmarks/results/pipeline_throughput.json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from fast_core.models.ldm import FastLDM, model_preset
from fast_core.synthesis import SynthesisConfig
from pipelines.manifest import MANIFEST_FILE, MANIFEST_SCHEMA, SUMMARY_FILE, row_seed, sample_id_for, table_to_parquet
from pipelines.model_store import ModelInfo, publish_model
from pipelines.ray_utils import ensure_ray
from pipelines.shards import COMMITS_DIR, ShardStore, num_shards
from pipelines.synthesize import ComputeConfig, SynthesizeConfig, run_synthesis
from pipelines.synthesize.encode import encode_and_qc
from pipelines.synthesize.run import job_identity, shard_tables
from pipelines.synthesize.schema import DATA_SCHEMA, REJECTED_SCHEMA
from pipelines.synthesize.stages import FastSynthesizer, load_inputs

PRESETS = {"tiny": "tiny", "small": "cpu_small"}
KEYS = ["good", "bench/crack", "bench/scratch"]


def make_inputs(root: Path, n_images: int, size: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """``n_images`` random RGB images of ``size``² and as many 0/255 rectangle masks under ``root``."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        img = root / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(img)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        mask[y : y + size // 3, x : x + size // 3] = 255
        Image.fromarray(mask).save(root / f"img_{i:03d}_mask.png")
        images.append(img)
        masks.append(root / f"img_{i:03d}_mask.png")
    return images, masks


def bench_setup(work: Path, preset: str) -> tuple[str, int, list[Path], list[Path]]:
    """The randomly initialised model of ``preset`` published under ``work/model`` and 8 input images with masks
    under ``work/inputs``: (model URI, image size, images, masks)."""
    cfg = model_preset(PRESETS[preset], keys=KEYS)
    size = cfg.vae.sample_size
    info = ModelInfo(image_size=size, image_channels=3, keys=KEYS, preset=preset)
    model_uri = publish_model(FastLDM.from_scratch(cfg, seed=0), str(work / "model"), info)
    images, masks = make_inputs(work / "inputs", 8, size + 16)
    return model_uri, size, images, masks


def write_manifest(uri: Path, images: list[Path], masks: list[Path], rows: int, model_uri: str) -> str:
    """A manifest of ``rows`` rows over two defect keys, images and masks round-robin; returns its URI."""
    records = []
    for i in range(rows):
        defect = ("crack", "scratch")[i % 2]
        sid = sample_id_for("bench", defect, i // 2)
        records.append(
            {
                "sample_id": sid,
                "category": "bench",
                "defect_type": defect,
                "image_uri": str(images[i % len(images)]),
                "mask_uri": str(masks[(i * 7) % len(masks)]),
                "mask_png": None,
                "mask_source": f"real:{masks[(i * 7) % len(masks)].stem}",
                "prompt": f"bench/{defect}",
                "seed": row_seed(0, sid),
                "model_uri": model_uri,
            }
        )
    uri.mkdir(parents=True, exist_ok=True)
    (uri / MANIFEST_FILE).write_bytes(table_to_parquet(pa.Table.from_pylist(records, schema=MANIFEST_SCHEMA)))
    (uri / SUMMARY_FILE).write_text(json.dumps({"rows": rows, "created_by": {"command": "benchmark"}}) + "\n")
    return str(uri)


def bare_loop(cfg: SynthesizeConfig, model_uri: str, part: int = 0, parts: int = 1) -> float:
    """The pipeline's work in one process, no Ray, committing each shard as soon as its rows are done; seconds.

    With ``parts`` > 1 this process does only the shards s with s mod ``parts`` = ``part`` (one of ``parts`` bare
    processes side by side: :func:`bare_processes`); the rows keep their manifest row, shard and seed, so the union
    of the parts is the one-process output, byte for byte.
    """
    start = time.perf_counter()
    torch.set_num_threads(max(1, int(cfg.compute.num_cpus)))
    synth = FastSynthesizer(model_uri=model_uri, sampler=cfg.sampler, num_cpus=cfg.compute.num_cpus)
    info = synth.info
    manifest = pq.read_table(Path(cfg.manifest) / MANIFEST_FILE)
    n = manifest.num_rows
    _, run_id = job_identity(cfg, model_uri, info, n)
    rows_idx = list(range(n))
    pending = pa.table(
        {
            "sample_id": manifest.column("sample_id"),
            "row": pa.array(rows_idx, pa.int64()),
            "shard": pa.array([i // cfg.shard_size for i in rows_idx], pa.int64()),
        }
    )
    store = ShardStore(cfg.out, data_schema=DATA_SCHEMA, rejected_schema=REJECTED_SCHEMA)
    store.claim({"run_id": run_id})
    mine = [i for i in rows_idx if (i // cfg.shard_size) % parts == part]
    left = {s: min(cfg.shard_size, n - s * cfg.shard_size) for s in range(num_shards(n, cfg.shard_size))}
    done: list[pa.Table] = []
    b = cfg.compute.batch_size
    for lo in range(0, len(mine), b):
        picked = mine[lo : lo + b]
        batch = load_inputs(
            manifest.take(picked),
            pending=pending,
            image_size=info.image_size,
            image_channels=info.image_channels,
            keys=info.keys,
        )
        out = encode_and_qc(synth(batch), qc_cfg=cfg.qc)
        done.append(pa.table({k: pa.array(list(v)) if v.dtype == object else pa.array(v) for k, v in out.items()}))
        for i in picked:
            left[i // cfg.shard_size] -= 1
        for shard in sorted({i // cfg.shard_size for i in picked}):
            if left[shard] == 0:
                rows = pa.concat_tables(done)
                part_rows = rows.filter(pc.equal(rows.column("shard"), shard))
                data, rejected, files, counts = shard_tables(part_rows, info, cfg, model_uri, run_id)
                store.commit(shard, data, rejected, files, run_id=run_id, counts=counts)
    return time.perf_counter() - start


def _bare_part(cfg: SynthesizeConfig, model_uri: str, part: int, parts: int) -> tuple[float, float]:
    """One of :func:`bare_processes`' processes: (``time.time()`` when its work started, when it ended)."""
    started = time.time()
    bare_loop(cfg, model_uri, part, parts)
    return started, time.time()


def bare_processes(cfgs: list[SynthesizeConfig], model_uri: str) -> dict[str, Any]:
    """``len(cfgs)`` bare loops side by side, one spawned process each, process p doing the shards s with
    s mod P = p into ``cfgs[p].out``: the no-Ray baseline of P actors. A process's clock starts after its imports and
    before its model load, as a warm pipeline run's (whose worker processes exist, whose actors load the model inside
    the clock); ``seconds`` = last end − first start."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(cfgs)) as pool:
        spans = pool.starmap(_bare_part, [(cfg, model_uri, p, len(cfgs)) for p, cfg in enumerate(cfgs)])
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return {"seconds": last - first, "started": first, "process_seconds": [e - s for s, e in spans]}


def commit_split(out: str | list[str], started: float, rows: int, shard_size: int) -> dict[str, float | None]:
    """``startup_s`` and ``steady_pairs_per_s`` of one finished run from its markers' mtimes (module docstring);
    ``started`` is the run's ``time.time()`` at its start; ``out`` one output, or the outputs of the processes of one
    run (their markers pooled). None where a run has a single shard."""
    outs = [out] if isinstance(out, str) else out
    times = sorted(p.stat().st_mtime for o in outs for p in (Path(o) / COMMITS_DIR).glob("part-*.json"))
    if not times:
        return {"startup_s": None, "steady_pairs_per_s": None}
    span = times[-1] - times[0]
    steady = (rows - min(shard_size, rows)) / span if len(times) > 1 and span > 0 else None
    return {"startup_s": times[0] - started, "steady_pairs_per_s": steady}


def _ratio(run: dict[str, Any], bare: dict[str, Any]) -> float | None:
    """Steady-state pairs/s of ``run`` over the bare loop's (None when either has no steady state)."""
    a, b = run.get("steady_pairs_per_s"), bare.get("steady_pairs_per_s")
    return a / b if a and b else None


def data_bytes(out: str | list[str]) -> dict[str, bytes]:
    """The ``data/`` parts of an output (or of the outputs of one run's processes, pooled), by name."""
    outs = [out] if isinstance(out, str) else out
    return {p.name: p.read_bytes() for o in outs for p in sorted((Path(o) / "data").glob("*.parquet"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--rows", type=int, default=256, help="manifest rows (pairs) per run")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--batch", type=int, default=4, help="rows per actor call")
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads per actor and in the bare loop")
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    p.add_argument("--out", default="benchmarks/results/pipeline_throughput.json")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fastgen-pipebench-"))
    model_uri, size, images, masks = bench_setup(work, args.preset)
    manifest = write_manifest(work / "manifest", images, masks, args.rows, model_uri)

    def config(out: str, actors: int) -> SynthesizeConfig:
        return SynthesizeConfig(
            manifest=manifest,
            out=out,
            shard_size=args.shard_size,
            sampler=SynthesisConfig(nfe=args.nfe, batch_size=args.batch),
            compute=ComputeConfig(concurrency=actors, num_cpus=args.threads, batch_size=args.batch),
            preview_pairs=0,
        )

    results: dict[str, Any] = {}
    wall = time.time()
    bare_s = bare_loop(config(str(work / "bare"), 1), model_uri)
    results["bare"] = {
        "seconds": bare_s,
        "pairs_per_s": args.rows / bare_s,
        **commit_split(str(work / "bare"), wall, args.rows, args.shard_size),
    }
    print(f"bare loop: {args.rows} pairs in {bare_s:.1f} s = {args.rows / bare_s:.3f} pairs/s", flush=True)
    outs = [str(work / f"bare2-{p}") for p in range(2)]
    two = bare_processes([config(out, 1) for out in outs], model_uri)
    same = data_bytes(outs) == data_bytes(str(work / "bare"))
    results["bare-2"] = {
        "seconds": two["seconds"],
        "pairs_per_s": args.rows / two["seconds"],
        "identical_to_bare": same,
        "process_seconds": two["process_seconds"],
        **commit_split(outs, two["started"], args.rows, args.shard_size),
    }
    print(f"bare loop, 2 processes: {two['seconds']:.1f} s (same bytes: {same})", flush=True)
    cluster = ensure_ray(args.num_cpus)
    identical = same
    for actors in (1, 2):
        for phase in ("cold", "warm"):  # cold: first run, worker processes start; warm: the same run again
            out = str(work / f"ray{actors}-{phase}")
            start, wall = time.perf_counter(), time.time()
            run_synthesis(config(out, actors))
            seconds = time.perf_counter() - start
            same = data_bytes(out) == data_bytes(str(work / "bare"))
            identical &= same
            name = f"ray-{actors}-{phase}"
            results[name] = {
                "seconds": seconds,
                "pairs_per_s": args.rows / seconds,
                "identical_to_bare": same,
                **commit_split(out, wall, args.rows, args.shard_size),
            }
            print(f"{name}: {seconds:.1f} s = {args.rows / seconds:.3f} pairs/s (same bytes: {same})", flush=True)
    rate = {name: r["pairs_per_s"] for name, r in results.items()}
    report = {
        "preset": args.preset,
        "model_uri": model_uri,
        "image_size": size,
        "rows": args.rows,
        "nfe": args.nfe,
        "batch": args.batch,
        "shard_size": args.shard_size,
        "threads_per_actor": args.threads,
        "ray": cluster,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": results,
        "ratio_ray1_warm_over_bare": rate["ray-1-warm"] / rate["bare"],
        "ratio_ray1_cold_over_bare": rate["ray-1-cold"] / rate["bare"],
        "speedup_ray2_over_ray1_warm": rate["ray-2-warm"] / rate["ray-1-warm"],
        "steady_ratio_ray1_warm_over_bare": _ratio(results["ray-1-warm"], results["bare"]),
        "steady_ratio_ray1_cold_over_bare": _ratio(results["ray-1-cold"], results["bare"]),
        "steady_ratio_ray2_warm_over_bare2": _ratio(results["ray-2-warm"], results["bare-2"]),
        "steady_ratio_ray2_cold_over_bare2": _ratio(results["ray-2-cold"], results["bare-2"]),
        "outputs_identical": identical,
    }
    print("| run | s | pairs/s | start-up s | steady pairs/s |\n|---|---|---|---|---|")
    for name, r in results.items():
        cells = [f"{r['seconds']:.1f}", f"{r['pairs_per_s']:.3f}", str(r["startup_s"]), str(r["steady_pairs_per_s"])]
        print(f"| {name} | {' | '.join(cells)} |")
    print(
        f"ray-1 / bare: {report['ratio_ray1_warm_over_bare']:.2f} warm, {report['ratio_ray1_cold_over_bare']:.2f} "
        f"cold; ray-2 / ray-1 (warm): {report['speedup_ray2_over_ray1_warm']:.2f}; outputs identical: {identical}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

"""Output path: how fast synthesized pairs reach storage (local disk, the embedded S3 server) and what PNG costs.

Every write goes through the real commit path of the synthesis stage: rows are turned into the stage's Parquet rows
and PNG side files by :func:`pipelines.synthesize.run.shard_tables` (``DATA_SCHEMA`` / ``REJECTED_SCHEMA``) and
committed shard by shard with :meth:`pipelines.shards.ShardStore.commit` (PNGs in parallel, then the data part, then
the marker). Only the commits are timed; building the tables is reported apart.

Pairs are realistic for PNG, i.e. not trivially compressible: a smooth field (bicubic-upsampled coarse noise), an
oriented sinusoidal texture and fine grain, with an elliptic 0/255 mask, all from a fixed seed. Two formats:
``grey128`` (128×128 L, the cpu_small grayscale case) and ``rgb256`` (256×256 RGB, the full-size model's output).

Per format and target (``local``: a fresh directory under ``--local-dir``, removed afterwards; ``s3``: a bucket on a
:class:`pipelines.s3server.SeaweedS3Server` started on loopback for this run), one untimed warm-up shard is written
first, then each of ``--repeats`` runs writes every pair into a fresh prefix; the median run gives

    MB/s    = bytes stored / commit seconds        (MB = 10⁶ bytes; bytes = sizes of every file written, from storage)
    pairs/s = pairs / commit seconds
    files/s = files written / commit seconds       (2 PNGs per pair + per shard: data part and marker)

PNG encode cost per pair = median over repeats of Σ (encode_png(image) + encode_png(mask)) / pairs, in µs; and as a
fraction of an AIAS-10 synthesis time per image when one is given (``--aias10-seconds``). Peak RSS is the process's
resident-set high-water mark (``VmHWM``), reset at the start of the run.

Runbook (repository root, project venv active):

    python -m benchmarks.output_path                                  # 64 pairs per format, local + s3, 3 repeats
    python -m benchmarks.output_path --pairs 16 --targets local --repeats 1
    python -m benchmarks.output_path --aias10-seconds 0.42 --out /tmp/output_path.json

Output: a table on stdout and JSON at ``--out`` (default ``benchmarks/results/output_path.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from fast_core.data.transforms import PNG_COMPRESS_LEVEL, encode_png
from pipelines import storage
from pipelines.model_store import ModelInfo
from pipelines.s3server import SeaweedS3Server
from pipelines.shards import ShardStore, num_shards
from pipelines.storage import StorageConfig
from pipelines.synthesize import SynthesizeConfig
from pipelines.synthesize.run import shard_tables
from pipelines.synthesize.schema import DATA_SCHEMA, REJECTED_SCHEMA

FORMATS: dict[str, tuple[int, int]] = {"grey128": (128, 1), "rgb256": (256, 3)}  # name -> (size S, channels C)
TARGETS = ("local", "s3")
CATEGORY, DEFECTS = "bench", ("crack", "scratch")


# ------------------------------------------------------------------------------------------------ process memory
def _proc_status_kib(pid: int | str, field: str) -> int:
    """``field`` (e.g. ``VmHWM``) of /proc/<pid>/status in KiB; ``OSError`` when the process or /proc is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/{pid}/status has no {field} line")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """Peak resident set size (``VmHWM``) of process ``pid`` in bytes, since it started or since the last reset."""
    return 1024 * _proc_status_kib(pid, "VmHWM")


def rss_bytes(pid: int | str = "self") -> int:
    """Current resident set size (``VmRSS``) of process ``pid`` in bytes."""
    return 1024 * _proc_status_kib(pid, "VmRSS")


def reset_peak_rss() -> None:
    """Reset this process's ``VmHWM`` to its current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def filesystem_type(path: str | Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts: the longest mount point that contains it)."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, kind, *_ = line.split()
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, fstype = mount, kind
    return fstype


# ------------------------------------------------------------------------------------------------ pairs
def make_pair(size: int, channels: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured uint8 image ((S, S) or (S, S, 3)) and a 0/255 elliptic mask (S, S).

    Per channel: v = 128 + 40·smooth + 25·sin(2π(f_x·x + f_y·y) + φ) + 6·grain, clipped to [0, 255], where
    ``smooth`` is an 8×8 N(0, 1) grid upsampled bicubically to S × S and ``grain`` is N(0, 1) per pixel.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    fx, fy = rng.uniform(2.0, 12.0, 2)
    planes = []
    for _ in range(channels):
        coarse = Image.fromarray(rng.standard_normal((8, 8)).astype(np.float32), mode="F")
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        texture = np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
        grain = rng.standard_normal((size, size)).astype(np.float32)
        planes.append(np.clip(128 + 40 * smooth + 25 * texture + 6 * grain, 0, 255).astype(np.uint8))
    image = planes[0] if channels == 1 else np.stack(planes, axis=-1)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(0.05, 0.2, 2) * size
    mask = ((((yy * size - cy) / ry) ** 2 + ((xx * size - cx) / rx) ** 2) <= 1.0).astype(np.uint8) * 255
    return image, mask


def make_pairs(n: int, size: int, channels: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` pairs of :func:`make_pair` from one seeded generator (same seed → same arrays)."""
    rng = np.random.default_rng(seed)
    return [make_pair(size, channels, rng) for _ in range(n)]


def time_encode(pairs: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> tuple[list[float], list[bytes]]:
    """(µs per pair of each repeat, the PNG bytes of the last repeat: image then mask per pair)."""
    runs, encoded = [], []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        encoded = [data for image, mask in pairs for data in (encode_png(image), encode_png(mask))]
        runs.append((time.perf_counter_ns() - start) / 1e3 / len(pairs))
    return runs, encoded


def pair_rows(pngs: list[bytes], size: int, fmt: str) -> pa.Table:
    """The rows that reach the shard writer after ``encode_and_qc`` (all accepted), in manifest order."""
    n = len(pngs) // 2
    defects = [DEFECTS[i % len(DEFECTS)] for i in range(n)]
    ids = [f"{CATEGORY}__{d}__{i:06d}" for i, d in enumerate(defects)]
    return pa.table(
        {
            "sample_id": ids,
            "category": [CATEGORY] * n,
            "defect_type": defects,
            "row": pa.array(range(n), pa.int64()),
            "status": [""] * n,
            "stage": [""] * n,
            "detail": [""] * n,
            "image_png": pa.array(pngs[0::2], pa.binary()),
            "mask_png": pa.array(pngs[1::2], pa.binary()),
            "mask_area": pa.array([size * size // 10] * n, pa.int64()),
            "width": pa.array([size] * n, pa.int32()),
            "height": pa.array([size] * n, pa.int32()),
            "seed": pa.array(range(n), pa.int64()),
            "source_image": [f"bench://{fmt}/normal_{i:06d}.png" for i in range(n)],
            "mask_source": [f"real:bench_{i:06d}" for i in range(n)],
            "nfe": pa.array([10] * n, pa.int32()),
        }
    )


# ------------------------------------------------------------------------------------------------ writes
def write_once(
    root: str, rows: pa.Table, size: int, channels: int, shard_size: int, io_threads: int, cfg: StorageConfig | None
) -> dict[str, float]:
    """Commit ``rows`` under ``root`` as the synthesis stage does; seconds of the commits and of the table building,
    and the bytes and files found under ``root`` afterwards."""
    info = ModelInfo(image_size=size, image_channels=channels, keys=["good", *(f"{CATEGORY}/{d}" for d in DEFECTS)])
    job = SynthesizeConfig(manifest="bench://manifest", out=root, shard_size=shard_size)
    store = ShardStore(root, cfg, data_schema=DATA_SCHEMA, rejected_schema=REJECTED_SCHEMA, io_threads=io_threads)
    build_s = commit_s = 0.0
    for k in range(num_shards(rows.num_rows, shard_size)):
        start = time.perf_counter()
        data, rejected, files, counts = shard_tables(
            rows.slice(k * shard_size, shard_size), info, job, "bench://model", "bench-run"
        )
        mid = time.perf_counter()
        store.commit(k, data, rejected, files, run_id="bench-run", counts=counts)
        build_s, commit_s = build_s + mid - start, commit_s + time.perf_counter() - mid
    fs, path = storage.filesystem(root, cfg)
    sizes = fs.du(path, total=False, withdirs=False)
    return {"commit_s": commit_s, "build_s": build_s, "bytes": float(sum(sizes.values())), "files": float(len(sizes))}


def bench_target(
    base: str, rows: pa.Table, size: int, channels: int, args: argparse.Namespace, cfg: StorageConfig | None
) -> dict[str, Any]:
    """``args.repeats`` writes of ``rows`` under fresh prefixes of ``base`` after one untimed warm-up write of a
    shard (directory creation, S3 connections and volume allocation); the median run's rates and every run."""
    write_once(
        storage.join(base, "warmup"),
        rows.slice(0, args.shard_size),
        size,
        channels,
        args.shard_size,
        args.io_threads,
        cfg,
    )
    runs = [
        write_once(storage.join(base, f"run{r}"), rows, size, channels, args.shard_size, args.io_threads, cfg)
        for r in range(args.repeats)
    ]
    median_s = statistics.median(r["commit_s"] for r in runs)
    run = min(runs, key=lambda r: abs(r["commit_s"] - median_s))
    return {
        "uri": base,
        "seconds": run["commit_s"],
        "table_build_seconds": run["build_s"],
        "bytes": int(run["bytes"]),
        "files": int(run["files"]),
        "mb_per_s": run["bytes"] / 1e6 / run["commit_s"],
        "pairs_per_s": rows.num_rows / run["commit_s"],
        "files_per_s": run["files"] / run["commit_s"],
        "commit_seconds_runs": [r["commit_s"] for r in runs],
    }


def encode_fractions(report: dict[str, Any], aias10_seconds: dict[str, float]) -> dict[str, dict[str, float]]:
    """format → (label → PNG encode time per pair / AIAS-10 seconds per image) for every AIAS-10 time given."""
    return {
        fmt: {label: r["encode_us_per_pair"] / 1e6 / s for label, s in aias10_seconds.items() if s > 0}
        for fmt, r in report["formats"].items()
    }


def run_output_bench(args: argparse.Namespace, progress: Any = None) -> dict[str, Any]:
    """Run the benchmark described in the module docstring with parsed ``args``; returns the JSON report.

    ``progress(msg)`` (default: print to stderr) receives a line as each format and target starts.
    """
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for name in args.formats:
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; valid formats: {', '.join(FORMATS)}")
    for name in args.targets:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}")
    if args.pairs < 1 or args.repeats < 1 or args.shard_size < 1:
        raise ValueError("--pairs, --repeats and --shard-size must be >= 1")
    reset_peak_rss()
    local_dir = Path(tempfile.mkdtemp(prefix="fastgen-outbench-", dir=args.local_dir))
    server = None
    report: dict[str, Any] = {
        "pairs_per_format": args.pairs,
        "shard_size": args.shard_size,
        "io_threads": args.io_threads,
        "repeats": args.repeats,
        "seed": args.seed,
        "local_dir": str(local_dir),
        "local_filesystem": filesystem_type(local_dir),
        "png_compress_level": PNG_COMPRESS_LEVEL,
        "formats": {},
    }
    try:
        targets: dict[str, tuple[str, StorageConfig | None]] = {}
        if "local" in args.targets:
            targets["local"] = (str(local_dir), None)
        if "s3" in args.targets:
            say("output path: starting the embedded S3 server (SeaweedFS) on loopback")
            server = SeaweedS3Server(stop_timeout_s=1.0).start()
            bucket = server.create_bucket(f"bench-{uuid.uuid4().hex[:12]}")
            targets["s3"] = (bucket, server.storage_config())
            report["s3_endpoint"] = server.endpoint_url
        for fmt in args.formats:
            size, channels = FORMATS[fmt]
            pairs = make_pairs(args.pairs, size, channels, args.seed)
            say(f"output path: {fmt}: PNG encode of {args.pairs} pairs × {args.repeats}")
            encode_runs, pngs = time_encode(pairs, args.repeats)
            rows = pair_rows(pngs, size, fmt)
            entry: dict[str, Any] = {
                "size": size,
                "channels": channels,
                "image_png_bytes_mean": float(np.mean([len(b) for b in pngs[0::2]])),
                "mask_png_bytes_mean": float(np.mean([len(b) for b in pngs[1::2]])),
                "raw_image_bytes": size * size * channels,
                "encode_us_per_pair": statistics.median(encode_runs),
                "encode_us_runs": encode_runs,
                "targets": {},
            }
            for target, (root, cfg) in targets.items():
                say(f"output path: {fmt} → {target}: {args.repeats} × {args.pairs} pairs")
                entry["targets"][target] = bench_target(storage.join(root, fmt), rows, size, channels, args, cfg)
            report["formats"][fmt] = entry
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(local_dir, ignore_errors=True)
    if args.aias10_seconds:
        report["encode_fraction_of_aias10"] = encode_fractions(report, {"given": args.aias10_seconds})
    report["peak_rss_bytes"] = peak_rss_bytes()
    report["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The per-format, per-target rates and the PNG cost as a markdown table."""
    lines = [
        f"{report['pairs_per_format']} pairs per format, shards of {report['shard_size']}, {report['io_threads']} "
        f"write threads, median of {report['repeats']}; local = {report['local_filesystem']} at "
        f"`{report['local_dir']}`; MB = 10⁶ bytes\n",
        "| format | PNG bytes (image + mask) | encode µs / pair | target | MB/s | pairs/s | files/s | bytes | files |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for fmt, r in report["formats"].items():
        png = f"{r['image_png_bytes_mean']:.0f} + {r['mask_png_bytes_mean']:.0f}"
        for target, t in r["targets"].items():
            lines.append(
                f"| {fmt} | {png} | {r['encode_us_per_pair']:.0f} | {target} | {t['mb_per_s']:.1f} | "
                f"{t['pairs_per_s']:.1f} | {t['files_per_s']:.1f} | {t['bytes']} | {t['files']} |"
            )
        if not r["targets"]:
            lines.append(f"| {fmt} | {png} | {r['encode_us_per_pair']:.0f} | (no target) | | | | | |")
    lines.append(f"\nPeak RSS of the process: {report['peak_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=64, help="pairs per format (default 64)")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), help=f"of: {', '.join(FORMATS)} (default: all)")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), help=f"of: {', '.join(TARGETS)} (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="encode and write repeats; the median is reported")
    p.add_argument("--shard-size", type=int, default=16, help="pairs per committed shard (default 16)")
    p.add_argument("--io-threads", type=int, default=8, help="parallel PNG writes per commit (default 8)")
    p.add_argument("--local-dir", default=None, help="where the local target writes (default: the system temp dir)")
    p.add_argument("--aias10-seconds", type=float, default=None, help="AIAS-10 seconds per image, for the fraction")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated pairs (default 0)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/output_path.json"), help="JSON report")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the table and write the JSON."""
    args = build_parser().parse_args(argv)
    report = run_output_bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))
    print(f"\nJSON written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed and scale benchmark: the sampler table, the Ray pipeline, the output path and the GPU, in one invocation.

Writes ``benchmarks/results/speed.json`` and ``benchmarks/SPEED.md`` (rewritten after every part, so a long run that
stops keeps what it measured). Parts (``--parts``, all by default, run in this order):

* ``sampler``: :mod:`benchmarks.sampler_speed` (per-image cost of AIAS-10/20/50, DDIM-50, PLMS-50, DPM-Solver++ and
  UniPC at NFE 10 and 20, and DDPM-1000 on one model and batch, split into window cut / VAE encode / loop (UNet,
  FARM, Adaptor, other) / decode / paste / paste-back), by default in the window frame, the CPU product path
  (``--sampler-preset window``). Headline: the end-to-end speed-up of AIAS-10 over DDPM-1000 (goal ≥ 50×).
* ``pipeline``: :mod:`benchmarks.pipeline_throughput` (the Ray Data pipeline with 1 and 2 actors against a bare
  loop over the same model, manifest and config, in one process and in two; cold and warm). Measured around it:

  - bare-loop stage split: wall seconds inside ``load_inputs`` (CPU stage), ``FastSynthesizer`` (model load and
    calls: the actor stage), ``encode_and_qc`` (CPU stage), ``shard_tables`` and ``ShardStore.commit`` (writer), by
    wrapping the names the bare loop calls;
  - Ray Data per-operator stats of each pipeline run (``Dataset.get_stats_summary()``: tasks, Σ remote wall and CPU
    seconds per operator), from the dataset the synthesis stage builds;
  - object-store memory: the raylet's store statistics (what ``ray memory --stats-only`` prints:
    ``object_store_bytes_used`` summed over the nodes, and the capacity), sampled every 0.5 s during each run; the
    value before the run, the peak, the peak above the value before, and the bytes spilled during the run;
  - peak RSS per actor: the ``VmHWM`` (resident-set high-water mark) of each ``FastSynthesizer`` actor process on
    this node, found in the GCS actor table and read from /proc every 0.5 s while it lives, with its private
    (USS) and proportional (PSS) bytes; and the driver's own peak RSS over the part (bare loop included);
  - an actor's memory step by step (:mod:`benchmarks.speed_memory`): a fresh process importing torch, Ray Data,
    diffusers and the stage, loading the model and running one batch, with the memory each step adds.

  Headlines: steady-state pipeline / bare with 1 actor and with 2 actors against 2 bare processes (goal ≥ 0.85),
  start-up to the first committed shard (goal ≤ 15 s), peak RSS per actor (goal ≤ 500 MiB).
* ``store``: :mod:`benchmarks.speed_store` (the object store's peak in one warm one-actor pipeline run per row count,
  256 and 1024 by default, at NFE 3: it must not grow with the rows).
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
    python -m benchmarks.speed --parts store --store-rows 256 1024 4096 --update   # redo one part, keep the others
    python -m benchmarks.speed --parts gpu --peak-tflops 989 --gpu-batches 8 16 32 64
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks import output_path, sampler_speed
from benchmarks.speed_common import REPO, git_commit, machine_info, say
from benchmarks.speed_gpu import DTYPES, GPU_VARIANTS, add_rates, count_flops, run_gpu, time_config
from benchmarks.speed_output import run_output
from benchmarks.speed_pipeline import run_pipeline
from benchmarks.speed_report import aias10_times, provenance, write_report
from benchmarks.speed_sampler import run_sampler
from benchmarks.speed_store import run_store

# the command line, and the measurement helpers benchmarks.gpu_check reads through this module
__all__ = [
    "MODE_DEFAULTS",
    "PARTS",
    "add_rates",
    "build_parser",
    "count_flops",
    "git_commit",
    "machine_info",
    "main",
    "parse_args",
    "time_config",
]

PARTS = ("sampler", "pipeline", "store", "output", "gpu")
# option -> (full-run default, --quick default); None on the command line means "take the default of the mode"
MODE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "preset": ("small", "tiny"),
    "sampler_preset": ("window", "tiny"),
    "sampler_variants": (list(sampler_speed.VARIANTS), []),
    "sampler_frames": (True, False),
    "store_rows": ([256, 1024], [8, 16]),
    "repeats": (3, 1),
    "rows": (256, 8),
    "shard_size": (8, 4),
    "pairs": (64, 8),
    "gpu_batches": ([1, 4, 8, 16, 32, 64], [1, 8]),
    "gpu_repeats": (3, 1),
    "gpu_variants": (list(GPU_VARIANTS), ["eager", "channels_last"]),
}


def build_parser() -> argparse.ArgumentParser:
    """Every flag of the benchmark, each help naming its default (and the ``--quick`` one where it differs)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    g = p.add_argument_group("run")
    g.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    g.add_argument("--quick", action="store_true", help="smoke run: take the --quick defaults named below")
    g.add_argument(
        "--update",
        action="store_true",
        help="keep the parts not run now from the existing --out-json, each with the commit, date and command of "
        "the run that measured it (default: a report of this run's parts only)",
    )
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
    g.add_argument(
        "--preset", choices=["small", "tiny"], default=None, help="pipeline model (default small; --quick tiny)"
    )
    g.add_argument(
        "--sampler-preset",
        choices=presets,
        default=None,
        help="sampler model and frame (default window: 128² windows of native images; --quick tiny)",
    )
    g.add_argument("--batch", type=int, default=2, help="sampler: images per synthesize call (default 2)")
    g.add_argument(
        "--sampler-variants",
        nargs="*",
        choices=sampler_speed.VARIANTS,
        default=None,
        help="sampler: AIAS-10 also with these set-ups (default eager channels_last compile; --quick none)",
    )
    g.add_argument(
        "--sampler-frames",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sampler: AIAS-10 per pair in the window and the global frame, per core (default on; --quick off)",
    )
    runs = list(sampler_speed.RUNS)
    g.add_argument("--samplers", nargs="+", choices=runs, default=runs, help="sampler: configurations (default: all)")
    g.add_argument("--rows", type=int, default=None, help="pipeline: manifest rows per run (default 256; --quick 8)")
    g.add_argument("--nfe", type=int, default=10, help="pipeline: AIAS NFE (default 10)")
    g.add_argument("--pipeline-batch", type=int, default=4, help="pipeline: rows per actor call (default 4)")
    g.add_argument("--shard-size", type=int, default=None, help="pipeline: rows per shard (default 8; --quick 4)")
    g.add_argument("--pipeline-threads", type=int, default=1, help="pipeline: torch threads per actor (default 1)")
    g.add_argument("--num-cpus", type=int, default=4, help="pipeline: logical CPUs of a local Ray (default 4)")
    g = p.add_argument_group("store")
    g.add_argument(
        "--store-rows", type=int, nargs="+", default=None, help="store: rows per run (default 256 1024; --quick 8 16)"
    )
    g.add_argument("--store-nfe", type=int, default=3, help="store: AIAS NFE (default 3; the data flow is the same)")
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
    if min(args.store_rows) < 1:
        raise ValueError(f"--store-rows must be >= 1, got {args.store_rows}")
    for name in ("repeats", "rows", "shard_size", "pairs", "batch", "gpu_repeats", "gpu_variant_batch", "store_nfe"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    return args


def keep_earlier_parts(report: dict[str, Any], json_path: Path, run_now: list[str]) -> None:
    """``--update``: copy every measured part that this run does not redo from the report at ``json_path`` into
    ``report``, with the provenance (commit, date, command) of the run that measured it. No file: nothing to keep."""
    if not json_path.is_file():
        say(f"--update: {json_path} does not exist; the report holds this run's parts only")
        return
    old = json.loads(json_path.read_text())
    for name in PARTS:
        part = old.get("parts", {}).get(name, {})
        if name in run_now or not part or "not_run" in part:
            continue
        report["parts"][name] = part
        if name in old.get("part_seconds", {}):
            report["part_seconds"][name] = old["part_seconds"][name]
        runs = old.get("part_runs", {})
        report["part_runs"][name] = runs.get(name) or provenance(old)


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
        "part_runs": {},
    }
    if args.update:
        keep_earlier_parts(report, args.out_json, args.parts)
    runners: dict[str, Callable[[Path], dict[str, Any]]] = {
        "sampler": lambda work: run_sampler(args, work),
        "pipeline": lambda work: run_pipeline(args, work),
        "store": lambda work: run_store(args, work),
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
            report["part_runs"][name] = provenance(report)
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
